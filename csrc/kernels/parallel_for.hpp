// parallel_for over the thread pool of parallel.hpp. Included INSIDE a namespace: embtab (by
// parallel.hpp, for baseline code) or a per-path namespace (by isa_common.hpp), so that each
// instruction set compiles its own copy, which the linker can never merge with another's.

// The half-open range [begin, end) of chunk c when n items are split into num_chunks parts.
inline void chunk_range(std::size_t n, std::size_t c, std::size_t num_chunks, std::size_t& begin,
                        std::size_t& end) {
  const std::size_t base = n / num_chunks, extra = n % num_chunks;
  begin = c * base + (c < extra ? c : extra);
  end = begin + base + (c < extra ? 1 : 0);
}

namespace detail {
template <class F>
struct RangeJob {
  std::size_t n;
  F* f;
};
template <class F>
void call_range(void* ctx, std::size_t chunk, std::size_t num_chunks) {
  auto& job = *static_cast<RangeJob<F>*>(ctx);
  std::size_t begin, end;
  chunk_range(job.n, chunk, num_chunks, begin, end);
  if (begin < end) (*job.f)(begin, end);
}
}  // namespace detail

// parallel_for(n, grain, f): calls f(begin, end) over contiguous ranges covering [0, n), using at
// most one thread per `grain` items.
template <class F>
void parallel_for(std::size_t n, std::size_t grain, F& f) {
  if (n == 0) return;
  if (grain == 0) grain = 1;
  detail::RangeJob<F> job{n, &f};
  const std::size_t max_chunks = (n + grain - 1) / grain;
  run_chunks(max_chunks, &detail::call_range<F>, &job);
}
template <class F>
void parallel_for(std::size_t n, std::size_t grain, F&& f) {
  parallel_for(n, grain, f);
}
