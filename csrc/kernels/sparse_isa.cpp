// Sparse gradient and optimizer kernels, compiled once per instruction set (see CMakeLists.txt).
#include <cstddef>
#include <cstdint>

#include "kernels/parallel.hpp"
#include "kernels/sparse.hpp"

namespace embtab {
namespace EMBTAB_ISA_NS {

#include "kernels/isa_common.hpp"

namespace {

using std::int64_t;
using std::size_t;
using std::uint64_t;

// Per-chunk results live in fixed arrays of this size; chunks never exceed it.
constexpr int64_t kMaxChunks = 256;

// One chunk per thread, each with at least `per_chunk` units of work.
EMBTAB_INLINE int64_t num_chunks(int64_t work, int64_t per_chunk) {
  const int64_t threads = min_of<int64_t>(get_num_threads(), kMaxChunks);
  return max_of<int64_t>(1, min_of<int64_t>(threads, work / per_chunk));
}

// Runs f(c) for every chunk c in [0, chunks), one per thread.
template <class F>
void for_chunks(int64_t chunks, F&& f) {
  if (chunks <= 1) {
    f(int64_t(0));
    return;
  }
  parallel_for(static_cast<size_t>(chunks), 1, [&](size_t c0, size_t c1) {
    for (size_t c = c0; c < c1; ++c) f(static_cast<int64_t>(c));
  });
}

// [begin, end) of chunk c when n items are split into `chunks` equal parts.
EMBTAB_INLINE void split(int64_t n, int64_t c, int64_t chunks, int64_t& begin, int64_t& end) {
  const int64_t base = n / chunks, extra = n % chunks;
  begin = c * base + min_of(c, extra);
  end = begin + base + (c < extra ? 1 : 0);
}

// Owning array (operator new[]; no standard-library templates in ISA code).
template <class T>
struct Scratch {
  T* p;
  explicit Scratch(int64_t n) : p(new T[static_cast<size_t>(max_of<int64_t>(n, 1))]) {}
  ~Scratch() { delete[] p; }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

EMBTAB_INLINE void prefetch_row_write(const void* row, int64_t bytes) {
  const char* p = static_cast<const char*>(row);
  for (int64_t off = 0; off < bytes; off += kCacheLine) __builtin_prefetch(p + off, 1, 3);
}

EMBTAB_INLINE float sqrt_of(float x) { return __builtin_sqrtf(x); }
EMBTAB_INLINE double sqrt_of(double x) { return __builtin_sqrt(x); }

// One concern per file, each compiled here, inside this path's namespace:
#include "kernels/sparse_plan.hpp"     // ids read once and checked; the sort plan
#include "kernels/sparse_sources.hpp"  // where each position's gradient comes from
#include "kernels/sparse_updates.hpp"  // the optimizers' row updates
#include "kernels/sparse_reduce.hpp"   // gradients summed per row, then updated
#include "kernels/sparse_scatter.hpp"  // scatter_add

template <class I>
constexpr SparseIndexFns<I> index_fns() {
  return SparseIndexFns<I>{&plan<I>, &global_ids<I>};
}
template <class T, class I>
constexpr ScatterFns<T, I> scatter_fns() {
  return ScatterFns<T, I>{&scatter_add<T, I>};
}
template <class T>
constexpr SparseFns<T> value_fns() {
  return SparseFns<T>{&reduce<T>, &reduce_multi<T>};
}

const SparseKernels kTable{index_fns<std::int32_t>(),
                           index_fns<std::int64_t>(),
                           scatter_fns<float, std::int32_t>(),
                           scatter_fns<float, std::int64_t>(),
                           scatter_fns<double, std::int32_t>(),
                           scatter_fns<double, std::int64_t>(),
                           value_fns<float>(),
                           value_fns<double>(),
                           &bag_of};

}  // namespace

const SparseKernels& sparse_kernels() { return kTable; }

}  // namespace EMBTAB_ISA_NS
}  // namespace embtab
