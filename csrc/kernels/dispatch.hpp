// Run-time choice of the instruction set. Pure C++; no Python.
//
// Per-path translation units (EMBTAB_ISA_NS defined) include this header too, so it defines no
// function and includes no library header for them: nothing here can be compiled once per path
// and then merged by the linker (ci/check_odr.sh checks it).
#pragma once

namespace embtab {

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };
constexpr Isa kIsas[] = {Isa::scalar, Isa::avx2, Isa::avx512};

const char* isa_name(Isa isa);
// Parses "scalar", "avx2" or "avx512"; returns false for anything else.
bool parse_isa(const char* name, Isa& isa);
// Compiled into this build, and every CPU feature the path is compiled for is supported by this
// CPU (and its OS saves the register state it uses). EMBTAB_DISABLE_CPU_FEATURES (names separated
// by commas or spaces, as numpy's NPY_DISABLE_CPU_FEATURES) marks features as missing.
bool isa_available(Isa isa);
// The CPU features a path is compiled for (-m<name> flags; nullptr for a path not in this build),
// as a comma-separated list.
const char* isa_features(Isa isa);
Isa best_isa();

Isa current_isa();
// Throws std::invalid_argument if the path is not available here.
void set_current_isa(Isa isa);

}  // namespace embtab

// Declares the per-path getters of a kernel table, and (outside per-path translation units) an
// `inline const Table& getter()` in namespace embtab that returns the table of the current path.
// Use at namespace scope, outside embtab.
#if defined(EMBTAB_HAVE_AVX2) && defined(EMBTAB_HAVE_AVX512)
#define EMBTAB_ISA_GETTERS(Table, getter)       \
  namespace scalar { const Table& getter(); }  \
  namespace avx2 { const Table& getter(); }    \
  namespace avx512 { const Table& getter(); }
#define EMBTAB_ISA_DISPATCH(getter)                    \
  switch (current_isa()) {                             \
    case Isa::avx512: return avx512::getter();        \
    case Isa::avx2: return avx2::getter();            \
    default: return scalar::getter();                 \
  }
#else
#define EMBTAB_ISA_GETTERS(Table, getter) \
  namespace scalar { const Table& getter(); }
#define EMBTAB_ISA_DISPATCH(getter) return scalar::getter();
#endif

#if defined(EMBTAB_ISA_NS)
#define EMBTAB_ISA_TABLE(Table, getter) \
  namespace embtab {                     \
  EMBTAB_ISA_GETTERS(Table, getter)      \
  }
#else
#define EMBTAB_ISA_TABLE(Table, getter)                      \
  namespace embtab {                                        \
  EMBTAB_ISA_GETTERS(Table, getter)                         \
  inline const Table& getter() { EMBTAB_ISA_DISPATCH(getter) } \
  }
#endif
