// Helpers for kernels compiled once per instruction set. Include this header INSIDE
// `namespace embtab { namespace EMBTAB_ISA_NS {`: every function here then exists once per path,
// compiled with that path's flags, and can never be merged with another path's copy by the linker.
// (That is also why it uses no standard-library templates; ci/check_odr.sh checks the objects.)

#ifndef EMBTAB_ISA_NS
#error "compile this file once per instruction set with -DEMBTAB_ISA_NS=<name>"
#endif

#define EMBTAB_RESTRICT __restrict__
#define EMBTAB_INLINE inline __attribute__((always_inline))
#define EMBTAB_LIKELY(x) __builtin_expect(!!(x), 1)

#include "kernels/parallel_for.hpp"

constexpr std::int64_t kCacheLine = 64;

template <class T>
EMBTAB_INLINE T min_of(T a, T b) { return b < a ? b : a; }
template <class T>
EMBTAB_INLINE T max_of(T a, T b) { return a < b ? b : a; }

// Prefetches (for reading) every cache line that [row, row + bytes) touches: one hint per 64 bytes
// from its start, and one for its last byte. Rows of numpy tables rarely start on a line (large
// arrays start 16 bytes past a page), so a 512-byte row often spans 9 lines, not 8. With `bytes`
// known at compile time the hints unroll into straight-line code.
EMBTAB_INLINE void prefetch_row(const void* row, std::int64_t bytes) {
  const char* p = static_cast<const char*>(row);
  for (std::int64_t off = 0; off < bytes; off += kCacheLine) __builtin_prefetch(p + off, 0, 3);
  __builtin_prefetch(p + bytes - 1, 0, 3);
}

// How many rows ahead of the one being read to prefetch: about 8 KiB of rows in flight per thread,
// at least 2 rows and at most 32 (short rows need many rows ahead to keep as many lines in flight).
EMBTAB_INLINE std::int64_t prefetch_distance(std::int64_t row_bytes) {
  return max_of<std::int64_t>(2, min_of<std::int64_t>(32, 8192 / max_of<std::int64_t>(row_bytes, 1)));
}

EMBTAB_INLINE float float_from_bits(std::uint32_t bits) {
  float f;
  __builtin_memcpy(&f, &bits, sizeof f);
  return f;
}
EMBTAB_INLINE std::uint32_t bits_from_float(float f) {
  std::uint32_t bits;
  __builtin_memcpy(&bits, &f, sizeof bits);
  return bits;
}

// True when id is a valid row of a table with num_rows rows (negative ids are invalid).
template <class I>
EMBTAB_INLINE bool id_in_range(I id, std::int64_t num_rows) {
  return static_cast<std::uint64_t>(static_cast<std::int64_t>(id)) < static_cast<std::uint64_t>(num_rows);
}

// Row operations. D > 0 fixes the row length at compile time (fully unrolled, registers);
// D == 0 uses the run-time `dim`.
// dst = 0 + src: a sum that starts from zero, as np.add.at into zeros (turns -0.0 into +0.0).
template <int D, class T>
EMBTAB_INLINE void row_copy_from_zero(T* EMBTAB_RESTRICT dst, const T* EMBTAB_RESTRICT src, std::int64_t dim) {
  const std::int64_t n = D > 0 ? D : dim;
  for (std::int64_t j = 0; j < n; ++j) dst[j] = T(0) + src[j];
}
template <int D, class T>
EMBTAB_INLINE void row_scale_copy_from_zero(T* EMBTAB_RESTRICT dst, const T* EMBTAB_RESTRICT src, T w,
                                            std::int64_t dim) {
  const std::int64_t n = D > 0 ? D : dim;
  for (std::int64_t j = 0; j < n; ++j) dst[j] = T(0) + w * src[j];
}
template <int D, class T>
EMBTAB_INLINE void row_add(T* EMBTAB_RESTRICT dst, const T* EMBTAB_RESTRICT src, std::int64_t dim) {
  const std::int64_t n = D > 0 ? D : dim;
  for (std::int64_t j = 0; j < n; ++j) dst[j] += src[j];
}
template <int D, class T>
EMBTAB_INLINE void row_axpy(T* EMBTAB_RESTRICT dst, const T* EMBTAB_RESTRICT src, T w, std::int64_t dim) {
  const std::int64_t n = D > 0 ? D : dim;
  for (std::int64_t j = 0; j < n; ++j) dst[j] += w * src[j];
}
template <int D, class T>
EMBTAB_INLINE void row_zero(T* EMBTAB_RESTRICT dst, std::int64_t dim) {
  const std::int64_t n = D > 0 ? D : dim;
  for (std::int64_t j = 0; j < n; ++j) dst[j] = T(0);
}
// Calls f.template operator()<D>() with D the compile-time row length matching dim (common
// embedding sizes), or D = 0 for any other dim.
#define EMBTAB_DISPATCH_DIM(dim, ...)            \
  do {                                           \
    switch (dim) {                               \
      case 16: { constexpr int D = 16; __VA_ARGS__; } break;   \
      case 32: { constexpr int D = 32; __VA_ARGS__; } break;   \
      case 64: { constexpr int D = 64; __VA_ARGS__; } break;   \
      case 128: { constexpr int D = 128; __VA_ARGS__; } break; \
      case 256: { constexpr int D = 256; __VA_ARGS__; } break; \
      default: { constexpr int D = 0; __VA_ARGS__; } break;    \
    }                                            \
  } while (0)

