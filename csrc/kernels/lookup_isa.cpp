// The lookup engine: gather and pooled bags over every row format (lookup_formats.hpp), with
// weights, max with argmax, the bounds modes, prefetching and streaming stores alike for all of
// them; compiled once per instruction set (see CMakeLists.txt).
#include <cstddef>
#include <cstdint>
#include <type_traits>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define EMBTAB_HAVE_STREAM_STORES 1
#endif

#include "kernels/lookup.hpp"
#include "kernels/parallel.hpp"

namespace embtab {
namespace EMBTAB_ISA_NS {

#include "kernels/isa_common.hpp"

namespace {

#include "kernels/lookup_formats.hpp"

using std::int64_t;

// Outputs at least this large are written with non-temporal stores (when their rows fill whole
// cache lines and start on one): they then stream to memory instead of first being read into
// cache, where they would evict the table.
constexpr int64_t kStreamGatherBytes = int64_t(8) << 20;
constexpr int64_t kStreamBagsBytes = int64_t(2) << 20;

template <class R>
using OutOf = typename R::Out;
template <class T>
constexpr int64_t lanes() {
  return int64_t(kVecBytes / sizeof(T));
}

EMBTAB_INLINE void store_fence() {
#if defined(EMBTAB_HAVE_STREAM_STORES)
  _mm_sfence();
#endif
}

template <class T>
EMBTAB_INLINE bool streamable(const T* out, int64_t rows, int64_t dim, int64_t min_bytes) {
  const int64_t row_bytes = dim * int64_t(sizeof(T));
  return rows * row_bytes >= min_bytes && row_bytes % 64 == 0 && reinterpret_cast<std::uintptr_t>(out) % 64 == 0;
}

// The smallest position of an invalid id, or -1. Blocks of ids are tested without a branch per
// id (a vectorized OR of the comparisons); only a block holding a bad id is searched.
template <class I>
int64_t first_invalid(const I* ids, int64_t n, int64_t num_rows) {
  constexpr std::size_t kBlock = 256;
  int64_t first = -1;
  parallel_for(static_cast<std::size_t>(n), std::size_t(1) << 16, [&](std::size_t b, std::size_t e) {
    for (std::size_t s = b; s < e; s += kBlock) {
      const std::size_t t = min_of(s + kBlock, e);
      unsigned any_bad = 0;
      for (std::size_t i = s; i < t; ++i) any_bad |= id_in_range(ids[i], num_rows) ? 0u : 1u;
      if (!any_bad) continue;
      for (std::size_t i = s; i < t; ++i)
        if (!id_in_range(ids[i], num_rows)) {
          atomic_min(&first, int64_t(i));
          return;
        }
    }
  });
  return first;
}

// With OnInvalid::read_zeros: a one-row table of zero bytes (and zero scale and bias), which reads
// as zeros in every format. (Raw storage from operator new: it holds values of any format's type.)
class ZeroRow {
 public:
  ZeroRow(const TableView& table, OnInvalid on_invalid)
      : bytes_(on_invalid == OnInvalid::read_zeros ? 8 * static_cast<std::size_t>(table.dim + 1) : 0),
        storage_(bytes_ ? ::operator new(bytes_) : nullptr),
        view_{table.format, storage_, static_cast<const float*>(storage_), storage_ ? 1 : 0, table.dim} {
    if (storage_) __builtin_memset(storage_, 0, bytes_);
  }
  ~ZeroRow() { ::operator delete(storage_); }
  ZeroRow(const ZeroRow&) = delete;
  ZeroRow& operator=(const ZeroRow&) = delete;
  const TableView& view() const { return view_; }

 private:
  std::size_t bytes_;
  void* storage_;
  TableView view_;
};

// Where the rows of a lookup come from, and what an invalid id does: read `zero` (when it has a
// row) and count it in *num_invalid, or record its position in *first_bad and stop.
template <class R>
struct Rows {
  TableView table, zero;
  int64_t* first_bad;
  int64_t* num_invalid;

