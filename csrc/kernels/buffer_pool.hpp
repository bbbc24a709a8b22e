// Reuse of large output buffers. Pure C++; no Python.
//
// A fresh multi-megabyte allocation comes from the kernel as zeroed pages: for a lookup that writes
// 100 MB, zeroing and faulting those pages costs about as much as the lookup itself. Outputs of at
// least kMinPooledBytes are therefore carved from blocks that are kept when their array is freed
// and handed out again (without zeroing: every byte of an output is written). At most
// pool_limit() bytes (kDefaultCachedBytes unless set) stay cached; blocks are 64-byte aligned and,
// where the OS supports it, backed by transparent huge pages.
#pragma once

#include <cstddef>

namespace embtab {

constexpr std::size_t kMinPooledBytes = std::size_t(1) << 20;
constexpr std::size_t kDefaultCachedBytes = std::size_t(512) << 20;

// A block of at least `bytes` bytes, 64-byte aligned; *capacity receives its real size. Throws
// std::bad_alloc when memory is exhausted.
void* pool_acquire(std::size_t bytes, std::size_t* capacity);
// Gives a block from pool_acquire back (cached or freed).
void pool_release(void* block, std::size_t capacity) noexcept;
// Frees every cached block; returns the bytes freed.
std::size_t pool_clear() noexcept;
// Bytes held in the cache now.
std::size_t pool_cached_bytes() noexcept;
// The most bytes the cache keeps (0: nothing is cached, every block is freed on release). Lowering
// it frees cached blocks until the cache fits.
void pool_set_limit(std::size_t bytes) noexcept;
std::size_t pool_limit() noexcept;

// Scratch memory from the pool, released when it goes out of scope.
template <class T>
class PooledArray {
 public:
  PooledArray() = default;
  explicit PooledArray(std::size_t n) { reset(n); }
  ~PooledArray() { pool_release(data_, capacity_); }
  PooledArray(const PooledArray&) = delete;
  PooledArray& operator=(const PooledArray&) = delete;
  PooledArray(PooledArray&& other) noexcept : data_(other.data_), capacity_(other.capacity_) {
    other.data_ = nullptr;
    other.capacity_ = 0;
  }

  // Drops the old block and holds one of at least n elements (uninitialized).
  void reset(std::size_t n) {
    pool_release(data_, capacity_);
    data_ = nullptr;
    capacity_ = 0;
    data_ = static_cast<T*>(pool_acquire(n * sizeof(T), &capacity_));
  }
  T* get() const { return data_; }

 private:
  T* data_ = nullptr;
  std::size_t capacity_ = 0;
};

}  // namespace embtab