// *target = min(*target, value), where -1 means "unset". Builtins, not std::atomic, for the reason
// given at the top of this file.
EMBTAB_INLINE void atomic_min(std::int64_t* target, std::int64_t value) {
  std::int64_t seen = __atomic_load_n(target, __ATOMIC_RELAXED);
  while ((seen < 0 || value < seen) &&
         !__atomic_compare_exchange_n(target, &seen, value, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
}

// First bag of chunk c when bags [0, num_bags) are split into `chunks` parts of about equal
// (ids + bags): the smallest b with offsets[b] + b >= c * (total + num_bags) / chunks.
EMBTAB_INLINE std::int64_t bag_chunk_begin(const std::int64_t* offsets, std::int64_t num_bags, std::int64_t c,
                                           std::int64_t chunks) {
  if (c <= 0) return 0;
  if (c >= chunks) return num_bags;
  const std::int64_t weight = offsets[num_bags] + num_bags;
  const std::int64_t target = static_cast<std::int64_t>((static_cast<__int128>(weight) * c) / chunks);
  std::int64_t lo = 0, hi = num_bags;
  while (lo < hi) {
    const std::int64_t mid = lo + (hi - lo) / 2;
    if (offsets[mid] + mid >= target)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

// One native SIMD register through GCC's vector extensions (zmm under avx512, ymm under avx2, xmm
// on the baseline). Used to keep a whole row's accumulator in registers.
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif
// Accumulators kept in registers at most (16 architectural registers on avx2 / baseline x86-64,
// some needed for temporaries).
constexpr int kMaxAccumulators = 8;
typedef float vec_f32 __attribute__((vector_size(kVecBytes)));
typedef double vec_f64 __attribute__((vector_size(kVecBytes)));
template <class T> struct VecOf;
template <> struct VecOf<float> { typedef vec_f32 type; };
template <> struct VecOf<double> { typedef vec_f64 type; };

template <class T>
EMBTAB_INLINE typename VecOf<T>::type vload(const T* p) {
  typename VecOf<T>::type v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
template <class T>
EMBTAB_INLINE void vstore(T* p, typename VecOf<T>::type v) {
  __builtin_memcpy(p, &v, sizeof(v));
}
// x in every lane: one broadcast. (A per-lane loop can compile, once inlined into a bag loop, into a
// masked load per lane; x - 0 is exactly x, -0.0 included, and folds away.)
template <class T>
EMBTAB_INLINE typename VecOf<T>::type vsplat(T x) {
  return x - typename VecOf<T>::type{};
}

// Non-temporal store of one native vector to a kVecBytes-aligned address, in translation units
// that include <immintrin.h> and define EMBTAB_HAVE_STREAM_STORES first; a plain store elsewhere.
template <class T>
EMBTAB_INLINE void vstream(T* p, typename VecOf<T>::type v) {
#if !defined(EMBTAB_HAVE_STREAM_STORES)
  vstore(p, v);
#elif defined(__AVX512F__)
  if (sizeof(T) == 4) _mm512_stream_ps(reinterpret_cast<float*>(p), reinterpret_cast<__m512&>(v));
  else _mm512_stream_pd(reinterpret_cast<double*>(p), reinterpret_cast<__m512d&>(v));
#elif defined(__AVX__)
  if (sizeof(T) == 4) _mm256_stream_ps(reinterpret_cast<float*>(p), reinterpret_cast<__m256&>(v));
  else _mm256_stream_pd(reinterpret_cast<double*>(p), reinterpret_cast<__m256d&>(v));
#elif defined(__SSE2__)
  if (sizeof(T) == 4) _mm_stream_ps(reinterpret_cast<float*>(p), reinterpret_cast<__m128&>(v));
  else _mm_stream_pd(reinterpret_cast<double*>(p), reinterpret_cast<__m128d&>(v));
#else
  vstore(p, v);
#endif
}