  // The row of ids[pos] = id into `row`, or false when the kernel must stop. `count`: whether an
  // invalid id is counted here (once per position, when a row is read in several passes).
  template <int D, class I>
  EMBTAB_INLINE bool get(I id, int64_t pos, R& row, bool count = true) const {
    if (EMBTAB_LIKELY(id_in_range(id, table.num_rows))) {
      row = R::template at<D>(table, static_cast<int64_t>(id));
      return true;
    }
    return invalid<D>(pos, row, count);
  }
  template <int D>
  __attribute__((noinline)) bool invalid(int64_t pos, R& row, bool count) const {
    if (zero.rows == nullptr) {
      atomic_min(first_bad, pos);
      return false;
    }
    if (count) __atomic_fetch_add(num_invalid, 1, __ATOMIC_RELAXED);
    row = R::template at<D>(zero, 0);
    return true;
  }

  // Prefetches the row of ids[pos], if pos < end and the id is valid.
  template <int D, class I>
  EMBTAB_INLINE void prefetch(const I* ids, int64_t pos, int64_t end) const {
    if (pos < end) {
      const I ahead = ids[pos];
      if (id_in_range(ahead, table.num_rows)) R::template prefetch<D>(table, static_cast<int64_t>(ahead));
    }
  }
};

// ---- operations on one output row o (D > 0: its compile-time length) ----
// Vector loops leave their tails to the scalar formulas; the tail loops are compiled only where a
// tail can exist (else GCC warns about them).

#define EMBTAB_ROW_LOOP(D, dim, T, vector_step, scalar_step)             \
  do {                                                                   \
    constexpr int64_t L = lanes<T>();                                    \
    const int64_t n = (D) > 0 ? (D) : (dim);                             \
    int64_t j = 0;                                                       \
    for (; j + L <= n; j += L) vector_step;                              \
    if ((D) == 0 || (D) % L != 0)                                        \
      for (; j < n; ++j) scalar_step;                                    \
  } while (0)

// o = row (Stream: with non-temporal stores; o 64-byte aligned and n a multiple of the lanes).
template <int D, bool Stream, class R>
EMBTAB_INLINE void put_row(OutOf<R>* EMBTAB_RESTRICT o, const R& r, int64_t dim) {
  if constexpr (Stream)
    EMBTAB_ROW_LOOP(D, dim, OutOf<R>, vstream(o + j, r.vec(j)), o[j] = r.one(j));
  else
    EMBTAB_ROW_LOOP(D, dim, OutOf<R>, vstore(o + j, r.vec(j)), o[j] = r.one(j));
}
template <int D, class R>
EMBTAB_INLINE void add_row(OutOf<R>* EMBTAB_RESTRICT o, const R& r, int64_t dim) {
  EMBTAB_ROW_LOOP(D, dim, OutOf<R>, vstore(o + j, vload(o + j) + r.vec(j)), o[j] += r.one(j));
}
template <int D, class R, class T>
EMBTAB_INLINE void put_scaled_row(T* EMBTAB_RESTRICT o, const R& r, T w, int64_t dim) {
  const auto vw = vsplat(w);
  EMBTAB_ROW_LOOP(D, dim, T, vstore(o + j, vw * r.vec(j)), o[j] = w * r.one(j));
}
template <int D, class R, class T>
EMBTAB_INLINE void add_scaled_row(T* EMBTAB_RESTRICT o, const R& r, T w, int64_t dim) {
  const auto vw = vsplat(w);
  EMBTAB_ROW_LOOP(D, dim, T, vstore(o + j, vload(o + j) + vw * r.vec(j)), o[j] += w * r.one(j));
}
// o = fma(q, scale, o + bias) (8-bit rows).
template <int D, class R>
EMBTAB_INLINE void sum_row(float* EMBTAB_RESTRICT o, const R& r, int64_t dim) {
  EMBTAB_ROW_LOOP(D, dim, float, vstore(o + j, r.sum_into(j, vload(o + j))), o[j] = r.sum_into_one(j, o[j]));
}
// Max pooling that propagates NaN like numpy's max: (v > m || v is NaN) ? v : m.
template <class V>
EMBTAB_INLINE V max_nan(V m, V v) {
  return ((v > m) | (v != v)) ? v : m;
}
template <int D, class R>
EMBTAB_INLINE void max_row(OutOf<R>* EMBTAB_RESTRICT o, const R& r, int64_t dim) {
  EMBTAB_ROW_LOOP(D, dim, OutOf<R>, vstore(o + j, max_nan(vload(o + j), r.vec(j))),
                  { const auto v = r.one(j); o[j] = (v > o[j] || v != v) ? v : o[j]; });
}
// With argmax: the first maximum (or the first NaN) wins, like numpy's argmax.
template <int D, class R>
EMBTAB_INLINE void max_row_arg(OutOf<R>* EMBTAB_RESTRICT o, int64_t* EMBTAB_RESTRICT arg, const R& r, int64_t id,
                               int64_t dim) {
  const int64_t n = D > 0 ? D : dim;
  for (int64_t j = 0; j < n; ++j) {
    const auto v = r.one(j), m = o[j];
    const bool take = v > m || (v != v && m == m);
    o[j] = take ? v : m;
    arg[j] = take ? id : arg[j];
  }
}
template <int D, class T>
EMBTAB_INLINE void div_row(T* EMBTAB_RESTRICT o, T divisor, int64_t dim) {
  const auto vd = vsplat(divisor);
  EMBTAB_ROW_LOOP(D, dim, T, vstore(o + j, vload(o + j) / vd), o[j] = o[j] / divisor);
}

#undef EMBTAB_ROW_LOOP

// ---- gather ----

template <int D, bool Stream, class R, class I>
void gather_range(const Rows<R>& rows, const I* EMBTAB_RESTRICT ids, int64_t begin, int64_t end,
                  OutOf<R>* EMBTAB_RESTRICT out) {
  const int64_t dim = rows.table.dim;
  const int64_t ahead = prefetch_distance(R::bytes(dim));
  for (int64_t i = begin; i < end; ++i) {
    rows.template prefetch<D>(ids, i + ahead, end);
    R row;
    if (!rows.template get<D>(ids[i], i, row)) break;
    put_row<D, Stream>(out + i * dim, row, dim);
  }
  if (Stream) store_fence();
}

template <class R, class I>
int64_t gather(const TableView& table, const I* ids, int64_t n, void* out_ptr, OnInvalid on_invalid,
               int64_t* num_invalid) {
  typedef OutOf<R> T;
  if (n <= 0) return -1;
  if (on_invalid == OnInvalid::stop_before_writing) {
    const int64_t bad = first_invalid(ids, n, table.num_rows);
    if (bad >= 0) return bad;
  }
  int64_t first_bad = -1;
  const ZeroRow zeros(table, on_invalid);
  const Rows<R> rows{table, zeros.view(), &first_bad, num_invalid};
  const int64_t dim = table.dim;
  T* out = static_cast<T*>(out_ptr);
  if (dim == 0) {
    // Nothing to copy, but ids are still checked.
    R row;
    for (int64_t i = 0; i < n; ++i)
      if (!rows.template get<0>(ids[i], i, row)) break;
    return first_bad;
  }
  const bool stream = streamable(out, n, dim, kStreamGatherBytes);
  const std::size_t grain = static_cast<std::size_t>(max_of<int64_t>(1, 32768 / dim));
  parallel_for(static_cast<std::size_t>(n), grain, [&](std::size_t b, std::size_t e) {
    if (stream)
      EMBTAB_DISPATCH_DIM(dim, gather_range<D, true>(rows, ids, int64_t(b), int64_t(e), out));
    else
      EMBTAB_DISPATCH_DIM(dim, gather_range<D, false>(rows, ids, int64_t(b), int64_t(e), out));
  });
  return first_bad;
}

// ---- pooled bags ----

// One bag of a compile-time row length D (a multiple of the lanes), without argmax: the
// accumulators of up to kMaxAccumulators vectors stay in registers while the bag's rows stream
// through; wider rows take several passes over the bag (the later ones hit cache). The first pass
// prefetches and counts invalid ids. Same operations in the same order as the in-memory loop of
// bags_range, so the same results. Returns false after recording a bad id.
template <int D, PoolMode M, bool Weighted, bool Stream, class R, class I>
EMBTAB_INLINE bool pool_bag_in_registers(const Rows<R>& rows, const I* EMBTAB_RESTRICT ids, int64_t s, int64_t e,
                                         int64_t ids_end, int64_t ahead, const OutOf<R>* EMBTAB_RESTRICT weights,
                                         OutOf<R>* EMBTAB_RESTRICT o) {
  typedef OutOf<R> T;
  typedef typename VecOf<T>::type V;
  constexpr int64_t L = lanes<T>();
  constexpr int64_t kVectors = D / L;
  constexpr int64_t kBlock = kVectors < kMaxAccumulators ? kVectors : kMaxAccumulators;
  static_assert(kVectors % kBlock == 0, "row length must split into whole blocks");
  // Row i (prefetching ahead and counting an invalid id on the first pass), or false to stop.
  const auto fetch = [&](int64_t i, int64_t c0, R& row) -> bool {
    if (c0 == 0) rows.template prefetch<D>(ids, i + ahead, ids_end);
    return rows.template get<D>(ids[i], i, row, c0 == 0);
  };
  // Row i's vectors [c0, c0 + kBlock), times its weight.
  const auto load = [&](int64_t i, int64_t c0, V* x) -> bool {
    R row;
    if (!fetch(i, c0, row)) return false;
    const V w = vsplat(Weighted ? weights[i] : T(1));
#pragma GCC unroll 8
    for (int64_t k = 0; k < kBlock; ++k) x[k] = Weighted ? w * row.vec((c0 + k) * L) : row.vec((c0 + k) * L);
    return true;
  };
  // Fused sums (8-bit rows): acc = fma(q, scale, acc + bias) from acc = +0, weights folded in.
  const auto fuse = [&](int64_t i, int64_t c0, V* acc) -> bool {
    R row;
    if (!fetch(i, c0, row)) return false;
    if constexpr (R::kFusedSum) {
      if (Weighted) row = row.weighted(weights[i]);
#pragma GCC unroll 8
      for (int64_t k = 0; k < kBlock; ++k) acc[k] = row.sum_into((c0 + k) * L, acc[k]);
    }
    return true;
  };
  for (int64_t c0 = 0; c0 < kVectors; c0 += kBlock) {
    V acc[kBlock];
    if constexpr (R::kFusedSum && M != PoolMode::max) {
#pragma GCC unroll 8
      for (int64_t k = 0; k < kBlock; ++k) acc[k] = vsplat(T(0));
      for (int64_t i = s; i < e; ++i)
        if (!fuse(i, c0, acc)) return false;
    } else {
      if (!load(s, c0, acc)) return false;
      for (int64_t i = s + 1; i < e; ++i) {
        V x[kBlock];
        if (!load(i, c0, x)) return false;
#pragma GCC unroll 8
        for (int64_t k = 0; k < kBlock; ++k) acc[k] = M == PoolMode::max ? max_nan(acc[k], x[k]) : acc[k] + x[k];
      }
    }
    if (M == PoolMode::mean) {
      const V count = vsplat(static_cast<T>(e - s));
#pragma GCC unroll 8
      for (int64_t k = 0; k < kBlock; ++k) acc[k] = acc[k] / count;
    }
#pragma GCC unroll 8
    for (int64_t k = 0; k < kBlock; ++k) {
      if (Stream)
        vstream(o + (c0 + k) * L, acc[k]);
      else
        vstore(o + (c0 + k) * L, acc[k]);
    }
  }
  return true;
}

template <int D, PoolMode M, bool Weighted, bool Arg, class R, class I>
void bags_range(const Rows<R>& rows, const I* EMBTAB_RESTRICT ids, const int64_t* offsets, int64_t bag_begin,
                int64_t bag_end, const OutOf<R>* EMBTAB_RESTRICT weights, OutOf<R>* EMBTAB_RESTRICT out,
                int64_t* EMBTAB_RESTRICT argmax, bool stream, int64_t out_stride) {
  typedef OutOf<R> T;
  const int64_t dim = rows.table.dim;
  const int64_t ahead = prefetch_distance(R::bytes(dim));
  const int64_t ids_end = offsets[bag_end];
  constexpr bool kRegisters = D > 0 && D % lanes<T>() == 0 && !Arg;
  for (int64_t b = bag_begin; b < bag_end; ++b) {
    const int64_t s = offsets[b], e = offsets[b + 1];
    T* EMBTAB_RESTRICT o = out + b * out_stride;
    int64_t* EMBTAB_RESTRICT am = Arg ? argmax + b * dim : nullptr;
    if (s == e) {
      for (int64_t j = 0; j < dim; ++j) o[j] = T(0);
      if (Arg)
        for (int64_t j = 0; j < dim; ++j) am[j] = -1;
      continue;
    }
    if constexpr (kRegisters) {
      const bool ok =
          stream ? pool_bag_in_registers<D, M, Weighted, true>(rows, ids, s, e, ids_end, ahead, weights, o)
                 : pool_bag_in_registers<D, M, Weighted, false>(rows, ids, s, e, ids_end, ahead, weights, o);
      if (!ok) break;
      continue;
    }
    for (int64_t i = s; i < e; ++i) {
      rows.template prefetch<D>(ids, i + ahead, ids_end);
      const I id = ids[i];
      R row;
      if (!rows.template get<D>(id, i, row)) return;
      // A zero row read for an invalid id wins nothing: its argmax entry is -1.
      const int64_t winner = id_in_range(id, rows.table.num_rows) ? static_cast<int64_t>(id) : -1;
      if (M == PoolMode::max) {
        if (i == s) {
          put_row<D, false>(o, row, dim);
          if (Arg)
            for (int64_t j = 0; j < dim; ++j) am[j] = winner;
        } else if (Arg) {
          max_row_arg<D>(o, am, row, winner, dim);
        } else {
          max_row<D>(o, row, dim);
        }
      } else if constexpr (R::kFusedSum) {
        if (i == s)
          for (int64_t j = 0; j < dim; ++j) o[j] = 0.0f;
        sum_row<D>(o, Weighted ? row.weighted(weights[i]) : row, dim);
      } else if (Weighted) {
        if (i == s)
          put_scaled_row<D>(o, row, weights[i], dim);
        else
          add_scaled_row<D>(o, row, weights[i], dim);
      } else {
        if (i == s)
          put_row<D, false>(o, row, dim);
        else
          add_row<D>(o, row, dim);
      }
    }
    if (M == PoolMode::mean) div_row<D>(o, static_cast<T>(e - s), dim);
  }
  if (stream) store_fence();
}

template <PoolMode M, bool Weighted, bool Arg, class R, class I>
int64_t bags_mode(const Rows<R>& rows, const I* ids, const int64_t* offsets, int64_t num_bags,
                  const OutOf<R>* weights, OutOf<R>* out, int64_t* argmax) {
  const int64_t dim = rows.table.dim;
  const int64_t total = offsets[num_bags];
  // Split bags between threads by (ids read + bags written), so that long bags balance.
  const int64_t work = (total + num_bags) * max_of<int64_t>(dim, 1);
  const int64_t chunks = min_of<int64_t>(get_num_threads(), max_of<int64_t>(1, work / 65536));
  const bool stream = !Arg && streamable(out, num_bags, dim, kStreamBagsBytes);
  parallel_for(static_cast<std::size_t>(chunks), 1, [&](std::size_t c0, std::size_t c1) {
    for (std::size_t c = c0; c < c1; ++c) {
      const int64_t b0 = bag_chunk_begin(offsets, num_bags, int64_t(c), chunks);
      const int64_t b1 = bag_chunk_begin(offsets, num_bags, int64_t(c) + 1, chunks);
      if (b0 < b1)
        EMBTAB_DISPATCH_DIM(dim, bags_range<D, M, Weighted, Arg>(rows, ids, offsets, b0, b1, weights, out, argmax,
                                                                 stream, dim));
    }
  });
  return *rows.first_bad;
}

template <class R, class I>
int64_t bags(const TableView& table, const I* ids, const int64_t* offsets, int64_t num_bags, const void* weights_ptr,
             PoolMode mode, void* out_ptr, int64_t* argmax, OnInvalid on_invalid, int64_t* num_invalid) {
  typedef OutOf<R> T;
  if (num_bags <= 0) return -1;
  if (on_invalid == OnInvalid::stop_before_writing) {
    const int64_t bad = first_invalid(ids, offsets[num_bags], table.num_rows);
    if (bad >= 0) return bad;
  }
  int64_t first_bad = -1;
  const ZeroRow zeros(table, on_invalid);
  const Rows<R> rows{table, zeros.view(), &first_bad, num_invalid};
  const T* weights = static_cast<const T*>(weights_ptr);
  T* out = static_cast<T*>(out_ptr);
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

template <class R, class I>
int64_t bags_block(const TableView& table, const I* ids, const int64_t* offsets, int64_t bag_begin, int64_t bag_end,
                   const void* weights_ptr, PoolMode mode, void* out_ptr, int64_t out_stride) {
  typedef OutOf<R> T;
  int64_t first_bad = -1;
  const TableView no_zero_row{table.format, nullptr, nullptr, 0, table.dim};
  const Rows<R> rows{table, no_zero_row, &first_bad, nullptr};
  const T* weights = static_cast<const T*>(weights_ptr);
  T* out = static_cast<T*>(out_ptr);
  const int64_t dim = table.dim;
  const auto run = [&](auto mean, auto weighted) {
    constexpr PoolMode M = decltype(mean)::value ? PoolMode::mean : PoolMode::sum;
    constexpr bool W = decltype(weighted)::value;
    EMBTAB_DISPATCH_DIM(dim, bags_range<D, M, W, false>(rows, ids, offsets, bag_begin, bag_end, weights, out, nullptr,
                                                        false, out_stride));
  };
  using yes = std::true_type;
  using no = std::false_type;
  if (mode == PoolMode::mean)
    weights ? run(yes{}, yes{}) : run(yes{}, no{});
  else
    weights ? run(no{}, yes{}) : run(no{}, no{});
  return first_bad;
}

template <class R, class I>
constexpr LookupFns<I> fns() {
  return LookupFns<I>{&gather<R, I>, &bags<R, I>, &bags_block<R, I>};
}
// Indexed by RowFormat: f32, f64, f16, bf16, i8.
template <class I>
constexpr LookupFns<I> kFormats[kRowFormats] = {fns<PlainRow<float>, I>(), fns<PlainRow<double>, I>(),
                                                fns<F16Row, I>(), fns<BF16Row, I>(), fns<I8Row, I>()};

}  // namespace

const LookupKernels& lookup_kernels() {
  static const LookupKernels table{
      {kFormats<std::int32_t>[0], kFormats<std::int32_t>[1], kFormats<std::int32_t>[2], kFormats<std::int32_t>[3],
       kFormats<std::int32_t>[4]},
      {kFormats<std::int64_t>[0], kFormats<std::int64_t>[1], kFormats<std::int64_t>[2], kFormats<std::int64_t>[3],
       kFormats<std::int64_t>[4]}};
  return table;
}

}  // namespace EMBTAB_ISA_NS
}  // namespace embtab
