// Building reduced-precision tables (bfloat16 rounding, row-wise 8-bit quantization), compiled once
// per instruction set (see CMakeLists.txt).
#include <cstddef>
#include <cstdint>

#include "kernels/lowp.hpp"
#include "kernels/parallel.hpp"

namespace embtab {
namespace EMBTAB_ISA_NS {

#include "kernels/isa_common.hpp"

namespace {

using std::int64_t;
using std::uint16_t;
using std::uint32_t;
using std::uint8_t;

// binary32 -> bfloat16, round to nearest, ties to even. A NaN keeps its sign and top payload bits
// and is made quiet (a plain truncation could turn a NaN into an infinity).
EMBTAB_INLINE uint16_t float_bits_to_bf16(uint32_t bits) {
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

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

const LowpKernels kTable{&to_bfloat16, &quantize_rows_8bit};

}  // namespace

const LowpKernels& lowp_kernels() { return kTable; }

}  // namespace EMBTAB_ISA_NS
}  // namespace embtab
