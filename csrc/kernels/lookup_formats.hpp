// The row formats of the lookup engine (lookup_isa.cpp): how one stored row of each RowFormat
// (kernels/lookup.hpp) is read as values of the lookup's output type. Include this header INSIDE
// a per-path namespace, after isa_common.hpp: each instruction set compiles its own copy.
//
// A row source R has
//   Out                    the output (and accumulation) type: double for f64 rows, else float;
//   kFusedSum              sums use sum_into (8-bit rows), not vec(j) additions;
//   bytes(dim)             the bytes of a stored row that a lookup reads (and prefetches);
//   at<D>(table, id)       row id (D > 0: the row length, known at compile time);
//   prefetch<D>(table, id) prefetches row id;
//   vec(j), one(j)         elements [j, j + lanes) as one native vector, element j alone.
//
// Reduced-precision rows are widened to float32 in registers as they are read: float16 with F16C
// (vcvtph2ps) on the AVX2 / AVX-512 paths and bit manipulation elsewhere, bfloat16 with a 16-bit
// shift, 8-bit codes with a zero-extension, an int -> float conversion and one fma. All of these are
// exact or exactly rounded float32 operations, so every path gives bitwise the same results.

typedef VecOf<float>::type VFloat;
constexpr int kFloatLanes = int(kVecBytes / sizeof(float));

// ---- scalar widening (the definition every path agrees with) ----

// IEEE binary16 -> binary32 (exact). NaNs come out quiet, as from vcvtph2ps.
EMBTAB_INLINE float f16_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exponent = (h >> 10) & 0x1fu;
  std::uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1fu) {  // infinity or NaN
    return float_from_bits(sign | 0x7f800000u | (mantissa << 13) | (mantissa ? 0x00400000u : 0u));
  }
  if (exponent == 0) {
    if (mantissa == 0) return float_from_bits(sign);
    // Subnormal half: normalize, so that the leading one becomes the implicit bit.
    const int shift = __builtin_clz(mantissa) - 21;
    mantissa = (mantissa << shift) & 0x3ffu;
    exponent = static_cast<std::uint32_t>(1 - shift);
  }
  return float_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

EMBTAB_INLINE float bf16_to_float(std::uint16_t h) { return float_from_bits(static_cast<std::uint32_t>(h) << 16); }

// ---- widening a native vector's worth of elements ----

// One lane at a time, where the instruction set has no wider conversion.
template <class S, float (*One)(S)>
EMBTAB_INLINE VFloat widen_lanes(const S* p) {
  VFloat v;
  for (int k = 0; k < kFloatLanes; ++k) v[k] = One(p[k]);
  return v;
}
EMBTAB_INLINE float u8_to_float(std::uint8_t q) { return static_cast<float>(q); }

