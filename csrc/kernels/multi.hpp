// Multi-table pooled lookups (embtab.gather_bags_multi): many tables, one call. Pure C++; no Python.
//
// A batch holds num_features features of `batch` bags each, feature-major as TorchRec's
// KeyedJaggedTensor lays them out: bag b of feature f spans ids[offsets[f * batch + b] :
// offsets[f * batch + b + 1]] and pools rows of table feature_table[f]. Its output is row b of
// `out` at columns out_col[f] ... out_col[f] + dims[table] (the features side by side, as a
// KeyedTensor). One parallel region covers every (feature, bag) pair, the threads taking ranges of
// samples; each bag is pooled by the per-bag code of the single-table lookup
// (LookupFns::bags_block), so the results are those of gather_bags, for every thread count.
#pragma once

#include <cstdint>

#include "kernels/dispatch.hpp"
#include "kernels/lookup.hpp"

namespace embtab {

template <class T>
struct MultiBags {
  std::int64_t num_features = 0, batch = 0;
  const T* const* tables = nullptr;          // per table
  const std::int64_t* num_rows = nullptr;    // per table
  const std::int64_t* dims = nullptr;        // per table
  const std::int64_t* feature_table = nullptr;  // per feature
  const PoolMode* modes = nullptr;           // per feature: sum or mean
  const std::int64_t* offsets = nullptr;     // num_features * batch + 1, validated CSR
  const T* weights = nullptr;                // nullptr or one per id
  T* out = nullptr;                          // batch x out_stride
  std::int64_t out_stride = 0;
  const std::int64_t* out_col = nullptr;     // per feature
};

template <class T, class I>
struct MultiFns {
  // Returns -1, or the smallest position whose id is out of range for its feature's table.
  std::int64_t (*bags)(const MultiBags<T>& m, const I* ids);
};

struct MultiKernels {
  MultiFns<float, std::int32_t> f32_i32;
  MultiFns<float, std::int64_t> f32_i64;
  MultiFns<double, std::int32_t> f64_i32;
  MultiFns<double, std::int64_t> f64_i64;

  template <class T, class I>
  const MultiFns<T, I>& get() const;
};

template <> inline const MultiFns<float, std::int32_t>& MultiKernels::get() const { return f32_i32; }
template <> inline const MultiFns<float, std::int64_t>& MultiKernels::get() const { return f32_i64; }
template <> inline const MultiFns<double, std::int32_t>& MultiKernels::get() const { return f64_i32; }
template <> inline const MultiFns<double, std::int64_t>& MultiKernels::get() const { return f64_i64; }

}  // namespace embtab

EMBTAB_ISA_TABLE(MultiKernels, multi_kernels)
