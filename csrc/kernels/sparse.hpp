// Sparse gradients and sparse optimizer updates. Pure C++; no Python.
//
// Two steps, both multithreaded and bitwise independent of the thread count:
// 1. `plan` sorts the ids of a batch (a stable LSD radix sort of (id, position), scratch O(n)),
//    validating every id first, and returns the sorted unique rows with, for each, the positions
//    where it occurs in their original order. It reads each id exactly once, into private storage
//    where it is checked and then used: another thread that rewrites the ids during the call can at
//    worst make the plan describe a mix of old and new ids, never a row outside the bound.
// 2. `reduce` walks the unique rows: it sums each row's gradient from a GradSource (plain values,
//    bag gradients or max-pool routing) in the original order of the ids, then either stores it
//    (coalesce) or applies an optimizer update to the table and its state in the same pass, so the
//    full gradient is never materialised. Each row is owned by one thread.
// `scatter_add` is separate: no sort; each thread owns a range of rows and scans all ids in order.
#pragma once

#include <cstdint>

#include "kernels/dispatch.hpp"

namespace embtab {

// The result of `plan`: the unique ids in increasing order (`rows`, num_unique of them) and, for
// row k, its positions order[seg[k]] < ... < order[seg[k + 1] - 1] in the flat ids array.
struct SparsePlan {
  std::int64_t n = 0;
  std::int64_t num_unique = 0;
  const std::int64_t* order = nullptr;  // n
  const std::int64_t* seg = nullptr;    // num_unique + 1
  const std::int64_t* rows = nullptr;   // num_unique
};

// A rejected id: its flat position (-1: none) and the value that was read there (reported as
// found: the caller must not read the ids again to print it, another thread may have rewritten it).
struct BadId {
  std::int64_t pos = -1;
  std::int64_t value = 0;
};

// Scratch for `plan`, allocated by the caller (e.g. with operator new): work at least
// kPlanWorkBytesPerId * n bytes, 8-byte aligned; order and rows n int64 each; seg n + 1 int64.
constexpr std::int64_t kPlanWorkBytesPerId = 32;
struct PlanBuffers {
  void* work;
  std::int64_t* order;
  std::int64_t* seg;
  std::int64_t* rows;
};

template <class I>
struct SparseIndexFns {
  // Checks 0 <= id < num_rows for every id (num_rows < 0: no upper bound) before anything else.
  // Fills `plan` (pointing into `buffers`) on success, else returns the smallest bad position.
  BadId (*plan)(const I* ids, std::int64_t n, std::int64_t num_rows, const PlanBuffers& buffers, SparsePlan& plan);
  // Multi-table batches (kernels/multi.hpp layout): global[p] = row_base[t] + ids[p] for the table t
  // of p's feature, so that one plan covers every table (table t's rows follow table t - 1's). Each
  // id is read once; checks 0 <= ids[p] < num_rows[t] first: returns -1, or the smallest bad position.
  std::int64_t (*global_ids)(const I* ids, const std::int64_t* offsets, std::int64_t num_features,
                             std::int64_t batch, const std::int64_t* feature_table, const std::int64_t* num_rows,
                             const std::int64_t* row_base, std::int64_t* global);
};

// Where the gradient of one position comes from.
enum class SourceKind : int {
  values = 0,   // values[pos]
  bags = 1,     // grad_out[bag_of[pos]], times weights[pos], divided by the bag's length if mean
  bags_max = 2  // grad_out[bag, j] for the elements j where argmax[bag, j] == the row (once per bag)
};

template <class T>
struct GradSource {
  SourceKind kind = SourceKind::values;
  std::int64_t dim = 0;
  const T* values = nullptr;            // values: n x dim
  const T* grad_out = nullptr;          // bags: num_bags x dim
  const std::int64_t* bag_of = nullptr;  // bags: n (the bag of each position)
  const std::int64_t* offsets = nullptr;  // bags: num_bags + 1 (for mean)
  const T* weights = nullptr;           // bags: nullptr or n
  bool mean = false;
  const std::int64_t* argmax = nullptr;  // bags_max: num_bags x dim
};

enum class UpdateKind : int { store = 0, sgd = 1, adagrad = 2, rowwise_adagrad = 3, adam = 4, adamw = 5 };

// The update applied to row r with its summed gradient g (all arithmetic in T; the double
// parameters are rounded to T once, as torch does with Python scalars):
//   store:           out[k] = g
//   sgd:             p += (-lr) * g
//   adagrad:         s += g * g;  p += (-lr) * (g / (sqrt(s) + eps))
//   rowwise_adagrad: g += weight_decay * p (if nonzero);  s_r += mean(g * g);
//                    p -= (lr / (sqrt(s_r) + eps)) * g
//   adam:            m_old = m; dm = (g - m_old) * (1 - beta1); m = m_old + dm;
//                    v_old = v; dv = (g * g - v_old) * (1 - beta2); v = v_old + dv;
//                    p += (-lr) * ((dm + m_old) / (sqrt(dv + v_old) + eps))
//                    (torch.optim.SparseAdam's order of operations; lr is the bias-corrected step size)
//   adamw:           p *= (1 - weight_decay);  m = lerp(m, g, 1 - beta1);  v = v * beta2 + ((1 - beta2) * g) * g;
//                    p += ((-lr) * m) / (sqrt(v) / bias_correction2 + eps)
//                    (torch.optim.AdamW's order of operations on the touched rows: lr is lr / (1 - beta1**step),
//                    weight_decay is lr * weight_decay, bias_correction2 is sqrt(1 - beta2**step))
template <class T>
struct Update {
  UpdateKind kind = UpdateKind::store;
  T* out = nullptr;     // store: num_unique x dim
  T* table = nullptr;   // num_rows x dim
  T* state1 = nullptr;  // adagrad: sum (num_rows x dim); rowwise: sum (num_rows); adam: exp_avg
  T* state2 = nullptr;  // adam: exp_avg_sq
  double lr = 0, eps = 0, beta1 = 0, beta2 = 0, weight_decay = 0;
  double bias_correction2 = 1;  // adamw
};

template <class T, class I>
struct ScatterFns {
  // target[ids[i]] += values[i] in the order of i, like np.add.at. Every id is checked before the
  // first write: returns the smallest bad position (target untouched) if there is one. Each use of
  // an id is bounds-checked again, so an id that another thread turns bad during the call is
  // skipped, never written through.
  BadId (*scatter_add)(T* target, std::int64_t num_rows, std::int64_t dim, const I* ids, std::int64_t n,
                       const T* values);
};

// The gradient of a multi-table lookup (kernels/multi.hpp): bag g = f * batch + b of feature f takes
// row b of grad_out at columns feature_col[f] ...; mean features divide by the bag's length.
template <class T>
struct MultiGradSource {
  std::int64_t batch = 0;
  const T* grad_out = nullptr;  // batch x stride
  std::int64_t stride = 0;
  const std::int64_t* feature_col = nullptr;    // per feature
  const unsigned char* feature_mean = nullptr;  // per feature
  const std::int64_t* bag_of = nullptr;         // n: the bag of each position
  const std::int64_t* offsets = nullptr;        // num_features * batch + 1
  const T* weights = nullptr;                   // nullptr or n
};

template <class T>
struct SparseFns {
  void (*reduce)(const SparsePlan& plan, const GradSource<T>& source, const Update<T>& update);
  // One update of every table of a multi-table batch, in one parallel region over the rows of all
  // tables. `plan` is over global ids (SparseIndexFns::global_ids); table t owns global rows
  // [row_base[t], row_base[t + 1]), has row length dims[t] and is updated as updates[t] says.
  void (*reduce_multi)(const SparsePlan& plan, const MultiGradSource<T>& source, const Update<T>* updates,
                       const std::int64_t* dims, const std::int64_t* row_base, std::int64_t num_tables);
};

// bag_of[p] = b for offsets[b] <= p < offsets[b + 1].
using BagOfFn = void (*)(const std::int64_t* offsets, std::int64_t num_bags, std::int64_t* bag_of);

struct SparseKernels {
  SparseIndexFns<std::int32_t> i32;
  SparseIndexFns<std::int64_t> i64;
  ScatterFns<float, std::int32_t> scatter_f32_i32;
  ScatterFns<float, std::int64_t> scatter_f32_i64;
  ScatterFns<double, std::int32_t> scatter_f64_i32;
  ScatterFns<double, std::int64_t> scatter_f64_i64;
  SparseFns<float> f32;
  SparseFns<double> f64;
  BagOfFn bag_of;

