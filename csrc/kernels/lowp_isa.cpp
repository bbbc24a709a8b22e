// Lookups over float16 / bfloat16 / 8-bit row-wise tables and the conversions that build them,
// compiled once per instruction set (see CMakeLists.txt).
//
// Each row is widened to float32 in registers as it is read: float16 with F16C (vcvtph2ps) on the
// AVX2 / AVX-512 paths and bit manipulation on the scalar path, bfloat16 with a 16-bit shift, 8-bit
// codes with a zero-extension, an int -> float conversion, one multiply and one add. All of these
// are exact or exactly rounded float32 operations (and the build uses -ffp-contract=off), so every
// path gives bitwise the same results; vector loops leave their tails to the scalar formulas.
#include <cstddef>
#include <cstdint>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "kernels/lowp.hpp"
#include "kernels/parallel.hpp"
#include "kernels/tuner.hpp"

namespace embtab {
namespace EMBTAB_ISA_NS {

#include "kernels/isa_common.hpp"

namespace {

using std::int64_t;
using std::uint16_t;
using std::uint32_t;
using std::uint8_t;

// ---- scalar conversions (the definition every path agrees with) ----

EMBTAB_INLINE float float_from_bits(uint32_t bits) {
  float f;
  __builtin_memcpy(&f, &bits, sizeof f);
  return f;
}
EMBTAB_INLINE uint32_t bits_from_float(float f) {
  uint32_t bits;
  __builtin_memcpy(&bits, &f, sizeof bits);
  return bits;
}

// IEEE binary16 -> binary32 (exact). NaNs come out quiet, as from vcvtph2ps.
EMBTAB_INLINE float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1fu) {  // infinity or NaN
    return float_from_bits(sign | 0x7f800000u | (mantissa << 13) | (mantissa ? 0x00400000u : 0u));
  }
  if (exponent == 0) {
    if (mantissa == 0) return float_from_bits(sign);
    // Subnormal half: normalize, so that the leading one becomes the implicit bit.
    const int shift = __builtin_clz(mantissa) - 21;
    mantissa = (mantissa << shift) & 0x3ffu;
    exponent = static_cast<uint32_t>(1 - shift);
  }
  return float_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

EMBTAB_INLINE float bf16_to_float(uint16_t h) { return float_from_bits(static_cast<uint32_t>(h) << 16); }

// binary32 -> bfloat16, round to nearest, ties to even. A NaN keeps its sign and top payload bits
// and is made quiet (a plain truncation could turn a NaN into an infinity).
EMBTAB_INLINE uint16_t float_bits_to_bf16(uint32_t bits) {
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// ---- vectors of kW floats for this path (kW == 1 on the scalar path) ----

#if defined(__AVX512F__)
constexpr int64_t kW = 16;
using VF = __m512;
EMBTAB_INLINE VF v_load(const float* p) { return _mm512_loadu_ps(p); }
EMBTAB_INLINE void v_store(float* p, VF v) { _mm512_storeu_ps(p, v); }
EMBTAB_INLINE VF v_set1(float x) { return _mm512_set1_ps(x); }
EMBTAB_INLINE VF v_add(VF a, VF b) { return _mm512_add_ps(a, b); }
EMBTAB_INLINE VF v_mul(VF a, VF b) { return _mm512_mul_ps(a, b); }
EMBTAB_INLINE VF v_fma(VF a, VF b, VF c) { return _mm512_fmadd_ps(a, b, c); }
EMBTAB_INLINE VF v_div(VF a, VF b) { return _mm512_div_ps(a, b); }
// (v > m || v is NaN) ? v : m, elementwise: numpy's NaN-propagating max.
EMBTAB_INLINE VF v_max_nan(VF m, VF v) {
  const __mmask16 take = _mm512_cmp_ps_mask(v, m, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_mask_blend_ps(take, m, v);
}
// The zero-masked forms with a full mask compile to the plain instructions; the plain intrinsics
// pass GCC 12 an "undefined" source register that -Wmaybe-uninitialized then reports.
constexpr __mmask16 kAll = 0xffff;
EMBTAB_INLINE VF v_from_f16(const uint16_t* p) {
  return _mm512_maskz_cvtph_ps(kAll, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
EMBTAB_INLINE VF v_from_bf16(const uint16_t* p) {
  const __m512i wide = _mm512_maskz_cvtepu16_epi32(kAll, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll, wide, 16));
}
EMBTAB_INLINE VF v_from_u8(const uint8_t* p) {
  const __m512i wide = _mm512_maskz_cvtepu8_epi32(kAll, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm512_maskz_cvtepi32_ps(kAll, wide);
}
#elif defined(__AVX2__)
constexpr int64_t kW = 8;
using VF = __m256;
EMBTAB_INLINE VF v_load(const float* p) { return _mm256_loadu_ps(p); }
EMBTAB_INLINE void v_store(float* p, VF v) { _mm256_storeu_ps(p, v); }
EMBTAB_INLINE VF v_set1(float x) { return _mm256_set1_ps(x); }
EMBTAB_INLINE VF v_add(VF a, VF b) { return _mm256_add_ps(a, b); }
EMBTAB_INLINE VF v_mul(VF a, VF b) { return _mm256_mul_ps(a, b); }
EMBTAB_INLINE VF v_fma(VF a, VF b, VF c) { return _mm256_fmadd_ps(a, b, c); }
EMBTAB_INLINE VF v_div(VF a, VF b) { return _mm256_div_ps(a, b); }
EMBTAB_INLINE VF v_max_nan(VF m, VF v) {
  const VF take = _mm256_or_ps(_mm256_cmp_ps(v, m, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_blendv_ps(m, v, take);
}
EMBTAB_INLINE VF v_from_f16(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
EMBTAB_INLINE VF v_from_bf16(const uint16_t* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}
EMBTAB_INLINE VF v_from_u8(const uint8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
#else
constexpr int64_t kW = 1;
using VF = float;
EMBTAB_INLINE VF v_load(const float* p) { return *p; }
EMBTAB_INLINE void v_store(float* p, VF v) { *p = v; }
EMBTAB_INLINE VF v_set1(float x) { return x; }
EMBTAB_INLINE VF v_add(VF a, VF b) { return a + b; }
EMBTAB_INLINE VF v_mul(VF a, VF b) { return a * b; }
EMBTAB_INLINE VF v_fma(VF a, VF b, VF c) { return __builtin_fmaf(a, b, c); }  // libm's fmaf: exact
EMBTAB_INLINE VF v_div(VF a, VF b) { return a / b; }
EMBTAB_INLINE VF v_max_nan(VF m, VF v) { return (v > m || v != v) ? v : m; }
EMBTAB_INLINE VF v_from_f16(const uint16_t* p) { return f16_to_float(*p); }
EMBTAB_INLINE VF v_from_bf16(const uint16_t* p) { return bf16_to_float(*p); }
EMBTAB_INLINE VF v_from_u8(const uint8_t* p) { return static_cast<float>(*p); }
#endif

// Every cache line that [p, p + bytes) touches (rows need not start on a line).
EMBTAB_INLINE void prefetch_span(const void* p, int64_t bytes) {
  const std::uintptr_t start = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t end = start + static_cast<std::uintptr_t>(bytes);
  for (std::uintptr_t line = start & ~static_cast<std::uintptr_t>(kCacheLine - 1); line < end; line += kCacheLine)
    __builtin_prefetch(reinterpret_cast<const void*>(line), 0, 3);
}

// ---- one stored row, read as float32: vec(j) gives elements [j, j + kW), one(j) element j ----

// A row of 16-bit floats (float16 or bfloat16), widened by Wide (kW values) and WideOne (one).
template <VF (*Wide)(const uint16_t*), float (*WideOne)(uint16_t)>
struct HalfRow {
  const uint16_t* p;
  static constexpr bool kFusedSum = false;
  static int64_t bytes(int64_t dim) { return 2 * dim; }
  EMBTAB_INLINE static HalfRow at(const void* table, int64_t id, int64_t dim) {
    return HalfRow{static_cast<const uint16_t*>(table) + id * dim};
  }
  // The first `span` bytes of row id.
  EMBTAB_INLINE static void prefetch(const void* table, int64_t id, int64_t dim, int64_t span) {
    prefetch_span(static_cast<const uint16_t*>(table) + id * dim, span);
  }
  EMBTAB_INLINE VF vec(int64_t j) const { return Wide(p + j); }
  EMBTAB_INLINE float one(int64_t j) const { return WideOne(p[j]); }
};
using F16Row = HalfRow<v_from_f16, f16_to_float>;
using BF16Row = HalfRow<v_from_bf16, bf16_to_float>;

// dim codes in one array, the row's float32 scale and bias side by side in another (I8Table).
// Code q reads as fma(q, scale, bias), rounded once. Sums (kFusedSum) add a row into an
// accumulator as fma(q, scale, acc + bias), from acc = +0, with a weight w folded into scale and
// bias (w * scale, w * bias): FBGEMM's 8-bit row-wise rule, so the results equal torch's
// quantized embedding_bag bit for bit.
struct I8Row {
  const uint8_t* q;
  float scale, bias;
  VF vscale, vbias;
  static constexpr bool kFusedSum = true;
  static int64_t bytes(int64_t dim) { return dim; }  // the codes (scale and bias: see prefetch)
  EMBTAB_INLINE static I8Row make(const uint8_t* q, float scale, float bias) {
    return I8Row{q, scale, bias, v_set1(scale), v_set1(bias)};
  }
  EMBTAB_INLINE static I8Row at(const void* table, int64_t id, int64_t dim) {
    const I8Table& t = *static_cast<const I8Table*>(table);
    return make(t.codes + id * dim, t.params[2 * id], t.params[2 * id + 1]);
  }
  // The first `span` bytes of the codes of row id, and its scale and bias.
  EMBTAB_INLINE static void prefetch(const void* table, int64_t id, int64_t dim, int64_t span) {
    const I8Table& t = *static_cast<const I8Table*>(table);
    prefetch_span(t.codes + id * dim, span);
    __builtin_prefetch(t.params + 2 * id, 0, 3);
  }
  EMBTAB_INLINE I8Row weighted(float w) const { return make(q, w * scale, w * bias); }
  EMBTAB_INLINE VF vec(int64_t j) const { return v_fma(v_from_u8(q + j), vscale, vbias); }
  EMBTAB_INLINE float one(int64_t j) const { return __builtin_fmaf(static_cast<float>(q[j]), scale, bias); }
  EMBTAB_INLINE VF sum_into(int64_t j, VF acc) const { return v_fma(v_from_u8(q + j), vscale, v_add(acc, vbias)); }
  EMBTAB_INLINE float sum_into_one(int64_t j, float acc) const {
    return __builtin_fmaf(static_cast<float>(q[j]), scale, acc + bias);
  }
};

// ---- row operations on a float32 output row o (D > 0: compile-time length) ----
// The scalar tail loops are compiled only where a tail can exist (else GCC warns about them).

template <int D, class R>
EMBTAB_INLINE void put_row(float* EMBTAB_RESTRICT o, const R& r, int64_t dim) {
  const int64_t n = D > 0 ? D : dim;
  int64_t j = 0;
  for (; j + kW <= n; j += kW) v_store(o + j, r.vec(j));
  if (D == 0 || D % kW != 0)
    for (; j < n; ++j) o[j] = r.one(j);
}
template <int D, class R>
EMBTAB_INLINE void add_row(float* EMBTAB_RESTRICT o, const R& r, int64_t dim) {
  const int64_t n = D > 0 ? D : dim;
  int64_t j = 0;
  for (; j + kW <= n; j += kW) v_store(o + j, v_add(v_load(o + j), r.vec(j)));
  if (D == 0 || D % kW != 0)
    for (; j < n; ++j) o[j] += r.one(j);
}
template <int D, class R>
EMBTAB_INLINE void put_scaled_row(float* EMBTAB_RESTRICT o, const R& r, float w, int64_t dim) {
  const int64_t n = D > 0 ? D : dim;
  const VF vw = v_set1(w);
  int64_t j = 0;
  for (; j + kW <= n; j += kW) v_store(o + j, v_mul(vw, r.vec(j)));
  if (D == 0 || D % kW != 0)
    for (; j < n; ++j) o[j] = w * r.one(j);
}
template <int D, class R>
EMBTAB_INLINE void add_scaled_row(float* EMBTAB_RESTRICT o, const R& r, float w, int64_t dim) {
  const int64_t n = D > 0 ? D : dim;
  const VF vw = v_set1(w);
  int64_t j = 0;
  for (; j + kW <= n; j += kW) v_store(o + j, v_add(v_load(o + j), v_mul(vw, r.vec(j))));
  if (D == 0 || D % kW != 0)
    for (; j < n; ++j) o[j] += w * r.one(j);
}
// o = the fused sum of o and row r (rows with kFusedSum).
template <int D, class R>
EMBTAB_INLINE void sum_row(float* EMBTAB_RESTRICT o, const R& r, int64_t dim) {
  const int64_t n = D > 0 ? D : dim;
  int64_t j = 0;
  for (; j + kW <= n; j += kW) v_store(o + j, r.sum_into(j, v_load(o + j)));
  if (D == 0 || D % kW != 0)
    for (; j < n; ++j) o[j] = r.sum_into_one(j, o[j]);
}
template <int D, class R>
EMBTAB_INLINE void max_row(float* EMBTAB_RESTRICT o, const R& r, int64_t dim) {
  const int64_t n = D > 0 ? D : dim;
  int64_t j = 0;
  for (; j + kW <= n; j += kW) v_store(o + j, v_max_nan(v_load(o + j), r.vec(j)));
  if (D == 0 || D % kW != 0) {
    for (; j < n; ++j) {
      const float v = r.one(j), m = o[j];
      o[j] = (v > m || v != v) ? v : m;
    }
  }
}
// With argmax: the first maximum (or the first NaN) wins, like numpy's argmax.
template <int D, class R>
EMBTAB_INLINE void max_row_arg(float* EMBTAB_RESTRICT o, int64_t* EMBTAB_RESTRICT arg, const R& r, int64_t id,
                               int64_t dim) {
  const int64_t n = D > 0 ? D : dim;
  for (int64_t j = 0; j < n; ++j) {
    const float v = r.one(j), m = o[j];
    const bool take = v > m || (v != v && m == m);
    o[j] = take ? v : m;
    arg[j] = take ? id : arg[j];
  }
}

// ---- prefetching ----

// About 8 KiB of rows in flight per thread, and up to 32 rows: the short rows of these tables need
// more rows ahead than float32 rows to keep as many cache lines in flight (measured on 1M x 128
// tables: 8-bit bags ~20% faster with 32 rows ahead than with 16).
EMBTAB_INLINE int64_t prefetch_distance(int64_t row_bytes) {
  return max_of<int64_t>(2, min_of<int64_t>(32, 8192 / max_of<int64_t>(row_bytes, 1)));
}

// What the bag loops prefetch: the row `rows` positions ahead, its first `bytes` bytes. Whole rows
// by default; multi-threaded bags may run lead lines instead (chosen by the tuner, see bags_mode).
struct Ahead {
  int64_t rows, bytes;

  static Ahead whole(int64_t row_bytes) { return {prefetch_distance(row_bytes), row_bytes}; }
  // The first half of a row's cache lines (at least one), 16 rows ahead, the rest left to the
  // hardware prefetcher. On a 2-vCPU VM in the state where two threads' prefetches compete, float16
  // sum bags on 2 threads (2 of 4 lines) took 1.5-1.6 ms instead of 2.2-2.6, and 8-bit ones, when
  // their rows were dim + 8 bytes (1 of 3 lines), 1.4-1.7 ms instead of 1.6-2.2.
  static Ahead lead(int64_t row_bytes) {
    const int64_t lines = (row_bytes + kCacheLine - 1) / kCacheLine;
    return {16, max_of<int64_t>(1, lines / 2) * kCacheLine};
  }
};

// Prefetches the first `span` bytes of the row of ids[pos] (see R::prefetch), if there is one.
template <class R, class I>
EMBTAB_INLINE void prefetch_id(const I* ids, int64_t pos, int64_t end, const void* table, int64_t num_rows,
                               int64_t dim, int64_t span) {
  if (pos < end) {
    const I ahead = ids[pos];
    if (id_in_range(ahead, num_rows)) R::prefetch(table, static_cast<int64_t>(ahead), dim, span);
  }
}

// Where the rows of a lookup come from (and, in `invalid`, what an invalid id does; its zero row is
// a stored row of zero bytes, which reads as zeros in every format).
template <class R>
struct LowpRows {
  const void* table;
  int64_t num_rows, dim;
  InvalidIds invalid;

  // The row of ids[pos] = id into `row`, or false when the kernel must stop. `count`: whether an
  // invalid id is counted here (once per position, when a row is read in several passes).
  template <class I>
  EMBTAB_INLINE bool get(I id, int64_t pos, R& row, bool count = true) const {
    if (EMBTAB_LIKELY(id_in_range(id, num_rows))) {
      row = R::at(table, static_cast<int64_t>(id), dim);
      return true;
    }
    const void* zero = invalid.resolve(pos, count);
    if (zero == nullptr) return false;
    row = R::at(zero, 0, dim);
    return true;
  }
};

// ---- gather ----

template <int D, class R, class I>
void gather_range(const LowpRows<R>& rows, const I* EMBTAB_RESTRICT ids, int64_t begin, int64_t end,
                  float* EMBTAB_RESTRICT out) {
  const int64_t dim = rows.dim;
  const int64_t row_bytes = R::bytes(dim);
  const int64_t ahead = prefetch_distance(row_bytes);
  for (int64_t i = begin; i < end; ++i) {
    prefetch_id<R>(ids, i + ahead, end, rows.table, rows.num_rows, dim, row_bytes);
    R row;
    if (!rows.get(ids[i], i, row)) return;
    put_row<D>(out + i * dim, row, dim);
  }
}

template <class R, class I>
int64_t gather(const void* table, int64_t num_rows, int64_t dim, const I* ids, int64_t n, float* out,
               const void* zero_row, int64_t* num_invalid) {
  int64_t first_bad = -1;
  if (n <= 0) return -1;
  const LowpRows<R> rows{table, num_rows, dim, InvalidIds{zero_row, &first_bad, num_invalid}};
  if (dim == 0) {
    R row;
    for (int64_t i = 0; i < n; ++i)
      if (!rows.get(ids[i], i, row)) return i;
    return -1;
  }
  const std::size_t grain = static_cast<std::size_t>(max_of<int64_t>(1, 32768 / dim));
  parallel_for(static_cast<std::size_t>(n), grain, [&](std::size_t b, std::size_t e) {
    EMBTAB_DISPATCH_DIM(dim, gather_range<D>(rows, ids, int64_t(b), int64_t(e), out));
  });
  return first_bad;
}

// ---- pooled bags ----

// Vectors of a row pooled at once in registers (16 architectural vector registers on avx2 and the
// baseline; some are needed for the row being read).
constexpr int64_t kBlockVectors = 8;

// One bag of a compile-time row length D (a multiple of kW), without argmax: the accumulators of
// up to kBlockVectors vectors stay in registers while the bag's rows stream through; wider rows
// take several passes over the bag (the later ones hit cache). The first pass prefetches and
// counts invalid ids. Same operations in the same order as the in-memory path, so the same
// results. Returns false after recording a bad id.
template <int D, PoolMode M, bool Weighted, class R, class I>
EMBTAB_INLINE bool pool_bag_in_registers(const LowpRows<R>& rows, const I* EMBTAB_RESTRICT ids, int64_t s, int64_t e,
                                         int64_t ids_end, Ahead ahead,
                                         const float* EMBTAB_RESTRICT weights, float* EMBTAB_RESTRICT o) {
  constexpr int64_t kVectors = D / kW;
  constexpr int64_t kBlock = kVectors < kBlockVectors ? kVectors : kBlockVectors;
  static_assert(kVectors % kBlock == 0, "row length must split into whole blocks");
  // Row i (prefetching ahead and counting an invalid id on the first pass), or false to stop.
  auto fetch = [&](int64_t i, int64_t c0, R& row) -> bool {
    if (c0 == 0) prefetch_id<R>(ids, i + ahead.rows, ids_end, rows.table, rows.num_rows, rows.dim, ahead.bytes);
    return rows.get(ids[i], i, row, c0 == 0);
  };
  // Row i's vectors [c0, c0 + kBlock), times its weight.
  auto load = [&](int64_t i, int64_t c0, VF* x) -> bool {
    R row;
    if (!fetch(i, c0, row)) return false;
    const VF w = v_set1(Weighted ? weights[i] : 1.0f);
#pragma GCC unroll 8
    for (int64_t k = 0; k < kBlock; ++k) x[k] = Weighted ? v_mul(w, row.vec((c0 + k) * kW)) : row.vec((c0 + k) * kW);
    return true;
  };
  // Fused sums (8-bit rows): acc = fma(q, scale, acc + bias) from acc = +0, weights folded in.
  auto fuse = [&](int64_t i, int64_t c0, VF* acc) -> bool {
    R row;
    if (!fetch(i, c0, row)) return false;
    if constexpr (R::kFusedSum) {
      if (Weighted) row = row.weighted(weights[i]);
#pragma GCC unroll 8
      for (int64_t k = 0; k < kBlock; ++k) acc[k] = row.sum_into((c0 + k) * kW, acc[k]);
    }
    return true;
  };
  for (int64_t c0 = 0; c0 < kVectors; c0 += kBlock) {
    VF acc[kBlock];
    if constexpr (R::kFusedSum && M != PoolMode::max) {
#pragma GCC unroll 8
      for (int64_t k = 0; k < kBlock; ++k) acc[k] = v_set1(0.0f);
      for (int64_t i = s; i < e; ++i)
        if (!fuse(i, c0, acc)) return false;
    } else {
      if (!load(s, c0, acc)) return false;
      for (int64_t i = s + 1; i < e; ++i) {
        VF x[kBlock];
        if (!load(i, c0, x)) return false;
#pragma GCC unroll 8
        for (int64_t k = 0; k < kBlock; ++k) acc[k] = M == PoolMode::max ? v_max_nan(acc[k], x[k]) : v_add(acc[k], x[k]);
      }
    }
    const VF count = v_set1(static_cast<float>(e - s));
#pragma GCC unroll 8
    for (int64_t k = 0; k < kBlock; ++k) v_store(o + (c0 + k) * kW, M == PoolMode::mean ? v_div(acc[k], count) : acc[k]);
  }
  return true;
}

template <int D, PoolMode M, bool Weighted, bool Arg, class R, class I>
void bags_range(const LowpRows<R>& rows, const I* EMBTAB_RESTRICT ids, const int64_t* offsets, int64_t bag_begin,
                int64_t bag_end, const float* EMBTAB_RESTRICT weights, float* EMBTAB_RESTRICT out,
                int64_t* EMBTAB_RESTRICT argmax, Ahead ahead) {
  const int64_t dim = rows.dim;
  const int64_t ids_end = offsets[bag_end];
  for (int64_t b = bag_begin; b < bag_end; ++b) {
    const int64_t s = offsets[b], e = offsets[b + 1];
    float* EMBTAB_RESTRICT o = out + b * dim;
    int64_t* EMBTAB_RESTRICT am = Arg ? argmax + b * dim : nullptr;
    if (s == e) {
      row_zero<D>(o, dim);
      if (Arg)
        for (int64_t j = 0; j < dim; ++j) am[j] = -1;
      continue;
    }
    if (D > 0 && D % kW == 0 && !Arg) {
      if (!pool_bag_in_registers<(D > 0 ? D : kW), M, Weighted>(rows, ids, s, e, ids_end, ahead, weights, o))
        return;
      continue;
    }
    for (int64_t i = s; i < e; ++i) {
      prefetch_id<R>(ids, i + ahead.rows, ids_end, rows.table, rows.num_rows, dim, ahead.bytes);
      const I id = ids[i];
      R row;
      if (!rows.get(id, i, row)) return;
      // A zero row read for an invalid id wins nothing: its argmax entry is -1.
      const int64_t winner = id_in_range(id, rows.num_rows) ? static_cast<int64_t>(id) : -1;
      if (M == PoolMode::max) {
        if (i == s) {
          put_row<D>(o, row, dim);
          if (Arg)
            for (int64_t j = 0; j < dim; ++j) am[j] = winner;
        } else if (Arg) {
          max_row_arg<D>(o, am, row, winner, dim);
        } else {
          max_row<D>(o, row, dim);
        }
      } else if constexpr (R::kFusedSum) {
        if (i == s) row_zero<D>(o, dim);
        sum_row<D>(o, Weighted ? row.weighted(weights[i]) : row, dim);
      } else if (Weighted) {
        if (i == s)
          put_scaled_row<D>(o, row, weights[i], dim);
        else
          add_scaled_row<D>(o, row, weights[i], dim);
      } else {
        if (i == s)
          put_row<D>(o, row, dim);
        else
          add_row<D>(o, row, dim);
      }
    }
    if (M == PoolMode::mean) row_div<D>(o, static_cast<float>(e - s), dim);
  }
}

template <PoolMode M, bool Weighted, bool Arg, class R, class I>
int64_t bags_mode(const LowpRows<R>& rows, const I* ids, const int64_t* offsets, int64_t num_bags,
                  const float* weights, float* out, int64_t* argmax) {
  const int64_t dim = rows.dim;
  const int64_t total = offsets[num_bags];
  // Split bags between threads by (ids read + bags written), so that long bags balance.
  const int64_t work = (total + num_bags) * max_of<int64_t>(dim, 1);
  const int64_t chunks = min_of<int64_t>(get_num_threads(), max_of<int64_t>(1, work / 65536));
  // Whole rows or lead lines ahead, chosen by timing as for float32 bags (lookup_isa.cpp), timed
  // apart from them: the kind says the row format.
  const int64_t row_bytes = R::bytes(dim);
  const bool eligible = chunks >= 2 && total * row_bytes >= kTuneMinBytes;
  const int kind = (M == PoolMode::max ? (Arg ? 3 : 2) : (Weighted ? 1 : 0)) + (R::kFusedSum ? 8 : 4);
  const TuneTicket ticket = tune_begin(TuneSite::bags_prefetch, bags_tune_detail(row_bytes, chunks, kind), eligible);
  const Ahead ahead = ticket.arm == 1 ? Ahead::lead(row_bytes) : Ahead::whole(row_bytes);
  parallel_for(static_cast<std::size_t>(chunks), 1, [&](std::size_t c0, std::size_t c1) {
    for (std::size_t c = c0; c < c1; ++c) {
      const int64_t b0 = bag_chunk_begin(offsets, num_bags, int64_t(c), chunks);
      const int64_t b1 = bag_chunk_begin(offsets, num_bags, int64_t(c) + 1, chunks);
      if (b0 < b1)
        EMBTAB_DISPATCH_DIM(dim, bags_range<D, M, Weighted, Arg>(rows, ids, offsets, b0, b1, weights, out, argmax,
                                                                 ahead));
    }
  });
  tune_end(ticket, static_cast<double>(total));
  return *rows.invalid.first_bad;
}

template <class R, class I>
int64_t bags(const void* table, int64_t num_rows, int64_t dim, const I* ids, const int64_t* offsets,
             int64_t num_bags, const float* weights, PoolMode mode, float* out, int64_t* argmax,
             const void* zero_row, int64_t* num_invalid) {
  if (num_bags <= 0) return -1;
  int64_t first_bad = -1;
  const LowpRows<R> rows{table, num_rows, dim, InvalidIds{zero_row, &first_bad, num_invalid}};
  switch (mode) {
    case PoolMode::max:
      return argmax ? bags_mode<PoolMode::max, false, true>(rows, ids, offsets, num_bags, weights, out, argmax)
                    : bags_mode<PoolMode::max, false, false>(rows, ids, offsets, num_bags, weights, out, argmax);
    case PoolMode::mean:
      return weights ? bags_mode<PoolMode::mean, true, false>(rows, ids, offsets, num_bags, weights, out, argmax)
                     : bags_mode<PoolMode::mean, false, false>(rows, ids, offsets, num_bags, weights, out, argmax);
    default:
      return weights ? bags_mode<PoolMode::sum, true, false>(rows, ids, offsets, num_bags, weights, out, argmax)
                     : bags_mode<PoolMode::sum, false, false>(rows, ids, offsets, num_bags, weights, out, argmax);
  }
}

// ---- building tables ----

void to_bfloat16(const float* src, int64_t n, uint16_t* dst) {
  if (n <= 0) return;
  parallel_for(static_cast<std::size_t>(n), 65536, [&](std::size_t b, std::size_t e) {
    for (std::size_t i = b; i < e; ++i) dst[i] = float_bits_to_bf16(bits_from_float(src[i]));
  });
}

// scale = (max - min) / 255 and bias = min per row; code = rint((x - bias) / scale) in double,
// clamped to [0, 255]. A row whose scale rounds to 0 (a constant row) gets all codes 0 and so
// decodes to exactly its value. Rows with a NaN or an infinity, or whose codes would decode past
// the float32 range (a range max - min near FLT_MAX), are refused.
int64_t quantize_rows_8bit(const float* table, int64_t num_rows, int64_t dim, uint8_t* codes, float* params) {
  int64_t first_bad = -1;
  if (num_rows <= 0) return -1;
  const std::size_t grain = static_cast<std::size_t>(max_of<int64_t>(1, 16384 / max_of<int64_t>(dim, 1)));
  parallel_for(static_cast<std::size_t>(num_rows), grain, [&](std::size_t b, std::size_t e) {
    for (int64_t r = int64_t(b); r < int64_t(e); ++r) {
      const float* EMBTAB_RESTRICT x = table + r * dim;
      uint8_t* EMBTAB_RESTRICT o = codes + r * dim;
      float lo = dim > 0 ? x[0] : 0.0f, hi = lo;
      bool finite = true;
      for (int64_t j = 0; j < dim; ++j) {
        const float v = x[j];
        finite &= (v - v == 0.0f);  // false for NaN and +-inf
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
      }
      const float scale = static_cast<float>((static_cast<double>(hi) - static_cast<double>(lo)) / 255.0);
      // Decoding, fma(q, scale, lo), is monotone in the code, so if code 255 decodes to a finite
      // value, all do.
      const float top = __builtin_fmaf(255.0f, scale, lo);
      if (!finite || top - top != 0.0f) {
        atomic_min(&first_bad, r);
        return;
      }
      const double dscale = scale, dlo = lo;
      for (int64_t j = 0; j < dim; ++j) {
        double t = scale > 0.0f ? (static_cast<double>(x[j]) - dlo) / dscale : 0.0;
        t = t < 0.0 ? 0.0 : (t > 255.0 ? 255.0 : t);
        o[j] = static_cast<uint8_t>(__builtin_rint(t));
      }
      params[2 * r] = scale;
      params[2 * r + 1] = lo;
    }
  });
  return first_bad;
}

template <class R, class I>
constexpr LowpFns<I> fns() {
  return LowpFns<I>{&gather<R, I>, &bags<R, I>};
}

// Indexed by LowpFormat: f16, bf16, i8.
const LowpKernels kTable{{fns<F16Row, std::int32_t>(), fns<BF16Row, std::int32_t>(), fns<I8Row, std::int32_t>()},
                         {fns<F16Row, std::int64_t>(), fns<BF16Row, std::int64_t>(), fns<I8Row, std::int64_t>()},
                         &to_bfloat16,
                         &quantize_rows_8bit};

}  // namespace

const LowpKernels& lowp_kernels() { return kTable; }

}  // namespace EMBTAB_ISA_NS
}  // namespace embtab
