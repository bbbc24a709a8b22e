// Multi-table pooled lookups, compiled once per instruction set (see CMakeLists.txt).
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "kernels/lookup.hpp"
#include "kernels/multi.hpp"
#include "kernels/parallel.hpp"

namespace embtab {
namespace EMBTAB_ISA_NS {

#include "kernels/isa_common.hpp"

// This path's own lookup kernels (lookup_isa.cpp compiled for the same instruction set). Without this
// declaration the name would find embtab::lookup_kernels(), which in a per-path file knows only the
// scalar path.
const LookupKernels& lookup_kernels();

namespace {

using std::int64_t;

// The row format of T's tables, and this path's lookup kernels for it with ids of type I.
template <class T>
constexpr RowFormat plain_format() {
  return std::is_same<T, double>::value ? RowFormat::f64 : RowFormat::f32;
}
template <class T, class I>
const LookupFns<I>& plain_lookup() {
  const int format = static_cast<int>(plain_format<T>());
  if constexpr (std::is_same<I, std::int32_t>::value)
    return lookup_kernels().i32[format];
  else
    return lookup_kernels().i64[format];
}

// Samples [s0, s1) on the calling thread, in tiles of `tile` samples: each feature's bags of a tile
// go to the single-table per-bag code, so that a tile's output rows (every feature's columns)
// stay in cache while the features fill them, and each call pools `tile` bags.
template <class T, class I>
int64_t multi_range(const MultiBags<T>& m, const I* ids, int64_t s0, int64_t s1, int64_t tile) {
  const LookupFns<I>& lookup = plain_lookup<T, I>();
  int64_t first_bad = -1;
  for (int64_t t0 = s0; t0 < s1; t0 += tile) {
    const int64_t t1 = min_of(s1, t0 + tile);
    for (int64_t f = 0; f < m.num_features; ++f) {
      const int64_t t = m.feature_table[f];
      const TableView table{plain_format<T>(), m.tables[t], nullptr, m.num_rows[t], m.dims[t]};
      const int64_t bad = lookup.bags_block(table, ids, m.offsets + f * m.batch, t0, t1, m.weights, m.modes[f],
                                            m.out + m.out_col[f], m.out_stride);
      if (bad >= 0) atomic_min(&first_bad, bad);  // each call stops at its first: the minimum is the first
    }
  }
  return first_bad;
}

template <class T, class I>
int64_t bags_multi(const MultiBags<T>& m, const I* ids) {
  const int64_t num_bags = m.num_features * m.batch;
  if (num_bags <= 0) return -1;
  // Threads take equal ranges of samples (each sample has a bag of every feature); one per 64 KiB
  // of rows read and written, as single-table lookups.
  const int64_t mean_dim = max_of<int64_t>(m.out_stride / max_of<int64_t>(m.num_features, 1), 1);
  const int64_t work = (m.offsets[num_bags] + num_bags) * mean_dim;
  const int64_t chunks = min_of<int64_t>(min_of<int64_t>(get_num_threads(), m.batch), max_of<int64_t>(1, work / 65536));
  const int64_t tile = max_of<int64_t>(1, int64_t(32768) / max_of<int64_t>(1, m.out_stride * int64_t(sizeof(T))));
  int64_t first_bad = -1;
  parallel_for(static_cast<std::size_t>(chunks), 1, [&](std::size_t c0, std::size_t c1) {
    for (std::size_t c = c0; c < c1; ++c) {
      const int64_t s0 = m.batch * int64_t(c) / chunks, s1 = m.batch * (int64_t(c) + 1) / chunks;
      const int64_t bad = multi_range(m, ids, s0, s1, tile);
      if (bad >= 0) atomic_min(&first_bad, bad);
    }
  });
  return first_bad;
}

template <class T, class I>
constexpr MultiFns<T, I> fns() {
  return MultiFns<T, I>{&bags_multi<T, I>};
}

const MultiKernels kTable{fns<float, std::int32_t>(), fns<float, std::int64_t>(), fns<double, std::int32_t>(),
                          fns<double, std::int64_t>()};

}  // namespace

const MultiKernels& multi_kernels() { return kTable; }

}  // namespace EMBTAB_ISA_NS
}  // namespace embtab
