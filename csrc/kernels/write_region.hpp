// Exclusive access to a range of memory that a kernel updates in place. Pure C++; no Python.
//
// Python threads may call embtab on the same table at once (the GIL is released inside kernels).
// Two in-place updates of overlapping memory would lose each other's read-modify-writes, so every
// updating kernel runs inside a WriteRegion over the bytes it may write: a second region that
// overlaps waits until the first is released. Disjoint tables (and disjoint slices of one table)
// proceed in parallel. Construct it with the GIL released.
#pragma once

#include <cstddef>

namespace embtab {

class WriteRegion {
 public:
  WriteRegion(const void* begin, std::size_t bytes);
  ~WriteRegion();
  WriteRegion(const WriteRegion&) = delete;
  WriteRegion& operator=(const WriteRegion&) = delete;

 private:
  const char* begin_;
  const char* end_;
};

}  // namespace embtab
