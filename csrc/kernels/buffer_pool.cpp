#include "kernels/buffer_pool.hpp"

#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__unix__)
#include <pthread.h>
#endif

namespace embtab {
namespace {

constexpr std::size_t kHugePage = std::size_t(2) << 20;

struct Pool {
  std::mutex mutex;
  std::multimap<std::size_t, void*> free_blocks;  // capacity -> block
  std::size_t cached = 0;
  std::size_t limit = kDefaultCachedBytes;
};

Pool* g_pool = new Pool();  // leaked: blocks may be released during interpreter shutdown

#if defined(__unix__)
// After fork() the child must not wait on a mutex held by a thread that no longer exists; it
// starts with an empty pool (the parent's cached blocks are simply not reused).
void reset_after_fork() {
  const std::size_t limit = g_pool->limit;  // a setting, not a block: the child keeps it
  g_pool = new Pool();
  g_pool->limit = limit;
}
const bool g_registered = (pthread_atfork(nullptr, nullptr, &reset_after_fork), true);
#endif

std::size_t round_capacity(std::size_t bytes) {
  // Large blocks in whole huge pages; this also lets a block serve slightly smaller requests.
  const std::size_t unit = bytes >= kHugePage ? kHugePage : std::size_t(64) << 10;
  return (bytes + unit - 1) / unit * unit;
}

void* allocate(std::size_t capacity) {
  const std::size_t alignment = capacity >= kHugePage ? kHugePage : 64;
  void* block = std::aligned_alloc(alignment, capacity);
  if (!block) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (alignment == kHugePage) madvise(block, capacity, MADV_HUGEPAGE);
#endif
  return block;
}

}  // namespace

void* pool_acquire(std::size_t bytes, std::size_t* capacity) {
  const std::size_t want = round_capacity(bytes > 0 ? bytes : 1);
  {
    std::lock_guard<std::mutex> lock(g_pool->mutex);
    // The smallest cached block that fits, if it is not much larger than asked for.
    auto it = g_pool->free_blocks.lower_bound(want);
    if (it != g_pool->free_blocks.end() && it->first <= want + want / 4) {
      void* block = it->second;
      *capacity = it->first;
      g_pool->cached -= it->first;
      g_pool->free_blocks.erase(it);
      return block;
    }
  }
  *capacity = want;
  return allocate(want);
}

void pool_release(void* block, std::size_t capacity) noexcept {
  if (!block) return;
  {
    std::lock_guard<std::mutex> lock(g_pool->mutex);
    if (capacity >= kMinPooledBytes && g_pool->cached + capacity <= g_pool->limit) {
      g_pool->free_blocks.emplace(capacity, block);
      g_pool->cached += capacity;
      return;
    }
  }
  std::free(block);
}

std::size_t pool_clear() noexcept {
  std::multimap<std::size_t, void*> blocks;
  std::size_t freed;
  {
    std::lock_guard<std::mutex> lock(g_pool->mutex);
    blocks.swap(g_pool->free_blocks);
    freed = g_pool->cached;
    g_pool->cached = 0;
  }
  for (auto& entry : blocks) std::free(entry.second);
  return freed;
}

std::size_t pool_cached_bytes() noexcept {
  std::lock_guard<std::mutex> lock(g_pool->mutex);
  return g_pool->cached;
}

void pool_set_limit(std::size_t bytes) noexcept {
  std::lock_guard<std::mutex> lock(g_pool->mutex);
  g_pool->limit = bytes;
  // The largest blocks go first: the fewest blocks freed for the bytes that must go.
  while (g_pool->cached > bytes) {
    auto largest = std::prev(g_pool->free_blocks.end());
    g_pool->cached -= largest->first;
    std::free(largest->second);
    g_pool->free_blocks.erase(largest);
  }
}

std::size_t pool_limit() noexcept {
  std::lock_guard<std::mutex> lock(g_pool->mutex);
  return g_pool->limit;
}

}  // namespace embtab