#if defined(__AVX512F__)
// The zero-masked forms with a full mask compile to the plain instructions; the plain intrinsics
// pass GCC 12 an "undefined" source register that -Wmaybe-uninitialized then reports.
constexpr __mmask16 kAllLanes = 0xffff;
EMBTAB_INLINE VFloat widen_f16(const std::uint16_t* p) {
  return (VFloat)_mm512_maskz_cvtph_ps(kAllLanes, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
EMBTAB_INLINE VFloat widen_bf16(const std::uint16_t* p) {
  const __m512i wide =
      _mm512_maskz_cvtepu16_epi32(kAllLanes, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return (VFloat)_mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAllLanes, wide, 16));
}
EMBTAB_INLINE VFloat widen_u8(const std::uint8_t* p) {
  const __m512i wide = _mm512_maskz_cvtepu8_epi32(kAllLanes, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return (VFloat)_mm512_maskz_cvtepi32_ps(kAllLanes, wide);
}
EMBTAB_INLINE VFloat fma_lanes(VFloat a, VFloat b, VFloat c) { return (VFloat)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c); }
#elif defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
EMBTAB_INLINE VFloat widen_f16(const std::uint16_t* p) {
  return (VFloat)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
EMBTAB_INLINE VFloat widen_bf16(const std::uint16_t* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return (VFloat)_mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}
EMBTAB_INLINE VFloat widen_u8(const std::uint8_t* p) {
  return (VFloat)_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
EMBTAB_INLINE VFloat fma_lanes(VFloat a, VFloat b, VFloat c) { return (VFloat)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c); }
#else
EMBTAB_INLINE VFloat widen_f16(const std::uint16_t* p) { return widen_lanes<std::uint16_t, f16_to_float>(p); }
EMBTAB_INLINE VFloat widen_bf16(const std::uint16_t* p) { return widen_lanes<std::uint16_t, bf16_to_float>(p); }
EMBTAB_INLINE VFloat widen_u8(const std::uint8_t* p) { return widen_lanes<std::uint8_t, u8_to_float>(p); }
// libm's fmaf, one lane at a time: exact, where the instruction set has no fma.
EMBTAB_INLINE VFloat fma_lanes(VFloat a, VFloat b, VFloat c) {
  VFloat r;
  for (int k = 0; k < kFloatLanes; ++k) r[k] = __builtin_fmaf(a[k], b[k], c[k]);
  return r;
}
#endif

// ---- row sources ----

// float32 / float64 rows, read as they are.
template <class T>
struct PlainRow {
  typedef T Out;
  static constexpr bool kFusedSum = false;
  const T* p;

  static std::int64_t bytes(std::int64_t dim) { return dim * std::int64_t(sizeof(T)); }
  template <int D>
  EMBTAB_INLINE static PlainRow at(const TableView& t, std::int64_t id) {
    return PlainRow{static_cast<const T*>(t.rows) + id * (D > 0 ? D : t.dim)};
  }
  template <int D>
  EMBTAB_INLINE static void prefetch(const TableView& t, std::int64_t id) {
    const std::int64_t dim = D > 0 ? D : t.dim;
    prefetch_row(static_cast<const T*>(t.rows) + id * dim, bytes(dim));
  }
  EMBTAB_INLINE typename VecOf<T>::type vec(std::int64_t j) const { return vload(p + j); }
  EMBTAB_INLINE T one(std::int64_t j) const { return p[j]; }
};

// Rows of 16-bit floats (float16 or bfloat16), widened by Wide (a vector) and WideOne (one value).
template <VFloat (*Wide)(const std::uint16_t*), float (*WideOne)(std::uint16_t)>
struct HalfRow {
  typedef float Out;
  static constexpr bool kFusedSum = false;
  const std::uint16_t* p;

  static std::int64_t bytes(std::int64_t dim) { return 2 * dim; }
  template <int D>
  EMBTAB_INLINE static HalfRow at(const TableView& t, std::int64_t id) {
    return HalfRow{static_cast<const std::uint16_t*>(t.rows) + id * (D > 0 ? D : t.dim)};
  }
  template <int D>
  EMBTAB_INLINE static void prefetch(const TableView& t, std::int64_t id) {
    const std::int64_t dim = D > 0 ? D : t.dim;
    prefetch_row(static_cast<const std::uint16_t*>(t.rows) + id * dim, bytes(dim));
  }
  EMBTAB_INLINE VFloat vec(std::int64_t j) const { return Wide(p + j); }
  EMBTAB_INLINE float one(std::int64_t j) const { return WideOne(p[j]); }
};
typedef HalfRow<widen_f16, f16_to_float> F16Row;
typedef HalfRow<widen_bf16, bf16_to_float> BF16Row;

// Row-wise 8-bit rows (RowFormat::i8): code q reads as fma(q, scale, bias), rounded once; sums add
// a row into the accumulator as fma(q, scale, acc + bias), a weight folded into scale and bias.
struct I8Row {
  typedef float Out;
  static constexpr bool kFusedSum = true;
  const std::uint8_t* q;
  float scale, bias;
  VFloat vscale, vbias;

  // The codes (scale and bias are prefetched apart: see prefetch).
  static std::int64_t bytes(std::int64_t dim) { return dim; }
  EMBTAB_INLINE static I8Row make(const std::uint8_t* q, float scale, float bias) {
    return I8Row{q, scale, bias, vsplat(scale), vsplat(bias)};
  }
  template <int D>
  EMBTAB_INLINE static I8Row at(const TableView& t, std::int64_t id) {
    return make(static_cast<const std::uint8_t*>(t.rows) + id * (D > 0 ? D : t.dim), t.params[2 * id],
                t.params[2 * id + 1]);
  }
  template <int D>
  EMBTAB_INLINE static void prefetch(const TableView& t, std::int64_t id) {
    const std::int64_t dim = D > 0 ? D : t.dim;
    prefetch_row(static_cast<const std::uint8_t*>(t.rows) + id * dim, dim);
    __builtin_prefetch(t.params + 2 * id, 0, 3);
  }
  EMBTAB_INLINE I8Row weighted(float w) const { return make(q, w * scale, w * bias); }
  EMBTAB_INLINE VFloat vec(std::int64_t j) const { return fma_lanes(widen_u8(q + j), vscale, vbias); }
  EMBTAB_INLINE float one(std::int64_t j) const { return __builtin_fmaf(static_cast<float>(q[j]), scale, bias); }
  EMBTAB_INLINE VFloat sum_into(std::int64_t j, VFloat acc) const { return fma_lanes(widen_u8(q + j), vscale, acc + vbias); }
  EMBTAB_INLINE float sum_into_one(std::int64_t j, float acc) const {
    return __builtin_fmaf(static_cast<float>(q[j]), scale, acc + bias);
  }
};
