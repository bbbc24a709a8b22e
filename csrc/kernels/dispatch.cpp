#include "kernels/dispatch.hpp"

#include <atomic>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace embtab {
namespace {

// The -m<feature> flags each path is compiled with, from CMakeLists.txt (EMBTAB_ISA_FEATURES_*).
#if defined(EMBTAB_HAVE_AVX2)
constexpr const char* kAvx2Features = EMBTAB_FEATURES_AVX2;
#else
constexpr const char* kAvx2Features = nullptr;
#endif
#if defined(EMBTAB_HAVE_AVX512)
constexpr const char* kAvx512Features = EMBTAB_FEATURES_AVX512;
#else
constexpr const char* kAvx512Features = nullptr;
#endif

// The CPU features dispatch can check, by their GCC -m flag names.
enum Feature : unsigned {
  kAvx = 1u << 0, kAvx2 = 1u << 1, kFma = 1u << 2, kF16c = 1u << 3, kBmi = 1u << 4, kBmi2 = 1u << 5,
  kLzcnt = 1u << 6, kPopcnt = 1u << 7, kAvx512f = 1u << 8, kAvx512bw = 1u << 9, kAvx512vl = 1u << 10,
  kAvx512dq = 1u << 11,
};
struct NamedFeature {
  const char* name;
  unsigned bit;
};
constexpr NamedFeature kFeatureNames[] = {
    {"avx", kAvx},         {"avx2", kAvx2},         {"fma", kFma},           {"f16c", kF16c},
    {"bmi", kBmi},         {"bmi2", kBmi2},         {"lzcnt", kLzcnt},       {"popcnt", kPopcnt},
    {"avx512f", kAvx512f}, {"avx512bw", kAvx512bw}, {"avx512vl", kAvx512vl}, {"avx512dq", kAvx512dq},
};

constexpr bool same_name(const char* list, const char* end, const char* name) {
  for (; list != end && *name; ++list, ++name)
    if (*list != *name) return false;
  return list == end && !*name;
}
// The feature bits of a comma-separated list of names; ~0u if a name is unknown.
constexpr unsigned feature_bits(const char* list) {
  unsigned bits = 0;
  while (list && *list) {
    const char* end = list;
    while (*end && *end != ',') ++end;
    unsigned bit = 0;
    for (const NamedFeature& f : kFeatureNames)
      if (same_name(list, end, f.name)) bit = f.bit;
    if (bit == 0) return ~0u;
    bits |= bit;
    list = *end ? end + 1 : end;
  }
  return bits;
}
static_assert(feature_bits(kAvx2Features) != ~0u && feature_bits(kAvx512Features) != ~0u,
              "CMakeLists.txt compiles a path for a CPU feature that dispatch.cpp cannot check");

// What this CPU and OS support, from cpuid and xgetbv (AVX and AVX-512 need the OS to save their
// register state: XCR0 bits 1-2, and 5-7 for AVX-512's mask and upper registers).
unsigned cpu_features() {
  unsigned bits = 0;
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  const bool osxsave = c & (1u << 27);
  if (c & (1u << 23)) bits |= kPopcnt;
  std::uint64_t xcr0 = 0;
  if (osxsave) {
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    xcr0 = (static_cast<std::uint64_t>(hi) << 32) | lo;
  }
  const bool avx_state = (xcr0 & 0x6) == 0x6;
  const bool avx512_state = (xcr0 & 0xe6) == 0xe6;
  if (avx_state) {
    if (c & (1u << 28)) bits |= kAvx;
    if (c & (1u << 12)) bits |= kFma;
    if (c & (1u << 29)) bits |= kF16c;
  }
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    if (b & (1u << 3)) bits |= kBmi;
    if (b & (1u << 8)) bits |= kBmi2;
    if (avx_state && (b & (1u << 5))) bits |= kAvx2;
    if (avx512_state) {
      if (b & (1u << 16)) bits |= kAvx512f;
      if (b & (1u << 17)) bits |= kAvx512dq;
      if (b & (1u << 30)) bits |= kAvx512bw;
      if (b & (1u << 31)) bits |= kAvx512vl;
    }
  }
  if (__get_cpuid(0x80000001u, &a, &b, &c, &d) && (c & (1u << 5))) bits |= kLzcnt;
#endif
  return bits;
}

// Features named in EMBTAB_DISABLE_CPU_FEATURES (case-insensitive; unknown names are ignored).
unsigned disabled_features() {
  const char* env = std::getenv("EMBTAB_DISABLE_CPU_FEATURES");
  unsigned bits = 0;
  std::string name;
  for (const char* p = env ? env : "";; ++p) {
    if (*p == '\0' || *p == ',' || std::isspace(static_cast<unsigned char>(*p))) {
      for (const NamedFeature& f : kFeatureNames)
        if (name == f.name) bits |= f.bit;
      name.clear();
      if (*p == '\0') break;
    } else {
      name += static_cast<char>(std::tolower(static_cast<unsigned char>(*p)));
    }
  }
  return bits;
}

unsigned usable_features() {
  static const unsigned usable = cpu_features() & ~disabled_features();
  return usable;
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

bool parse_isa(const char* name, Isa& isa) {
  for (Isa candidate : kIsas) {
    if (std::strcmp(name, isa_name(candidate)) == 0) {
      isa = candidate;
      return true;
    }
  }
  return false;
}

const char* isa_features(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "";
    case Isa::avx2: return kAvx2Features;
    case Isa::avx512: return kAvx512Features;
  }
  return nullptr;
}

bool isa_available(Isa isa) {
  const char* features = isa_features(isa);
  if (features == nullptr) return false;
  const unsigned needed = feature_bits(features);
  return (usable_features() & needed) == needed;
}

Isa best_isa() {
  Isa best = Isa::scalar;
  for (Isa isa : kIsas)
    if (isa_available(isa)) best = isa;
  return best;
}

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
