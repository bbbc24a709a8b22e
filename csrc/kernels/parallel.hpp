// One thread pool for every kernel. Pure C++; no Python.
//
// Work is split into contiguous, statically assigned chunks, so each output element is always
// computed by exactly one thread in one fixed order: results do not depend on the thread count.
//
// The interface takes a plain function pointer plus a context pointer (not std::function) so
// that kernels compiled with -mavx2/-mavx512f never instantiate shared inline library code that
// the linker could then hand to the baseline path.
#pragma once

#include <cstddef>
#include <cstdint>

namespace embtab {

// The most threads a pool may have (set_num_threads refuses more).
constexpr int kMaxThreads = 1024;

// Number of worker threads used by kernels (>= 1).
int get_num_threads();
// Sets it (at most kMaxThreads); n <= 0 restores the default (the CPUs available to this process).
// Throws std::system_error when the threads cannot be started: the pool then keeps its previous
// threads and size.
void set_num_threads(int n);
// The default thread count: CPUs in this process's affinity mask (at most kMaxThreads).
int default_num_threads();

// How long an idle thread of the pool (or a caller waiting for the last chunk) spins, yielding its
// CPU to any other runnable thread between checks, before it blocks (clamped to 0 to
// kMaxSpinMicroseconds; 0: block at once).
constexpr int kMaxSpinMicroseconds = 1000000;
void set_spin_microseconds(int us);
int get_spin_microseconds();

using ChunkFn = void (*)(void* ctx, std::size_t chunk, std::size_t num_chunks);

// Runs fn(ctx, c, n) for c in [0, n) where n = min(max_chunks, get_num_threads()) and returns when
// all are done; an exception thrown by a chunk is rethrown here. The caller and up to n - 1 workers
// each take the next chunk nobody has taken yet, so a worker that is slow to start (its CPU busy
// with another process, or torch's threads) delays nothing: the caller runs its chunks instead.
// If the pool is busy (another Python thread is inside a kernel) or this is a nested call, all
// chunks run on the calling thread. The chunks are the same either way, so are the results.
void run_chunks(std::size_t max_chunks, ChunkFn fn, void* ctx);

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
// most one thread per `grain` items. F is a lambda local to the caller, so every instantiation is
// unique to its translation unit (and instruction set).
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

}  // namespace embtab
