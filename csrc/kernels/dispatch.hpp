// Run-time choice of the instruction set. Pure C++; no Python.
#pragma once

#include <string>
#include <vector>

namespace embtab {

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };

const char* isa_name(Isa isa);
// Parses "scalar", "avx2" or "avx512"; returns false for anything else.
bool parse_isa(const std::string& name, Isa& isa);
// Compiled into this build and supported by this CPU (and its OS).
bool isa_available(Isa isa);
std::vector<Isa> available_isas();
Isa best_isa();

Isa current_isa();
// Throws std::invalid_argument if the path is not available here.
void set_current_isa(Isa isa);

}  // namespace embtab

// Declares the per-ISA getters of a kernel table and an `inline const Table& getter()` in namespace
// embtab that returns the table of the current path. Use at namespace scope, outside embtab.
#if defined(EMBTAB_HAVE_AVX2) && defined(EMBTAB_HAVE_AVX512)
#define EMBTAB_ISA_TABLE(Table, getter)                                     \
  namespace embtab {                                                       \
  namespace scalar { const Table& getter(); }                              \
  namespace avx2 { const Table& getter(); }                                \
  namespace avx512 { const Table& getter(); }                              \
  inline const Table& getter() {                                           \
    switch (current_isa()) {                                               \
      case Isa::avx512: return avx512::getter();                          \
      case Isa::avx2: return avx2::getter();                              \
      default: return scalar::getter();                                   \
    }                                                                      \
  }                                                                        \
  }
#else
#define EMBTAB_ISA_TABLE(Table, getter)                                     \
  namespace embtab {                                                       \
  namespace scalar { const Table& getter(); }                              \
  inline const Table& getter() { return scalar::getter(); }                \
  }
#endif
