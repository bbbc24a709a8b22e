// Online choice between two interchangeable ways of running a kernel: the same results, different
// speed on different machines (e.g. prefetching whole rows, or only their first line and leaving
// the rest to the hardware prefetcher). Pure C++; no Python.
//
// Which is faster can change while a process runs: a 2-vCPU VM's memory throughput moves between
// two states (perhaps as its vCPUs come to share one physical core, or stop), and each option wins
// in one of them. So the tuner times both, then runs the faster one, and keeps re-timing the other
// on one call in kExploreEvery.
#pragma once

#include <cstdint>

namespace embtab {

enum class TuneSite : std::uint32_t { bags_prefetch = 1 };

struct TuneTicket {
  int slot;                // -1: nothing to record
  int arm;                 // 0 (the default) or 1
  std::int64_t start_ns;
};

// The arm to run a call with. `detail` separates calls that may behave differently (row bytes,
// thread count); `eligible` is false for calls too small to time reliably (they run arm 0). A
// forced arm (set_tune_override, or EMBTAB_PREFETCH=row|line at start-up) applies to every call.
TuneTicket tune_begin(TuneSite site, std::uint64_t detail, bool eligible);
// Records the duration of the call of `ticket` for `units` of work.
void tune_end(const TuneTicket& ticket, double units);

// -1: choose by timing (the default); 0 or 1: always that arm (tests cover both this way).
void set_tune_override(int arm);
int get_tune_override();

// For tests: how many calls of (site, detail) ran each arm so far through the tuner.
void tune_counts(TuneSite site, std::uint64_t detail, std::int64_t counts[2]);

}  // namespace embtab
