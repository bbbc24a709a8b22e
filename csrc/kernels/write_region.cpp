#include "kernels/write_region.hpp"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <utility>
#include <vector>

namespace embtab {
namespace {

struct Registry {
  std::mutex mutex;
  std::condition_variable released;
  std::vector<std::pair<const char*, const char*>> held;  // [begin, end) of every held region

  bool overlaps(const char* begin, const char* end) const {
    for (const auto& r : held)
      if (begin < r.second && r.first < end) return true;
    return false;
  }
};

Registry& registry() {
  static Registry* instance = new Registry();  // leaked: used until the very end of the process
  return *instance;
}

}  // namespace

WriteRegion::WriteRegion(const void* begin, std::size_t bytes)
    : begin_(static_cast<const char*>(begin)), end_(static_cast<const char*>(begin) + (bytes ? bytes : 1)) {
  Registry& r = registry();
  std::unique_lock<std::mutex> lock(r.mutex);
  r.released.wait(lock, [&] { return !r.overlaps(begin_, end_); });
  r.held.emplace_back(begin_, end_);
}

WriteRegion::~WriteRegion() {
  Registry& r = registry();
  {
    std::lock_guard<std::mutex> lock(r.mutex);
    auto it = std::find(r.held.begin(), r.held.end(), std::make_pair(begin_, end_));
    if (it != r.held.end()) r.held.erase(it);
  }
  r.released.notify_all();
}

}  // namespace embtab