  template <class I>
  const SparseIndexFns<I>& index() const;
  template <class T, class I>
  const ScatterFns<T, I>& scatter() const;
  template <class T>
  const SparseFns<T>& get() const;
};

// Baseline code only: per-path translation units must not define inline functions (ci/check_odr.sh).
#if !defined(EMBTAB_ISA_NS)
template <> inline const SparseIndexFns<std::int32_t>& SparseKernels::index() const { return i32; }
template <> inline const SparseIndexFns<std::int64_t>& SparseKernels::index() const { return i64; }
template <> inline const ScatterFns<float, std::int32_t>& SparseKernels::scatter() const { return scatter_f32_i32; }
template <> inline const ScatterFns<float, std::int64_t>& SparseKernels::scatter() const { return scatter_f32_i64; }
template <> inline const ScatterFns<double, std::int32_t>& SparseKernels::scatter() const { return scatter_f64_i32; }
template <> inline const ScatterFns<double, std::int64_t>& SparseKernels::scatter() const { return scatter_f64_i64; }
template <> inline const SparseFns<float>& SparseKernels::get() const { return f32; }
template <> inline const SparseFns<double>& SparseKernels::get() const { return f64; }
#endif

}  // namespace embtab

EMBTAB_ISA_TABLE(SparseKernels, sparse_kernels)
