#include "kernels/parallel.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include <new>

#if defined(__linux__)
#include <sched.h>
#endif
#if defined(__unix__)
#include <pthread.h>
#endif

namespace embtab {
namespace {

thread_local bool tls_inside_kernel = false;

class ThreadPool {
 public:
  ~ThreadPool() { stop_workers(); }

  int size() const { return num_threads_.load(); }

  void resize(int n) {
    std::lock_guard<std::mutex> busy(run_mutex_);
    stop_workers();
    num_threads_.store(n);
    start_workers(n - 1);
  }

  void run(std::size_t max_chunks, ChunkFn fn, void* ctx) {
    if (max_chunks == 0) return;
    std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
    const std::size_t chunks = std::min<std::size_t>(max_chunks, static_cast<std::size_t>(num_threads_.load()));
    if (chunks <= 1 || !busy.owns_lock() || tls_inside_kernel) {
      run_inline(chunks == 0 ? 1 : chunks, fn, ctx);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_fn_ = fn;
      job_ctx_ = ctx;
      job_chunks_ = chunks;
      pending_ = chunks - 1;  // chunk 0 runs on the calling thread
      errors_.assign(chunks, nullptr);
      ++generation_;
    }
    wake_.notify_all();
    run_one(0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return pending_ == 0; });
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
      job_fn_(job_ctx_, chunk, job_chunks_);
    } catch (...) {
      errors_[chunk] = std::current_exception();
    }
    tls_inside_kernel = false;
  }

  // `seen` starts at the generation current when the worker was created, so a new worker never
  // runs a job that finished before it existed.
  void worker(std::size_t index, std::uint64_t seen) {
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
        if (index >= job_chunks_) continue;
      }
      run_one(index);
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) done_.notify_one();
    }
  }

  void start_workers(int count) {
    std::uint64_t current;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = false;
      current = generation_;
    }
    for (int i = 0; i < count; ++i)
      workers_.emplace_back(&ThreadPool::worker, this, static_cast<std::size_t>(i + 1), current);
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
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
  bool stopping_ = false;
  std::uint64_t generation_ = 0;
  ChunkFn job_fn_ = nullptr;
  void* job_ctx_ = nullptr;
  std::size_t job_chunks_ = 0;
  std::size_t pending_ = 0;
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
