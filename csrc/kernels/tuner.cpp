#include "kernels/tuner.hpp"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace embtab {
namespace {

// Calls of a (site, detail) alternate the arms until each has kWarm samples; afterwards the arm
// with the lower median of its last kKeep samples runs, except on one call in kExploreEvery.
constexpr int kWarm = 2;
constexpr int kKeep = 3;
constexpr std::int64_t kExploreEvery = 8;
constexpr int kEntries = 64;

struct Entry {
  std::uint64_t key = 0;  // 0: free
  std::int64_t calls = 0;
  std::int64_t count[2] = {0, 0};
  double recent[2][kKeep] = {};  // ns per unit, a ring per arm
};

Entry g_entries[kEntries];
std::mutex g_mutex;  // taken with try_lock only: a busy tuner (or one locked at fork) skips a sample

int override_from_env() {
  const char* v = std::getenv("EMBTAB_PREFETCH");
  if (v == nullptr) return -1;
  if (std::strcmp(v, "row") == 0) return 0;
  if (std::strcmp(v, "line") == 0) return 1;
  return -1;
}
std::atomic<int> g_override{override_from_env()};

std::uint64_t key_of(TuneSite site, std::uint64_t detail) {
  return ((static_cast<std::uint64_t>(site) << 56) ^ (detail * 0x9E3779B97F4A7C15ull)) | 1;  // never 0 (free)
}

// The entry of key (created if there is room), or nullptr; g_mutex held.
Entry* find(std::uint64_t key, bool create) {
  const int start = static_cast<int>(key % kEntries);
  for (int i = 0; i < kEntries; ++i) {
    Entry& e = g_entries[(start + i) % kEntries];
    if (e.key == key) return &e;
    if (e.key == 0) {
      if (!create) return nullptr;
      e.key = key;
      return &e;
    }
  }
  return nullptr;
}

// (An insertion sort: std::sort on this 3-element array trips a false -Warray-bounds in GCC 12.)
double median_recent(const Entry& e, int arm) {
  const int n = static_cast<int>(e.count[arm] < kKeep ? e.count[arm] : kKeep);
  double v[kKeep];
  for (int i = 0; i < n; ++i) v[i] = e.recent[arm][i];
  for (int i = 1; i < n; ++i)
    for (int j = i; j > 0 && v[j - 1] > v[j]; --j) {
      const double t = v[j];
      v[j] = v[j - 1];
      v[j - 1] = t;
    }
  return v[n / 2];
}

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

TuneTicket tune_begin(TuneSite site, std::uint64_t detail, bool eligible) {
  const int forced = g_override.load(std::memory_order_relaxed);
  if (forced >= 0) return TuneTicket{-1, forced, 0};
  if (!eligible) return TuneTicket{-1, 0, 0};
  std::unique_lock<std::mutex> lock(g_mutex, std::try_to_lock);
  if (!lock.owns_lock()) return TuneTicket{-1, 0, 0};
  Entry* e = find(key_of(site, detail), true);
  if (e == nullptr) return TuneTicket{-1, 0, 0};
  int arm;
  if (e->count[0] < kWarm || e->count[1] < kWarm) {
    arm = e->count[0] <= e->count[1] ? 0 : 1;
  } else {
    const int best = median_recent(*e, 1) < median_recent(*e, 0) ? 1 : 0;
    arm = e->calls % kExploreEvery == kExploreEvery - 1 ? 1 - best : best;
  }
  ++e->calls;
  return TuneTicket{static_cast<int>(e - g_entries), arm, now_ns()};
}

void tune_end(const TuneTicket& ticket, double units) {
  if (ticket.slot < 0 || units <= 0) return;
  const double per_unit = static_cast<double>(now_ns() - ticket.start_ns) / units;
  std::unique_lock<std::mutex> lock(g_mutex, std::try_to_lock);
  if (!lock.owns_lock()) return;
  Entry& e = g_entries[ticket.slot];
  e.recent[ticket.arm][e.count[ticket.arm] % kKeep] = per_unit;
  ++e.count[ticket.arm];
}

void set_tune_override(int arm) { g_override.store(arm == 0 || arm == 1 ? arm : -1); }
int get_tune_override() { return g_override.load(); }

void tune_counts(TuneSite site, std::uint64_t detail, std::int64_t counts[2]) {
  counts[0] = counts[1] = 0;
  std::lock_guard<std::mutex> lock(g_mutex);
  const Entry* e = find(key_of(site, detail), false);
  if (e == nullptr) return;
  counts[0] = e->count[0];
  counts[1] = e->count[1];
}

}  // namespace embtab
