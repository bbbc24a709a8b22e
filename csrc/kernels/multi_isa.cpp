// Multi-table pooled lookups, compiled once per instruction set (see CMakeLists.txt).
#include <cstddef>
#include <cstdint>

#include "kernels/lookup.hpp"
#include "kernels/multi.hpp"
#include "kernels/parallel.hpp"

namespace embtab {
namespace EMBTAB_ISA_NS {

#include "kernels/isa_common.hpp"

namespace {

using std::int64_t;

// Bags [b0, b1) of the whole batch (all features' bags in order) on the calling thread: the part
// of each feature in that range goes to the single-table per-bag code.
template <class T, class I>
int64_t multi_range(const MultiBags<T>& m, const I* ids, int64_t b0, int64_t b1) {
  const LookupFns<T, I>& lookup = lookup_kernels().get<T, I>();
  int64_t first_bad = -1;
  for (int64_t f = b0 / m.batch; f < m.num_features && f * m.batch < b1; ++f) {
    const int64_t start = f * m.batch;
    const int64_t lo = max_of(b0, start) - start, hi = min_of(b1, start + m.batch) - start;
    const int64_t t = m.feature_table[f];
    const int64_t bad = lookup.bags_block(m.tables[t], m.num_rows[t], m.dims[t], ids, m.offsets + start, lo, hi,
                                          m.weights, m.modes[f], m.out + m.out_col[f], m.out_stride);
    if (bad >= 0) atomic_min(&first_bad, bad);
  }
  return first_bad;
}

template <class T, class I>
int64_t bags_multi(const MultiBags<T>& m, const I* ids) {
  const int64_t num_bags = m.num_features * m.batch;
  if (num_bags <= 0) return -1;
  // Split the bags between threads by (ids read + bags written), as single-table lookups do.
  const int64_t work = (m.offsets[num_bags] + num_bags) * max_of<int64_t>(m.out_stride / max_of<int64_t>(m.num_features, 1), 1);
  const int64_t chunks = min_of<int64_t>(get_num_threads(), max_of<int64_t>(1, work / 65536));
  int64_t first_bad = -1;
  parallel_for(static_cast<std::size_t>(chunks), 1, [&](std::size_t c0, std::size_t c1) {
    for (std::size_t c = c0; c < c1; ++c) {
      const int64_t b0 = bag_chunk_begin(m.offsets, num_bags, int64_t(c), chunks);
      const int64_t b1 = bag_chunk_begin(m.offsets, num_bags, int64_t(c) + 1, chunks);
      if (b0 >= b1) continue;
      const int64_t bad = multi_range(m, ids, b0, b1);
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
