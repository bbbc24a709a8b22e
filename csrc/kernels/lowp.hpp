// Building reduced-precision tables: float32 -> bfloat16, and row-wise 8-bit quantization (the
// lookups over them are the ones of kernels/lookup.hpp, which also describes their layouts). Pure
// C++; no Python.
#pragma once

#include <cstdint>

#include "kernels/dispatch.hpp"

namespace embtab {

struct LowpKernels {
  // float32 -> bfloat16 bits, round to nearest even; NaN stays NaN (made quiet, sign kept).
  void (*to_bfloat16)(const float* src, std::int64_t n, std::uint16_t* dst);
  // Row-wise 8-bit quantization into RowFormat::i8 (codes: num_rows x dim bytes, params: num_rows x
  // 2 floats). Returns -1, or the first row holding a NaN or an infinity or whose largest code would
  // decode to an infinity (the output is then unspecified).
  std::int64_t (*quantize_rows_8bit)(const float* table, std::int64_t num_rows, std::int64_t dim,
                                     std::uint8_t* codes, float* params);
};

}  // namespace embtab

EMBTAB_ISA_TABLE(LowpKernels, lowp_kernels)
