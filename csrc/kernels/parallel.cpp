#include "kernels/parallel.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <system_error>
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

// Waiting threads spin this long by default before they block: waking a blocked thread costs tens
// of microseconds (about 46 us a parallel region on a 2-vCPU VM), which a kernel made of several
// regions (sort passes, then the update) paid each time. 200 us of spinning after a call is the
// most CPU an idle pool burns, and the spin yields the CPU whenever another thread wants it.
std::atomic<int> g_spin_us{200};

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Spins until done() or the spin time has passed (not at all unless `spin`); true if done() held.
// Between short bursts of polling it yields: on an idle machine sched_yield returns at once, on a
// busy one (torch's OpenMP threads, other processes) the thread that needs this CPU gets it.
template <class Done>
bool spin_until(bool spin, Done done) {
  const int us = g_spin_us.load(std::memory_order_relaxed);
  if (!spin || us <= 0) return done();
  const auto limit = std::chrono::microseconds(us);
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (done()) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() - start > limit) return done();
    std::this_thread::yield();
  }
}

class ThreadPool {
 public:
  ~ThreadPool() {
    std::lock_guard<std::mutex> busy(run_mutex_);
    retire(0);
  }

  int size() const { return num_threads_.load(); }

  // n threads: the caller's and n - 1 workers. Only the difference is started or stopped, and a
  // failure to start one (std::system_error) stops the ones just started: the pool is unchanged.
  void resize(int n) {
    std::lock_guard<std::mutex> busy(run_mutex_);  // no job runs meanwhile
    const std::size_t have = workers_.size(), want = static_cast<std::size_t>(n - 1);
    if (want < have) {
      retire(want);
    } else if (want > have) {
      keep_.store(want, std::memory_order_release);
      try {
        const std::uint64_t current = job_.load() >> kChunkBits;
        for (std::size_t i = have; i < want; ++i)
          workers_.emplace_back(&ThreadPool::worker, this, i + 1, current);
      } catch (...) {
        retire(have);
        throw;
      }
    }
    num_threads_.store(n);
    // More threads than CPUs: a spinning thread would hold a CPU that a working one needs.
    spin_.store(n <= default_num_threads(), std::memory_order_relaxed);
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
    std::uint64_t generation;
    {
      // The job is published under the mutex, so a worker that blocks sees it or is woken for it.
      std::lock_guard<std::mutex> lock(mutex_);
      job_fn_ = fn;
      job_ctx_ = ctx;
      errors_.assign(chunks, nullptr);
      pending_.store(chunks, std::memory_order_relaxed);
      generation = (job_.load(std::memory_order_relaxed) >> kChunkBits) + 1;
      claim_.store(generation << kChunkBits, std::memory_order_release);
      job_.store(generation << kChunkBits | chunks, std::memory_order_release);
    }
    wake_.notify_all();
    run_claimed(generation, chunks);
    const auto done = [&] { return pending_.load(std::memory_order_acquire) == 0; };
    if (!spin_until(spin_.load(std::memory_order_relaxed), done)) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, done);
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

