#include "kernels/write_region.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <vector>

#if defined(__unix__)
#include <pthread.h>
#endif

namespace embtab {
namespace {

struct Held {
  const char* begin;
  const char* end;
  const WriteRegion* owner;
};

struct Registry {
  std::mutex mutex;
  std::condition_variable released;
  std::vector<Held> held;  // every range of every region held now

  bool overlaps(const char* begin, const char* end) const {
    for (const Held& r : held)
      if (begin < r.end && r.begin < end) return true;
    return false;
  }
};

// Leaked: used until the very end of the process. After fork() the child gets a fresh one (leaking
// the parent's, whose mutex may be locked by a thread that does not exist in the child).
std::atomic<Registry*> g_registry{new Registry()};

#if defined(__unix__)
void reset_after_fork() { g_registry.store(new Registry()); }
const bool g_registered = (pthread_atfork(nullptr, nullptr, &reset_after_fork), true);
#endif

}  // namespace

WriteRegion::WriteRegion(const void* begin, std::size_t bytes) : begin_(), end_(), count_(1) {
  begin_[0] = static_cast<const char*>(begin);
  end_[0] = begin_[0] + (bytes ? bytes : 1);
  acquire();
}

WriteRegion::WriteRegion(const MemoryRange* ranges, int count) : begin_(), end_(), count_(0) {
  if (count > kMaxRanges) throw std::length_error("WriteRegion: too many ranges");
  for (int k = 0; k < count; ++k) {
    if (!ranges[k].begin) continue;
    begin_[count_] = static_cast<const char*>(ranges[k].begin);
    end_[count_] = begin_[count_] + (ranges[k].bytes ? ranges[k].bytes : 1);
    ++count_;
  }
  if (count_ > 0) acquire();
}

void WriteRegion::acquire() {
  Registry& r = *g_registry.load();
  std::unique_lock<std::mutex> lock(r.mutex);
  r.released.wait(lock, [&] {
    for (int k = 0; k < count_; ++k)
      if (r.overlaps(begin_[k], end_[k])) return false;
    return true;
  });
  for (int k = 0; k < count_; ++k) r.held.push_back(Held{begin_[k], end_[k], this});
}

WriteRegion::~WriteRegion() {
  if (count_ == 0) return;
  Registry& r = *g_registry.load();
  {
    std::lock_guard<std::mutex> lock(r.mutex);
    r.held.erase(std::remove_if(r.held.begin(), r.held.end(), [&](const Held& h) { return h.owner == this; }),
                 r.held.end());
  }
  r.released.notify_all();
}

}  // namespace embtab
