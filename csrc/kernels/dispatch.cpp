#include "kernels/dispatch.hpp"

#include <atomic>
#include <stdexcept>

namespace embtab {
namespace {

bool cpu_has(Isa isa) {
  switch (isa) {
    case Isa::scalar:
      return true;
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    // __builtin_cpu_supports also checks that the OS saves the AVX / AVX-512 register state.
    case Isa::avx2:
#if defined(EMBTAB_HAVE_AVX2)
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c");
#else
      return false;
#endif
    case Isa::avx512:
#if defined(EMBTAB_HAVE_AVX512)
      return cpu_has(Isa::avx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
      return false;
#endif
#endif
    default:
      return false;
  }
}

std::atomic<int> g_current{-1};

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    default: return "scalar";
  }
}

bool parse_isa(const std::string& name, Isa& isa) {
  for (Isa candidate : {Isa::scalar, Isa::avx2, Isa::avx512}) {
    if (name == isa_name(candidate)) {
      isa = candidate;
      return true;
    }
  }
  return false;
}

bool isa_available(Isa isa) { return cpu_has(isa); }

std::vector<Isa> available_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512})
    if (isa_available(isa)) out.push_back(isa);
  return out;
}

Isa best_isa() { return available_isas().back(); }

Isa current_isa() {
  int v = g_current.load(std::memory_order_relaxed);
  if (v < 0) {
    v = static_cast<int>(best_isa());
    g_current.store(v);
  }
  return static_cast<Isa>(v);
}

void set_current_isa(Isa isa) {
  if (!isa_available(isa))
    throw std::invalid_argument(std::string("SIMD path '") + isa_name(isa) +
                                "' is not available on this CPU or in this build");
  g_current.store(static_cast<int>(isa));
}

}  // namespace embtab
