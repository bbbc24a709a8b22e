// Reuse of large output buffers. Pure C++; no Python.
//
// A fresh multi-megabyte allocation comes from the kernel as zeroed pages: for a lookup that writes
// 100 MB, zeroing and faulting those pages costs about as much as the lookup itself. Outputs of at
// least kMinPooledBytes are therefore carved from blocks that are kept when their array is freed
// and handed out again (without zeroing: every byte of an output is written). At most
// kMaxCachedBytes stay cached; blocks are 64-byte aligned and, where the OS supports it, backed by
// transparent huge pages.
#pragma once

#include <cstddef>

namespace embtab {

constexpr std::size_t kMinPooledBytes = std::size_t(1) << 20;
constexpr std::size_t kMaxCachedBytes = std::size_t(512) << 20;

// A block of at least `bytes` bytes, 64-byte aligned; *capacity receives its real size. Throws
// std::bad_alloc when memory is exhausted.
void* pool_acquire(std::size_t bytes, std::size_t* capacity);
// Gives a block from pool_acquire back (cached or freed).
void pool_release(void* block, std::size_t capacity) noexcept;
// Frees every cached block.
void pool_clear() noexcept;
// Bytes held in the cache now.
std::size_t pool_cached_bytes() noexcept;

}  // namespace embtab
