// Lookups over reduced-precision tables (float16, bfloat16, row-wise 8-bit), with float32 outputs
// and float32 accumulation, plus the conversions that build such tables. Pure C++; no Python.
//
// Storage formats (`table` of the kernels below):
// - f16:  IEEE binary16 bits, dim x uint16 per row (row r at element r * dim).
// - bf16: the high 16 bits of a float32, dim x uint16 per row.
// - i8:   row-wise asymmetric 8-bit, `table` points to an I8Table: dim uint8 codes q per row in
//         one array, and the row's float32 scale and bias side by side in another. A code decodes
//         to fma(q, scale, bias). Not FBGEMM's fused layout (codes, scale and bias in one span of
//         dim + 8 bytes): there a row of 128 codes spans two 128-byte pairs of cache lines, here
//         one, and the 8 bytes of scale and bias of a million rows fit in a last-level cache.
//
// The lookup contract is the one of kernels/lookup.hpp: ids are bounds-checked as they are read,
// a kernel returns -1 or the smallest bad position, each output row is produced by one thread in
// the original order of its ids, so results are identical for every thread count and, since every
// step is an exactly rounded float32 operation, for every SIMD path.
#pragma once

#include <cstdint>

#include "kernels/dispatch.hpp"
#include "kernels/lookup.hpp"

namespace embtab {

enum class LowpFormat : int { f16 = 0, bf16 = 1, i8 = 2 };

// An 8-bit table: codes (num_rows x dim), params (num_rows x 2: scale, bias).
struct I8Table {
  const std::uint8_t* codes;
  const float* params;
};

// Bytes of one stored row of `dim` values (8-bit: its codes, scale and bias).
inline std::int64_t lowp_row_bytes(LowpFormat format, std::int64_t dim) {
  return format == LowpFormat::i8 ? dim + 8 : 2 * dim;
}

template <class I>
struct LowpFns {
  // zero_row: nullptr (an invalid id stops the kernel; its smallest position is returned), or one
  // stored row of zero bytes (8-bit: an I8Table over zero bytes) that invalid ids read instead,
  // counted in *num_invalid.
  std::int64_t (*gather)(const void* table, std::int64_t num_rows, std::int64_t dim, const I* ids, std::int64_t n,
                         float* out, const void* zero_row, std::int64_t* num_invalid);
  // weights: nullptr or one per id; argmax: nullptr, or (max only) num_bags x dim winning ids (-1
  // for empty bags and for zero rows read for invalid ids).
  std::int64_t (*bags)(const void* table, std::int64_t num_rows, std::int64_t dim, const I* ids,
                       const std::int64_t* offsets, std::int64_t num_bags, const float* weights, PoolMode mode,
                       float* out, std::int64_t* argmax, const void* zero_row, std::int64_t* num_invalid);
};

struct LowpKernels {
  LowpFns<std::int32_t> lookup_i32[3];  // indexed by LowpFormat
  LowpFns<std::int64_t> lookup_i64[3];
  // float32 -> bfloat16 bits, round to nearest even; NaN stays NaN (made quiet, sign kept).
  void (*to_bfloat16)(const float* src, std::int64_t n, std::uint16_t* dst);
  // Row-wise 8-bit quantization into the i8 layout above (codes: num_rows x dim bytes, params:
  // num_rows x 2 floats). Returns -1, or the first row holding a NaN or an infinity or whose
  // largest code would decode to an infinity (the output is then unspecified).
  std::int64_t (*quantize_rows_8bit)(const float* table, std::int64_t num_rows, std::int64_t dim,
                                     std::uint8_t* codes, float* params);

  template <class I>
  const LowpFns<I>& get(LowpFormat format) const;
};

template <>
inline const LowpFns<std::int32_t>& LowpKernels::get(LowpFormat format) const {
  return lookup_i32[static_cast<int>(format)];
}
template <>
inline const LowpFns<std::int64_t>& LowpKernels::get(LowpFormat format) const {
  return lookup_i64[static_cast<int>(format)];
}

}  // namespace embtab

EMBTAB_ISA_TABLE(LowpKernels, lowp_kernels)
