// Forward lookups: gather rows by id, and pooled bags (sum / mean / max). Pure C++; no Python.
//
// Contract shared by every kernel here:
// - `table` is a C-contiguous num_rows x dim matrix; `ids` are flat; bag b spans
//   ids[offsets[b] : offsets[b + 1]] (offsets validated by the caller: 0-based, non-decreasing).
// - Ids are bounds-checked as they are read. With zero_row == nullptr (bounds="raise") a kernel
//   returns -1 on success, else the smallest position whose id is negative or >= num_rows (the
//   output is then unspecified). With zero_row pointing at `dim` zeros (bounds="zero") an invalid
//   id reads as that row, *num_invalid counts them, and the kernel returns -1.
// - Each output row is produced by one thread, adding its inputs in their original order, so the
//   result is the same for every thread count.
#pragma once

#include <cstdint>

#include "kernels/dispatch.hpp"

namespace embtab {

enum class PoolMode : int { sum = 0, mean = 1, max = 2 };

// Bags read at least this many bytes of rows before the prefetch tuner times them (smaller calls
// are not bound by memory, and too short to time).
constexpr std::int64_t kTuneMinBytes = std::int64_t(4) << 20;

// What the prefetch tuner keys multi-threaded bag calls by: calls that differ in any of these take
// different times per row, so they are timed apart. `kind`: 0 sum / mean, 1 weighted, 2 max, 3 max
// with argmax, on float32 / float64 rows; plus 4 on float16 / bfloat16 rows, plus 8 on 8-bit rows.
inline std::uint64_t bags_tune_detail(std::int64_t row_bytes, std::int64_t chunks, int kind) {
  return static_cast<std::uint64_t>(row_bytes) << 24 | static_cast<std::uint64_t>(chunks) << 4 |
         static_cast<std::uint64_t>(kind);
}

template <class T, class I>
struct LookupFns {
  std::int64_t (*gather)(const T* table, std::int64_t num_rows, std::int64_t dim, const I* ids, std::int64_t n,
                         T* out, const T* zero_row, std::int64_t* num_invalid);
  // weights: nullptr or one per id. argmax: nullptr, or (for max) num_bags x dim ids of the rows
  // that won each output element (-1 for empty bags and for zero rows read for invalid ids).
  std::int64_t (*bags)(const T* table, std::int64_t num_rows, std::int64_t dim, const I* ids,
                       const std::int64_t* offsets, std::int64_t num_bags, const T* weights, PoolMode mode,
                       T* out, std::int64_t* argmax, const T* zero_row, std::int64_t* num_invalid);
  // Bags [bag_begin, bag_end) on the calling thread, row b written at out + b * out_stride; mode sum
  // or mean (weights optional). Ids are checked (returns -1 or the smallest bad position). For
  // multi-table lookups (kernels/multi.hpp), which split all tables' bags between threads.
  std::int64_t (*bags_block)(const T* table, std::int64_t num_rows, std::int64_t dim, const I* ids,
                             const std::int64_t* offsets, std::int64_t bag_begin, std::int64_t bag_end,
                             const T* weights, PoolMode mode, T* out, std::int64_t out_stride);
};

struct LookupKernels {
  LookupFns<float, std::int32_t> f32_i32;
  LookupFns<float, std::int64_t> f32_i64;
  LookupFns<double, std::int32_t> f64_i32;
  LookupFns<double, std::int64_t> f64_i64;

  template <class T, class I>
  const LookupFns<T, I>& get() const;
};

template <> inline const LookupFns<float, std::int32_t>& LookupKernels::get() const { return f32_i32; }
template <> inline const LookupFns<float, std::int64_t>& LookupKernels::get() const { return f32_i64; }
template <> inline const LookupFns<double, std::int32_t>& LookupKernels::get() const { return f64_i32; }
template <> inline const LookupFns<double, std::int64_t>& LookupKernels::get() const { return f64_i64; }

}  // namespace embtab

EMBTAB_ISA_TABLE(LookupKernels, lookup_kernels)
