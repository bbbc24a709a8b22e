// Exclusive access to memory that a kernel updates in place. Pure C++; no Python.
//
// Python threads may call embtab on the same table at once (the GIL is released inside kernels).
// Two in-place updates of overlapping memory would lose each other's read-modify-writes, so every
// updating kernel runs inside a WriteRegion over the bytes it may write (a table, or a table with
// its optimizer state and step count, taken together): a second region that overlaps any of them
// waits until the first is released. Disjoint tables (and disjoint slices of one table) proceed in
// parallel. Construct it with the GIL released.
//
// After fork() the child starts with no region held: the threads that held them in the parent do
// not exist there, and waiting for them would hang the child's first update forever.
#pragma once

#include <cstddef>

namespace embtab {

struct MemoryRange {
  const void* begin;
  std::size_t bytes;
};

class WriteRegion {
 public:
  static constexpr int kMaxRanges = 4;

  WriteRegion(const void* begin, std::size_t bytes);
  // Up to kMaxRanges ranges, held all together (never some of them while waiting for the others,
  // so two updates can never deadlock each other).
  WriteRegion(const MemoryRange* ranges, int count);
  ~WriteRegion();
  WriteRegion(const WriteRegion&) = delete;
  WriteRegion& operator=(const WriteRegion&) = delete;

 private:
  void acquire();

  const char* begin_[kMaxRanges];
  const char* end_[kMaxRanges];
  int count_;
};

}  // namespace embtab
