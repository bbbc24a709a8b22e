// Forward lookups over every row format: gather rows by id, and pooled bags (sum / mean / max),
// with per-id weights, argmax and the bounds modes. Pure C++; no Python.
//
// Contract shared by every kernel here:
// - `table` views a C-contiguous num_rows x dim table in one of the RowFormats; `ids` are flat; bag
//   b spans ids[offsets[b] : offsets[b + 1]] (offsets validated by the caller: 0-based,
//   non-decreasing).
// - Results, weights and accumulation are float64 for f64 tables and float32 for every other
//   format (reduced-precision rows are widened to float32 as they are read).
// - Ids are bounds-checked as they are read (each id is read once for its row). What an invalid
//   id (negative or >= num_rows) does is `on_invalid`; with `stop` or `stop_before_writing` the
//   kernel returns the smallest position whose id is invalid, else -1.
// - Each output row is produced by one thread, adding its inputs in their original order, with
//   exactly rounded float operations (the build uses -ffp-contract=off), so the result is the same
//   for every thread count and every SIMD path.
#pragma once

#include <cstdint>

#include "kernels/dispatch.hpp"

namespace embtab {

enum class PoolMode : int { sum = 0, mean = 1, max = 2 };

// How a table's rows are stored.
// - f32, f64: the values.
// - f16: IEEE binary16 bits; bf16: the high 16 bits of a float32 (dim x uint16 per row).
// - i8: row-wise asymmetric 8-bit: `rows` holds dim uint8 codes per row and `params` the row's
//   float32 scale and bias side by side; code q decodes to fma(q, scale, bias). Sums add a row into
//   the accumulator as fma(q, scale, acc + bias) from acc = +0, a weight w folded into scale and bias
//   (w * scale, w * bias): FBGEMM's 8-bit row-wise rule, so sums equal torch's quantized
//   embedding_bag bit for bit. The codes are stored apart from the scales and biases (not FBGEMM's
//   fused rows of dim + 8 bytes): a row of 128 codes then spans one 128-byte pair of cache lines,
//   not two, and the 8 bytes of scale and bias per row mostly stay in the last-level cache.
enum class RowFormat : int { f32 = 0, f64 = 1, f16 = 2, bf16 = 3, i8 = 4 };
constexpr int kRowFormats = 5;

struct TableView {
  RowFormat format;
  const void* rows;
  const float* params;  // i8 only: num_rows x (scale, bias)
  std::int64_t num_rows, dim;
};

// What an invalid id does.
enum class OnInvalid : int {
  stop = 0,                 // the kernel stops at one (the output is then unspecified)
  stop_before_writing = 1,  // every id is checked before anything is written to the output
  read_zeros = 2,           // it reads as a row of zeros and is counted in *num_invalid
};

template <class I>
struct LookupFns {
  // out: n x dim results.
  std::int64_t (*gather)(const TableView& table, const I* ids, std::int64_t n, void* out, OnInvalid on_invalid,
                         std::int64_t* num_invalid);
  // weights: nullptr or one per id (sum and mean). argmax: nullptr, or (max only) num_bags x dim
  // ids of the rows that won each output element (-1 for empty bags and for zero rows read for
  // invalid ids). out: num_bags x dim results.
  std::int64_t (*bags)(const TableView& table, const I* ids, const std::int64_t* offsets, std::int64_t num_bags,
                       const void* weights, PoolMode mode, void* out, std::int64_t* argmax, OnInvalid on_invalid,
                       std::int64_t* num_invalid);
  // Bags [bag_begin, bag_end) on the calling thread, bag b's row written at out + b * out_stride
  // (elements); mode sum or mean, weights optional. An invalid id stops the call: returns -1 or the
  // smallest bad position. For multi-table lookups (kernels/multi.hpp), which split every table's
  // bags between threads themselves.
  std::int64_t (*bags_block)(const TableView& table, const I* ids, const std::int64_t* offsets, std::int64_t bag_begin,
                             std::int64_t bag_end, const void* weights, PoolMode mode, void* out,
                             std::int64_t out_stride);
};

struct LookupKernels {
  LookupFns<std::int32_t> i32[kRowFormats];  // indexed by RowFormat
  LookupFns<std::int64_t> i64[kRowFormats];
};

}  // namespace embtab

EMBTAB_ISA_TABLE(LookupKernels, lookup_kernels)
