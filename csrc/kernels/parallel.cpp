#include "kernels/parallel.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include <new>

#if defined(__linux__)
#include <sched.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#if defined(__unix__)
#include <pthread.h>
#endif

namespace embtab {
namespace {

thread_local bool tls_inside_kernel = false;

// Waiting threads spin this long before they block: waking a blocked thread costs tens of
// microseconds (about 46 us a parallel region on a 2-vCPU VM), which a kernel made of several
// regions (sort passes, then the update) paid each time. 200 us of spinning after a call is the
// most CPU an idle pool burns.
constexpr auto kSpin = std::chrono::microseconds(200);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Spins until done() or kSpin has passed (not at all unless `spin`); true if done() held.
template <class Done>
bool spin_until(bool spin, Done done) {
  if (!spin) return done();
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (done()) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() - start > kSpin) return done();
  }
}

class ThreadPool {
 public:
  ~ThreadPool() { stop_workers(); }

  int size() const { return num_threads_.load(); }

  void resize(int n) {
    std::lock_guard<std::mutex> busy(run_mutex_);
    stop_workers();
    num_threads_.store(n);
    // More threads than CPUs: a spinning thread would hold a CPU that a working one needs.
    spin_ = n <= default_num_threads();
    start_workers(n - 1);
  }

  void run(std::size_t max_chunks, ChunkFn fn, void* ctx) {
    if (max_chunks == 0) return;
    std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
    const std::size_t chunks = std::min<std::size_t>({max_chunks, static_cast<std::size_t>(num_threads_.load()),
                                                      kMaxChunksPerJob});
    if (chunks <= 1 || !busy.owns_lock() || tls_inside_kernel) {
      run_inline(chunks == 0 ? 1 : chunks, fn, ctx);
      return;
    }
    {
      // The job is published under the mutex, so a worker that blocks sees it or is woken for it.
      std::lock_guard<std::mutex> lock(mutex_);
      job_fn_ = fn;
      job_ctx_ = ctx;
      errors_.assign(chunks, nullptr);
      pending_.store(chunks - 1, std::memory_order_relaxed);  // chunk 0 runs on the calling thread
      const std::uint64_t generation = (job_.load(std::memory_order_relaxed) >> kChunkBits) + 1;
      job_.store(generation << kChunkBits | chunks, std::memory_order_release);
    }
    wake_.notify_all();
    run_one(0);
    if (!spin_until(spin_, [&] { return pending_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [&] { return pending_.load(std::memory_order_acquire) == 0; });
    }
    for (auto& e : errors_)
      if (e) std::rethrow_exception(e);
  }

 private:
  void run_inline(std::size_t chunks, ChunkFn fn, void* ctx) {
    const bool was_inside = tls_inside_kernel;
    tls_inside_kernel = true;
    try {
      for (std::size_t c = 0; c < chunks; ++c) fn(ctx, c, chunks);
    } catch (...) {
      tls_inside_kernel = was_inside;
      throw;
    }
    tls_inside_kernel = was_inside;
  }

  void run_one(std::size_t chunk) {
    tls_inside_kernel = true;
    try {
      job_fn_(job_ctx_, chunk, job_.load(std::memory_order_relaxed) & kChunkMask);
    } catch (...) {
      errors_[chunk] = std::current_exception();
    }
    tls_inside_kernel = false;
  }

  // `seen` starts at the generation current when the worker was created, so a new worker never
  // runs a job that finished before it existed.
  // A worker that takes no part in a job (index >= its chunks) never reads the job's other fields,
  // which the caller may already be rewriting for the next one.
  void worker(std::size_t index, std::uint64_t seen) {
    for (;;) {
      std::uint64_t job = 0;
      const auto news = [&] {
        job = job_.load(std::memory_order_acquire);
        return stopping_.load(std::memory_order_acquire) || (job >> kChunkBits) != seen;
      };
      if (!spin_until(spin_, news)) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, news);
      }
      if (stopping_.load(std::memory_order_acquire)) return;
      seen = job >> kChunkBits;
      if (index >= (job & kChunkMask)) continue;
      run_one(index);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        // The caller may have stopped spinning: wake it (under the mutex, so it cannot miss this).
        std::lock_guard<std::mutex> lock(mutex_);
        done_.notify_one();
      }
    }
  }

  void start_workers(int count) {
    stopping_.store(false);
    const std::uint64_t current = job_.load() >> kChunkBits;
    for (int i = 0; i < count; ++i)
      workers_.emplace_back(&ThreadPool::worker, this, static_cast<std::size_t>(i + 1), current);
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_.store(true, std::memory_order_release);
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::mutex run_mutex_;  // one parallel region at a time
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  std::atomic<int> num_threads_{1};
  std::atomic<bool> stopping_{false};
  bool spin_ = false;  // set while no worker runs
  // The current job: its generation (counting jobs) above kChunkBits, its number of chunks below.
  static constexpr int kChunkBits = 16;
  static constexpr std::uint64_t kChunkMask = (std::uint64_t(1) << kChunkBits) - 1;
  static constexpr std::size_t kMaxChunksPerJob = kChunkMask;
  std::atomic<std::uint64_t> job_{0};
  // Written by the caller before job_ is released; read by the job's workers after acquiring it.
  ChunkFn job_fn_ = nullptr;
  void* job_ctx_ = nullptr;
  std::atomic<std::size_t> pending_{0};
  std::vector<std::exception_ptr> errors_;
};

// Leaked on purpose: joining threads during interpreter shutdown can deadlock. After fork() the
// child has none of the parent's workers, so it drops the pool (leaking it, its mutexes may be held)
// and builds a new one on first use.
std::atomic<ThreadPool*> g_pool{nullptr};
std::mutex g_pool_create;
int g_requested_threads = 0;

void forget_pool_after_fork() { g_pool.store(nullptr); new (&g_pool_create) std::mutex(); }

ThreadPool& pool() {
  ThreadPool* p = g_pool.load();
  if (p) return *p;
  std::lock_guard<std::mutex> lock(g_pool_create);
  p = g_pool.load();
  if (!p) {
#if defined(__unix__)
    static const bool registered = (pthread_atfork(nullptr, nullptr, &forget_pool_after_fork), true);
    (void)registered;
#endif
    p = new ThreadPool();
    p->resize(g_requested_threads > 0 ? g_requested_threads : default_num_threads());
    g_pool.store(p);
  }
  return *p;
}

}  // namespace

int default_num_threads() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

int get_num_threads() { return pool().size(); }

void set_num_threads(int n) {
  g_requested_threads = n > 0 ? n : 0;
  if (n <= 0) n = default_num_threads();
  if (n == pool().size()) return;
  pool().resize(n);
}

void run_chunks(std::size_t max_chunks, ChunkFn fn, void* ctx) { pool().run(max_chunks, fn, ctx); }

}  // namespace embtab