  // Takes chunks of job `generation` (of `chunks` chunks) until none is left. A chunk is taken by
  // advancing claim_ from (generation, c) to (generation, c + 1): a thread that comes late, when the
  // caller has already published the next job, sees another generation and takes nothing. Once a
  // chunk is taken its job cannot end before the chunk does, so the job's fields stay valid.
  void run_claimed(std::uint64_t generation, std::size_t chunks) {
    for (;;) {
      std::uint64_t claim = claim_.load(std::memory_order_acquire);
      std::size_t chunk;
      do {
        chunk = static_cast<std::size_t>(claim & kChunkMask);
        if ((claim >> kChunkBits) != generation || chunk >= chunks) return;
      } while (!claim_.compare_exchange_weak(claim, claim + 1, std::memory_order_acq_rel, std::memory_order_acquire));
      tls_inside_kernel = true;
      try {
        job_fn_(job_ctx_, chunk, chunks);
      } catch (...) {
        errors_[chunk] = std::current_exception();
      }
      tls_inside_kernel = false;
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        // The caller may have stopped spinning: wake it (under the mutex, so it cannot miss this).
        std::lock_guard<std::mutex> lock(mutex_);
        done_.notify_one();
      }
    }
  }

  // `seen` starts at the generation current when the worker was created, so a new worker never
  // runs a job that finished before it existed. Worker `index` (1-based) exits once index > keep_.
  // A worker that takes no part in a job (index >= its chunks) never reads the job's other fields,
  // which the caller may already be rewriting for the next one.
  void worker(std::size_t index, std::uint64_t seen) {
    for (;;) {
      std::uint64_t job = 0;
      const auto news = [&] {
        job = job_.load(std::memory_order_acquire);
        return index > keep_.load(std::memory_order_acquire) || (job >> kChunkBits) != seen;
      };
      if (!spin_until(spin_.load(std::memory_order_relaxed), news)) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, news);
      }
      if (index > keep_.load(std::memory_order_acquire)) return;
      seen = job >> kChunkBits;
      const std::size_t chunks = static_cast<std::size_t>(job & kChunkMask);
      if (index < chunks) run_claimed(seen, chunks);
    }
  }

  // Stops the workers after the first `keep` (run_mutex_ held: no job runs).
  void retire(std::size_t keep) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      keep_.store(keep, std::memory_order_release);
    }
    wake_.notify_all();
    for (std::size_t i = keep; i < workers_.size(); ++i) workers_[i].join();
    workers_.resize(std::min(keep, workers_.size()));
  }

  std::mutex run_mutex_;  // one parallel region at a time
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  std::atomic<int> num_threads_{1};
  std::atomic<std::size_t> keep_{0};
  std::atomic<bool> spin_{false};
  // The current job: its generation (counting jobs) above kChunkBits, its number of chunks below.
  static constexpr int kChunkBits = 16;
  static constexpr std::uint64_t kChunkMask = (std::uint64_t(1) << kChunkBits) - 1;
  static constexpr std::size_t kMaxChunksPerJob = kChunkMask;
  std::atomic<std::uint64_t> job_{0};
  // The next chunk to take: the job's generation above kChunkBits, the chunk's index below.
  std::atomic<std::uint64_t> claim_{0};
  // Written by the caller before job_ and claim_ are released; read by whoever takes a chunk.
  ChunkFn job_fn_ = nullptr;
  void* job_ctx_ = nullptr;
  std::atomic<std::size_t> pending_{0};  // chunks not finished yet
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
    try {
      p->resize(g_requested_threads > 0 ? g_requested_threads : default_num_threads());
    } catch (const std::system_error&) {
      // No threads to be had (a process or memory limit): kernels run on the caller's thread, with
      // the same results, rather than fail.
    }
    g_pool.store(p);
  }
  return *p;
}

}  // namespace

int default_num_threads() {
  int n = 0;
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) n = CPU_COUNT(&set);
#endif
  if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
  return std::max(1, std::min(n, kMaxThreads));
}

int get_num_threads() { return pool().size(); }

void set_num_threads(int n) {
  n = std::min(n, kMaxThreads);
  const int target = n > 0 ? n : default_num_threads();
  if (target != pool().size()) pool().resize(target);  // throws with the pool unchanged
  g_requested_threads = n > 0 ? n : 0;
}

void set_spin_microseconds(int us) {
  g_spin_us.store(std::max(0, std::min(us, kMaxSpinMicroseconds)), std::memory_order_relaxed);
}

int get_spin_microseconds() { return g_spin_us.load(std::memory_order_relaxed); }

void run_chunks(std::size_t max_chunks, ChunkFn fn, void* ctx) { pool().run(max_chunks, fn, ctx); }

}  // namespace embtab
