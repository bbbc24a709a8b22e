#include "kernels/dynamic_table.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <new>
#include <queue>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/parallel.hpp"

namespace embtab {
namespace {

using std::int32_t;
using std::int64_t;
using std::uint32_t;
using std::uint64_t;

// Slot.row values other than a row. kEmpty is all bits set, so a memset(0xFF) empties an array.
constexpr int32_t kEmpty = -1;
constexpr int32_t kPending = -2;  // counted, not admitted yet
constexpr int32_t kDeleted = -3;  // a tombstone: probing goes on past it
// Slots are rebuilt when live + pending + deleted ones exceed kMaxLoad of them, to at least twice
// the live and pending ones.
constexpr double kMaxLoad = 0.8;
constexpr int64_t kMinSlots = 16;
constexpr int64_t kMinRows = 64;
constexpr uint32_t kCountMax = std::numeric_limits<uint32_t>::max();
// Rows are int32 in a slot: a table without max_rows evicts past this many, as if it had it.
constexpr int64_t kRowLimit = std::numeric_limits<int32_t>::max();
// Keys whose slot is prefetched ahead of the probe (enough misses in flight to cover a memory access).
constexpr int64_t kProbeAhead = 16;
constexpr int64_t kProbeGrain = 8192;
constexpr std::size_t kRowAlign = 128;

// MurmurHash3's 64-bit finalizer: every input bit affects every output bit.
inline uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}
inline uint64_t slot_hash(int64_t key) { return mix64(static_cast<uint64_t>(key) ^ 0x2545f4914f6cdd1dULL); }

inline int64_t pow2_at_least(int64_t n) {
  int64_t p = kMinSlots;
  while (p < n) p *= 2;
  return p;
}

inline void add_count(uint32_t* count, uint32_t k) {
  uint32_t seen = __atomic_load_n(count, __ATOMIC_RELAXED);
  for (;;) {
    const uint32_t next = seen > kCountMax - k ? kCountMax : seen + k;
    if (next == seen || __atomic_compare_exchange_n(count, &seen, next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
      return;
  }
}

// Writer lock: one writing call at a time; recursive, so that a thread holding it (an optimizer
// step between hold() and release()) can make the other writing calls.
class WriterLock {
 public:
  void lock() {
    const std::thread::id me = std::this_thread::get_id();
    std::unique_lock<std::mutex> lock(mutex_);
    if (depth_ > 0 && owner_ == me) {
      ++depth_;
      return;
    }
    free_.wait(lock, [&] { return depth_ == 0; });
    owner_ = me;
    depth_ = 1;
  }
  void unlock() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (depth_ == 0 || owner_ != std::this_thread::get_id())
        throw std::logic_error("release() of a DynamicTable by a thread that does not hold it");
      if (--depth_ == 0) owner_ = std::thread::id();
    }
    free_.notify_one();
  }

 private:
  std::mutex mutex_;
  std::condition_variable free_;
  std::thread::id owner_;
  int depth_ = 0;
};

// Readers share it; the writer takes it alone for the short moments that readers must not see.
// Writer-preferring: a waiting writer stops new readers, so a stream of lookups cannot starve it.
class ReadersLock {
 public:
  void lock_shared() {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return !writing_ && waiting_ == 0; });
    ++readers_;
  }
  void unlock_shared() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (--readers_ == 0) changed_.notify_all();
  }
  void lock() {
    std::unique_lock<std::mutex> lock(mutex_);
    ++waiting_;
    changed_.wait(lock, [&] { return !writing_ && readers_ == 0; });
    --waiting_;
    writing_ = true;
  }
  void unlock() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      writing_ = false;
    }
    changed_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  int64_t readers_ = 0, waiting_ = 0;
  bool writing_ = false;
};

template <class L>
struct Shared {
  L& l;
  explicit Shared(L& lock) : l(lock) { l.lock_shared(); }
  ~Shared() { l.unlock_shared(); }
};
template <class L>
struct Exclusive {
  L& l;
  explicit Exclusive(L& lock) : l(lock) { l.lock(); }
  ~Exclusive() { l.unlock(); }
};

// A small set of int64 values (open addressing), for de-duplicating the keys of one call.
class KeySet {
 public:
  explicit KeySet(int64_t expected) : mask_(static_cast<uint64_t>(pow2_at_least(2 * expected + 1)) - 1),
                                      keys_(mask_ + 1), used_(mask_ + 1, 0) {}
  void prefetch(int64_t key) const {
    const uint64_t i = slot_hash(key) & mask_;
    __builtin_prefetch(&keys_[i], 1, 3);
    __builtin_prefetch(&used_[i], 1, 3);
  }
  // True if `key` was not in the set.
  bool insert(int64_t key) {
    for (uint64_t i = slot_hash(key) & mask_;; i = (i + 1) & mask_) {
      if (!used_[i]) {
        used_[i] = 1;
        keys_[i] = key;
        return true;
      }
      if (keys_[i] == key) return false;
    }
  }

 private:
  uint64_t mask_;
  std::vector<int64_t> keys_;
  std::vector<unsigned char> used_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Rows

RowBlock::RowBlock(int64_t rows, int64_t width, int elem_bytes) : rows_(rows), row_bytes_(width * elem_bytes) {
  std::size_t bytes = static_cast<std::size_t>(rows * row_bytes_);
  bytes = (bytes + kRowAlign - 1) / kRowAlign * kRowAlign;
  data_ = std::aligned_alloc(kRowAlign, bytes > 0 ? bytes : kRowAlign);
  if (!data_) throw std::bad_alloc();
}
RowBlock::~RowBlock() { std::free(data_); }

// ---------------------------------------------------------------------------------------------
// Initial values: a counter-based generator keyed by (seed, key), so a key's first values do not
// depend on the order in which keys arrive nor on the thread count. Normal values by the Box-Muller
// transform on two 24-bit uniforms per pair of elements, with float polynomials for log and
// sin / cos (accurate to a few float ulps) that the compiler vectorizes.

namespace {

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

// ln(x) for normal x > 0: x = m 2^e with m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh((m - 1) / (m + 1)).
inline float log_approx(float x) {
  const uint32_t bits = float_to_bits(x);
  int32_t e = static_cast<int32_t>((bits >> 23) & 0xff) - 127;
  float m = bits_to_float((bits & 0x7fffff) | 0x3f800000u);
  const bool high = m > 1.41421356f;
  m = high ? m * 0.5f : m;
  e = high ? e + 1 : e;
  const float t = (m - 1.0f) / (m + 1.0f), t2 = t * t;
  const float series = 1.0f + t2 * (1.0f / 3 + t2 * (1.0f / 5 + t2 * (1.0f / 7 + t2 * (1.0f / 9))));
  return static_cast<float>(e) * 0.693147181f + 2.0f * t * series;
}

// cos and sin of 2 pi u for u in [0, 1): the quarter turn by the top two bits, then Taylor
// polynomials of degree 12 / 11 on [0, pi/2) (truncation below 6e-8).
inline void sincos_turns(float u, float* c_out, float* s_out) {
  const float q = u * 4.0f;
  const int32_t n = static_cast<int32_t>(q);
  const float a = (q - static_cast<float>(n)) * 1.57079633f, a2 = a * a;
  const float s = a * (1.0f + a2 * (-1.0f / 6 + a2 * (1.0f / 120 + a2 * (-1.0f / 5040 + a2 * (1.0f / 362880 +
                                                                                   a2 * (-1.0f / 39916800))))));
  const float c = 1.0f + a2 * (-0.5f + a2 * (1.0f / 24 + a2 * (-1.0f / 720 + a2 * (1.0f / 40320 +
                                                                              a2 * (-1.0f / 3628800 +
                                                                                    a2 * (1.0f / 479001600))))));
  const float cq = (n & 1) ? s : c, sq = (n & 1) ? c : s;
  *c_out = (n == 1 || n == 2) ? -cq : cq;
  *s_out = n >= 2 ? -sq : sq;
}

constexpr float kTwoPow24Inv = 1.0f / 16777216.0f;

}  // namespace

void dynamic_init_row(InitKind init, double scale, uint64_t seed, int64_t key, int64_t dim, float* out) {
  if (init == InitKind::zeros) {
    for (int64_t j = 0; j < dim; ++j) out[j] = 0.0f;
    return;
  }
  const uint64_t base = mix64(static_cast<uint64_t>(key) ^ mix64(seed ^ 0x9e3779b97f4a7c15ULL));
  const float s = static_cast<float>(scale);
  constexpr int64_t kBlock = 64;  // pairs of elements per block
  float u1[kBlock], u2[kBlock], c[kBlock], sn[kBlock];
  for (int64_t p0 = 0; 2 * p0 < dim; p0 += kBlock) {
    const int64_t pairs = std::min<int64_t>(kBlock, (dim + 1) / 2 - p0);
    for (int64_t k = 0; k < pairs; ++k) {
      const uint64_t h = mix64(base + static_cast<uint64_t>(p0 + k + 1) * 0x9e3779b97f4a7c15ULL);
      u1[k] = static_cast<float>(h >> 40) * kTwoPow24Inv;                 // [0, 1)
      u2[k] = static_cast<float>((h >> 16) & 0xffffff) * kTwoPow24Inv;  // [0, 1)
    }
    if (init == InitKind::uniform) {
      for (int64_t k = 0; k < pairs; ++k) {
        c[k] = (2.0f * u1[k] - 1.0f) * s;
        sn[k] = (2.0f * u2[k] - 1.0f) * s;
      }
    } else {
      for (int64_t k = 0; k < pairs; ++k) {
        // 1 - u1 is in (0, 1], so the log is finite; the radius reaches 5.9 (the largest |value|).
        const float r2 = -2.0f * log_approx(1.0f - u1[k]);
        const float r = std::sqrt(r2 > 0.0f ? r2 : 0.0f) * s;
        float cs, ss;
        sincos_turns(u2[k], &cs, &ss);
        c[k] = r * cs;
        sn[k] = r * ss;
      }
    }
    float* o = out + 2 * p0;
    const int64_t end = std::min<int64_t>(dim - 2 * p0, 2 * kBlock);
    for (int64_t j = 0; j < end; ++j) o[j] = (j & 1) ? sn[j / 2] : c[j / 2];
  }
}

// ---------------------------------------------------------------------------------------------
// The table

// 16 bytes, so that a probe reads one cache line (4 slots a line); the stamps, which only calls
// that change the table read, are a parallel array.
struct DynamicTable::Slot {
  int64_t key;
  int32_t row;  // >= 0, or kEmpty / kPending / kDeleted
  uint32_t count;
};

namespace {
using Slot = DynamicTable::Slot;

struct Column {
  int64_t width;
  double fill;
  std::shared_ptr<RowBlock> block;  // row_cap + 1 rows: the last one is the sink
};

// Where the key of position `pos` of a call stands after the parallel probe.
struct Miss {
  int64_t pos, key, slot;  // slot: its pending slot, or -1 while unknown
};

struct Victim {
  uint64_t primary, stamp;  // LFU: (count, stamp); LRU: (0, stamp)
  int64_t row, slot;
  bool operator<(const Victim& o) const {
    if (primary != o.primary) return primary < o.primary;
    if (stamp != o.stamp) return stamp < o.stamp;
    return row < o.row;
  }
};

}  // namespace

struct DynamicTable::Impl {
  DynamicConfig config;
  WriterLock writer;
  ReadersLock readers;
  std::atomic<bool> closed{false};

  // Readers read slots / mask / column blocks under `readers` (shared); the writer replaces them
  // only while it holds `readers` alone.
  std::unique_ptr<Slot[]> slots;
  std::unique_ptr<uint64_t[]> stamps;  // per slot: step << 32 | call within the step, of the last call that saw it
  uint64_t mask = 0;
  int64_t used = 0, deleted = 0;  // used: live + pending slots; deleted: tombstones
  std::atomic<int64_t> live{0}, high_water{0};

  std::vector<Column> columns;
  int64_t row_cap = 0;  // rows before the sink
  std::priority_queue<int64_t, std::vector<int64_t>, std::greater<int64_t>> free_rows;

  uint64_t step = 0, call = 0;
  std::atomic<int64_t> hits{0}, misses{0};
  int64_t admitted = 0, evicted = 0;
  std::vector<int64_t> last_evicted;

  explicit Impl(const DynamicConfig& c) : config(c) {
    int64_t reserve = std::max<int64_t>(c.capacity, 0);
    if (c.max_rows >= 0) reserve = std::min(reserve, c.max_rows);
    const int64_t n = pow2_at_least(static_cast<int64_t>(static_cast<double>(reserve) / kMaxLoad) + 1);
    slots = new_slots(n);
    stamps.reset(new uint64_t[static_cast<std::size_t>(n)]);
    mask = static_cast<uint64_t>(n) - 1;
    columns.push_back(Column{c.dim, 0.0, nullptr});
    row_cap = reserve;
    columns[0].block = new_block(columns[0], row_cap);
  }

  void check_open() const {
    if (closed) throw DynamicTableClosed();
  }
  int64_t slot_cap() const { return static_cast<int64_t>(mask + 1); }

  // --- slots -----------------------------------------------------------------------------------

  static std::unique_ptr<Slot[]> new_slots(int64_t n) {
    std::unique_ptr<Slot[]> s(new Slot[static_cast<std::size_t>(n)]);
    std::memset(static_cast<void*>(s.get()), 0xff, static_cast<std::size_t>(n) * sizeof(Slot));
    return s;
  }

  // Reader-safe probe: the slot index of `key`, or -1. The row is read with acquire, then the key:
  // a writer stores the key before it publishes the row with release.
  static int64_t find_slot(const Slot* s, uint64_t m, int64_t key) { return find_slot(s, m, key, slot_hash(key)); }
  static int64_t find_slot(const Slot* s, uint64_t m, int64_t key, uint64_t hash) {
    for (uint64_t i = hash & m;; i = (i + 1) & m) {
      const int32_t r = __atomic_load_n(&s[i].row, __ATOMIC_ACQUIRE);
      if (r == kEmpty) return -1;
      if (r != kDeleted && __atomic_load_n(&s[i].key, __ATOMIC_RELAXED) == key) return static_cast<int64_t>(i);
    }
  }
  // keys[i] and their hashes for i in [begin, end): each key read once, kProbeAhead positions
  // before its probe, when its slot (and stamp, with `stamps_too`) is prefetched.
  class HashesAhead {
   public:
    HashesAhead(const Impl& impl, const int64_t* keys, int64_t begin, int64_t end, bool stamps_too = false)
        : impl_(impl), keys_(keys), end_(end), stamps_too_(stamps_too) {
      for (int64_t i = begin; i < std::min(end, begin + kProbeAhead); ++i) fetch(i);
    }
    // keys[i] (and its hash in *hash), after prefetching the slot of keys[i + kProbeAhead].
    int64_t next(int64_t i, uint64_t* hash) {
      const int64_t key = keys_ring_[i % kProbeAhead];
      *hash = ring_[i % kProbeAhead];
      if (i + kProbeAhead < end_) fetch(i + kProbeAhead);
      return key;
    }

   private:
    void fetch(int64_t i) {
      const int64_t key = keys_[i];
      const uint64_t h = slot_hash(key);
      keys_ring_[i % kProbeAhead] = key;
      ring_[i % kProbeAhead] = h;
      __builtin_prefetch(&impl_.slots[h & impl_.mask], 0, 3);
      if (stamps_too_) __builtin_prefetch(&impl_.stamps[h & impl_.mask], 1, 3);
    }
    const Impl& impl_;
    const int64_t* keys_;
    int64_t end_;
    bool stamps_too_;
    uint64_t ring_[kProbeAhead];
    int64_t keys_ring_[kProbeAhead];
  };
  void prefetch_slot(int64_t key) const { __builtin_prefetch(&slots[slot_hash(key) & mask], 0, 3); }

  // Writer: the slot of `key`, or where to insert it (-(index) - 1: the first tombstone or empty slot).
  int64_t find_or_place(int64_t key) const {
    int64_t place = -1;
    for (uint64_t i = slot_hash(key) & mask;; i = (i + 1) & mask) {
      const int32_t r = slots[i].row;
      if (r == kEmpty) return -(place >= 0 ? place : static_cast<int64_t>(i)) - 1;
      if (r == kDeleted) {
        if (place < 0) place = static_cast<int64_t>(i);
      } else if (slots[i].key == key) {
        return static_cast<int64_t>(i);
      }
    }
  }
  // Writer: fills the free slot `i` (from find_or_place) and publishes it.
  void publish(int64_t i, int64_t key, int32_t row, uint32_t count, uint64_t stamp) {
    Slot& s = slots[i];
    if (s.row == kDeleted) --deleted;
    __atomic_store_n(&s.key, key, __ATOMIC_RELAXED);
    s.count = count;
    stamps[i] = stamp;
    __atomic_store_n(&s.row, row, __ATOMIC_RELEASE);
    ++used;
  }
  void remove_slot(int64_t i) {
    __atomic_store_n(&slots[i].row, kDeleted, __ATOMIC_RELEASE);
    --used;
    ++deleted;
  }

  // Makes room for `incoming` more keys: rebuilds the slots (dropping tombstones) when they would
  // pass kMaxLoad, to at least twice the keys. Built aside; readers wait only for the swap.
  void reserve_slots(int64_t incoming) {
    const int64_t cap = slot_cap();
    if (static_cast<double>(used + deleted + incoming) <= kMaxLoad * static_cast<double>(cap)) return;
    const int64_t n = pow2_at_least(2 * (used + incoming));
    std::unique_ptr<Slot[]> fresh = new_slots(n);
    std::unique_ptr<uint64_t[]> fresh_stamps(new uint64_t[static_cast<std::size_t>(n)]);
    const uint64_t m = static_cast<uint64_t>(n) - 1;
    for (int64_t i = 0; i < cap; ++i) {
      const Slot& s = slots[i];
      if (s.row == kEmpty || s.row == kDeleted) continue;
      uint64_t j = slot_hash(s.key) & m;
      while (fresh[j].row != kEmpty) j = (j + 1) & m;
      fresh[j] = s;
      fresh_stamps[j] = stamps[i];
    }
    Exclusive<ReadersLock> alone(readers);
    slots = std::move(fresh);
    stamps = std::move(fresh_stamps);
    mask = m;
    deleted = 0;
  }

  // --- rows ------------------------------------------------------------------------------------

  std::shared_ptr<RowBlock> new_block(const Column& col, int64_t rows) const {
    auto block = std::make_shared<RowBlock>(rows + 1, col.width, config.elem_bytes);
    fill_row(col, block->row(rows));  // the sink
    return block;
  }
  void fill_row(const Column& col, char* row) const {
    if (config.elem_bytes == 4) {
      float* p = reinterpret_cast<float*>(row);
      std::fill(p, p + col.width, static_cast<float>(col.fill));
    } else {
      double* p = reinterpret_cast<double*>(row);
      std::fill(p, p + col.width, col.fill);
    }
  }
  // Makes room for rows [0, rows): new blocks, the rows in use copied, swapped in alone.
  void reserve_rows(int64_t rows) {
    if (rows <= row_cap) return;
    int64_t cap = std::max({rows, 2 * row_cap, kMinRows});
    if (config.max_rows >= 0) cap = std::min(cap, std::max(rows, config.max_rows));
    std::vector<std::shared_ptr<RowBlock>> blocks;
    const int64_t in_use = high_water.load();
    for (const Column& col : columns) {
      blocks.push_back(new_block(col, cap));
      if (in_use > 0) std::memcpy(blocks.back()->data(), col.block->data(), static_cast<std::size_t>(in_use * col.block->row_bytes()));
    }
    Exclusive<ReadersLock> alone(readers);
    for (std::size_t c = 0; c < columns.size(); ++c) columns[c].block = blocks[c];
    row_cap = cap;
  }
  // The starting values of row `row`, now taken by `key`.
  void init_row(int64_t row, int64_t key, float* scratch) const {
    const Column& weight = columns[0];
    char* dst = weight.block->row(row);
    dynamic_init_row(config.init, config.scale, config.seed, key, config.dim, scratch);
    if (config.elem_bytes == 4) {
      std::memcpy(dst, scratch, static_cast<std::size_t>(config.dim) * sizeof(float));
    } else {
      double* p = reinterpret_cast<double*>(dst);
      for (int64_t j = 0; j < config.dim; ++j) p[j] = static_cast<double>(scratch[j]);
    }
    for (std::size_t c = 1; c < columns.size(); ++c) fill_row(columns[c], columns[c].block->row(row));
  }
  void init_rows(const std::vector<std::pair<int64_t, int64_t>>& rows_keys) const {
    const std::size_t grain = static_cast<std::size_t>(std::max<int64_t>(1, 16384 / std::max<int64_t>(config.dim, 1)));
    parallel_for(rows_keys.size(), grain, [&](std::size_t b, std::size_t e) {
      std::vector<float> scratch(static_cast<std::size_t>(config.dim) + 2);
      for (std::size_t i = b; i < e; ++i) init_row(rows_keys[i].first, rows_keys[i].second, scratch.data());
    });
  }

  // --- stamps, scores, eviction ----------------------------------------------------------------

  uint64_t next_stamp() {
    if (call < 0xffffffffULL) ++call;
    return step << 32 | call;
  }
  Victim score(int64_t slot) const {
    const Slot& s = slots[slot];
    return Victim{config.evict == EvictPolicy::lfu ? s.count : 0u, stamps[slot], s.row, slot};
  }
  // The k admitted keys of smallest score that the current call (stamp `now`) did not use,
  // smallest first.
  std::vector<Victim> choose_victims(int64_t k, uint64_t now) const {
    std::priority_queue<Victim> worst;  // the k best so far, the largest on top
    const int64_t cap = slot_cap();
    for (int64_t i = 0; i < cap; ++i) {
      const Slot& s = slots[i];
      if (s.row < 0 || stamps[i] == now) continue;
      const Victim v = score(i);
      if (static_cast<int64_t>(worst.size()) < k) {
        worst.push(v);
      } else if (v < worst.top()) {
        worst.pop();
        worst.push(v);
      }
    }
    std::vector<Victim> out;
    while (!worst.empty()) {
      out.push_back(worst.top());
      worst.pop();
    }
    std::reverse(out.begin(), out.end());
    return out;
  }
  // Removes admitted keys (readers excluded: nobody may still read a row that is freed here); their
  // rows go to the free list unless the caller reuses them at once.
  void free_slots(const std::vector<int64_t>& slot_ids, bool to_free_list) {
    if (slot_ids.empty()) return;
    Exclusive<ReadersLock> alone(readers);
    for (int64_t i : slot_ids) {
      const int32_t row = slots[i].row;
      last_evicted.push_back(slots[i].key);
      remove_slot(i);
      if (to_free_list) free_rows.push(row);
    }
    live -= static_cast<int64_t>(slot_ids.size());
    evicted += static_cast<int64_t>(slot_ids.size());
  }

  // --- lookups ---------------------------------------------------------------------------------

  // Readers (and writers that do not insert): rows of keys, `unknown` for keys without one.
  void resolve(const int64_t* keys, int64_t n, int64_t* rows, int64_t unknown, bool count_stats) {
    std::atomic<int64_t> found{0};
    parallel_for(static_cast<std::size_t>(n), kProbeGrain, [&](std::size_t b, std::size_t e) {
      const int64_t begin = static_cast<int64_t>(b), end = static_cast<int64_t>(e);
      HashesAhead ahead(*this, keys, begin, end);
      int64_t local = 0;
      for (int64_t i = begin; i < end; ++i) {
        uint64_t hash;
        const int64_t key = ahead.next(i, &hash);
        const int64_t at = find_slot(slots.get(), mask, key, hash);
        const int32_t r = at < 0 ? -1 : __atomic_load_n(&slots[at].row, __ATOMIC_ACQUIRE);
        local += r >= 0;
        rows[i] = r >= 0 ? r : unknown;
      }
      found += local;
    });
    if (count_stats) {
      hits += found.load();
      misses += n - found.load();
    }
  }

  // The inserting lookup (writer lock held).
  void insert_lookup(const int64_t* keys, int64_t n, int64_t* rows) {
    last_evicted.clear();
    const uint64_t now = next_stamp();
    // 1. Probe in parallel: rows of admitted keys, counts and stamps of every known key; the others
    //    (pending or unknown) are listed per chunk, in position order.
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(get_num_threads(), n / kProbeGrain));
    std::vector<std::vector<Miss>> lists(static_cast<std::size_t>(chunks));
    std::vector<int64_t> found(static_cast<std::size_t>(chunks), 0);
    Slot* s = slots.get();
    parallel_for(static_cast<std::size_t>(chunks), 1, [&](std::size_t c0, std::size_t c1) {
      for (std::size_t c = c0; c < c1; ++c) {
        std::size_t b, e;
        chunk_range(static_cast<std::size_t>(n), c, static_cast<std::size_t>(chunks), b, e);
        const int64_t begin = static_cast<int64_t>(b), end = static_cast<int64_t>(e);
        HashesAhead ahead(*this, keys, begin, end, true);
        int64_t local = 0;
        for (int64_t i = begin; i < end; ++i) {
          uint64_t hash;
          const int64_t key = ahead.next(i, &hash);
          const int64_t at = find_slot(s, mask, key, hash);
          if (at < 0) {
            rows[i] = -1;
            lists[c].push_back(Miss{i, key, -1});
            continue;
          }
          Slot& slot = s[at];
          add_count(&slot.count, 1);
          if (__atomic_load_n(&stamps[at], __ATOMIC_RELAXED) != now) __atomic_store_n(&stamps[at], now, __ATOMIC_RELAXED);
          if (slot.row >= 0) {
            rows[i] = slot.row;
            ++local;
          } else {
            rows[i] = -1;
            lists[c].push_back(Miss{i, key, at});
          }
        }
        found[c] = local;
      }
    });
    int64_t num_found = 0, num_listed = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      num_found += found[c];
      num_listed += static_cast<int64_t>(lists[c].size());
    }
    hits += num_found;
    misses += n - num_found;
    if (num_listed == 0) return;

    // 2. Unknown keys become pending, in order of first occurrence (sequential: the slot layout, and
    //    so everything after, is the same for every thread count). Loops over keys in order look
    //    kProbeAhead keys ahead, so that many cache misses are in flight at once.
    std::vector<Miss> listed;
    listed.reserve(static_cast<std::size_t>(num_listed));
    for (auto& list : lists) listed.insert(listed.end(), list.begin(), list.end());
    lists = {};
    const int64_t num = static_cast<int64_t>(listed.size());
    int64_t num_pending = 0;  // listed positions of keys already pending
    for (const Miss& m : listed) num_pending += m.slot >= 0;
    if (static_cast<double>(used + deleted + num - num_pending) > kMaxLoad * static_cast<double>(slot_cap())) {
      // Room for the distinct new keys (counted, not bounded by their positions, which may repeat).
      KeySet distinct(num - num_pending);
      int64_t incoming = 0;
      for (int64_t k = 0; k < num; ++k) {
        if (k + kProbeAhead < num) distinct.prefetch(listed[k + kProbeAhead].key);
        if (listed[k].slot < 0) incoming += distinct.insert(listed[k].key);
      }
      const Slot* before = slots.get();
      reserve_slots(incoming);
      if (slots.get() != before)
        for (Miss& m : listed)
          if (m.slot >= 0) m.slot = find_slot(slots.get(), mask, m.key);
    }
    std::vector<int64_t> candidates;  // slots of pending keys, by first occurrence
    {
      KeySet seen(num_pending);  // pending keys met so far (new keys are met once: when published)
      for (int64_t k = 0; k < num; ++k) {
        if (k + kProbeAhead < num) prefetch_slot(listed[k + kProbeAhead].key);
        Miss& m = listed[k];
        if (m.slot >= 0) {
          if (seen.insert(m.key)) candidates.push_back(m.slot);
          continue;
        }
        const int64_t at = find_or_place(m.key);
        if (at >= 0) {
          m.slot = at;  // a repeat of a key first met in this call
          add_count(&slots[at].count, 1);
        } else {
          m.slot = -at - 1;
          publish(m.slot, m.key, kPending, 1, now);
          candidates.push_back(m.slot);
        }
      }
    }

    // 3. Admissions, in the same order: the smallest free row, a fresh row, or an evicted one.
    std::vector<std::pair<int64_t, int64_t>> taken;  // (row, slot)
    int64_t next_fresh = high_water.load();
    std::vector<Victim> victims;
    std::size_t next_victim = 0;
    bool victims_chosen = false;
    for (std::size_t k = 0; k < candidates.size(); ++k) {
      if (k + kProbeAhead < candidates.size()) __builtin_prefetch(&slots[candidates[k + kProbeAhead]], 0, 3);
      const int64_t at = candidates[k];
      if (slots[at].count < static_cast<uint64_t>(config.admit_after)) continue;
      int64_t row = -1;
      if (!free_rows.empty()) {
        row = free_rows.top();
        free_rows.pop();
      } else if (next_fresh < (config.max_rows >= 0 ? config.max_rows : kRowLimit)) {
        row = next_fresh++;
      } else {
        if (!victims_chosen) {
          int64_t wanted = 0;
          for (std::size_t j = k; j < candidates.size(); ++j)
            wanted += slots[candidates[j]].count >= static_cast<uint64_t>(config.admit_after);
          victims = choose_victims(wanted, now);
          victims_chosen = true;
        }
        if (next_victim == victims.size()) break;  // every row is in use by this call's keys
        row = victims[next_victim++].row;
      }
      taken.emplace_back(row, at);
    }
    std::vector<int64_t> victim_slots;
    for (std::size_t v = 0; v < next_victim; ++v) victim_slots.push_back(victims[v].slot);
    free_slots(victim_slots, false);  // their rows were taken above
    reserve_rows(next_fresh);

    // 4. Initialise the rows (unreachable until published), then publish them.
    std::vector<std::pair<int64_t, int64_t>> rows_keys;
    rows_keys.reserve(taken.size());
    for (std::size_t k = 0; k < taken.size(); ++k) {
      if (k + kProbeAhead < taken.size()) __builtin_prefetch(&slots[taken[k + kProbeAhead].second], 0, 3);
      rows_keys.emplace_back(taken[k].first, slots[taken[k].second].key);
    }
    init_rows(rows_keys);
    high_water = next_fresh;
    for (std::size_t k = 0; k < taken.size(); ++k) {
      if (k + kProbeAhead < taken.size()) __builtin_prefetch(&slots[taken[k + kProbeAhead].second], 1, 3);
      __atomic_store_n(&slots[taken[k].second].row, static_cast<int32_t>(taken[k].first), __ATOMIC_RELEASE);
    }
    live += static_cast<int64_t>(taken.size());
    admitted += static_cast<int64_t>(taken.size());

    // 5. Rows of the listed positions.
    for (int64_t k = 0; k < num; ++k) {
      if (k + kProbeAhead < num) __builtin_prefetch(&slots[listed[k + kProbeAhead].slot], 0, 3);
      rows[listed[k].pos] = std::max<int32_t>(slots[listed[k].slot].row, -1);
    }
  }
  // --- removal ---------------------------------------------------------------------------------

  int64_t evict_keys(const int64_t* keys, int64_t n) {
    last_evicted.clear();
    std::vector<int64_t> admitted_slots;
    KeySet seen(n);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t at = find_slot(slots.get(), mask, keys[i]);
      if (at < 0 || !seen.insert(keys[i])) continue;
      if (slots[at].row >= 0)
        admitted_slots.push_back(at);
      else
        remove_slot(at);  // a pending key: no row, readers see it as unknown either way
    }
    free_slots(admitted_slots, true);
    return static_cast<int64_t>(admitted_slots.size());
  }

  int64_t advance_step() {
    last_evicted.clear();
    ++step;
    call = 0;
    if (config.ttl < 0 || step <= static_cast<uint64_t>(config.ttl)) return 0;
    const uint64_t oldest = step - static_cast<uint64_t>(config.ttl);  // keys last seen before it expire
    std::vector<std::pair<int64_t, int64_t>> expired;  // (row, slot)
    const int64_t cap = slot_cap();
    for (int64_t i = 0; i < cap; ++i) {
      const Slot& sl = slots[i];
      if (sl.row == kEmpty || sl.row == kDeleted || (stamps[i] >> 32) >= oldest) continue;
      if (sl.row >= 0)
        expired.emplace_back(sl.row, i);
      else
        remove_slot(i);
    }
    std::sort(expired.begin(), expired.end());
    std::vector<int64_t> ids;
    for (const auto& e : expired) ids.push_back(e.second);
    free_slots(ids, true);
    return static_cast<int64_t>(ids.size());
  }

  // --- export ----------------------------------------------------------------------------------

  // Admitted keys in row order, then pending keys in key order: (key, row, count, stamp).
  void entries(std::vector<int64_t>& keys, std::vector<int64_t>& rows, std::vector<uint32_t>* counts,
               std::vector<uint64_t>* stamps_out, bool with_pending) const {
    std::vector<std::pair<int64_t, int64_t>> order;  // (row or key, slot)
    std::vector<std::pair<int64_t, int64_t>> pending;
    const int64_t cap = slot_cap();
    for (int64_t i = 0; i < cap; ++i) {
      const Slot& sl = slots[i];
      if (sl.row >= 0)
        order.emplace_back(sl.row, i);
      else if (with_pending && sl.row == kPending)
        pending.emplace_back(sl.key, i);
    }
    std::sort(order.begin(), order.end());
    std::sort(pending.begin(), pending.end());
    order.insert(order.end(), pending.begin(), pending.end());
    keys.clear();
    rows.clear();
    for (const auto& o : order) {
      const Slot& sl = slots[o.second];
      keys.push_back(sl.key);
      rows.push_back(std::max<int32_t>(sl.row, -1));
      if (counts) counts->push_back(sl.count);
      if (stamps_out) stamps_out->push_back(stamps[o.second]);
    }
  }
};

// ---------------------------------------------------------------------------------------------

namespace {
// Holds the writer lock (or, `shared`, the readers' lock shared) for a call; a closed table throws.
class Guard {
 public:
  Guard(DynamicTable::Impl& impl, bool shared) : impl_(impl), shared_(shared) {
    if (shared_)
      impl_.readers.lock_shared();
    else
      impl_.writer.lock();
    if (impl_.closed) {
      unlock();
      impl_.check_open();
    }
  }
  ~Guard() { unlock(); }

 private:
  void unlock() {
    if (shared_)
      impl_.readers.unlock_shared();
    else
      impl_.writer.unlock();
  }
  DynamicTable::Impl& impl_;
  bool shared_;
};
struct WriterGuard : Guard {
  explicit WriterGuard(DynamicTable::Impl& impl) : Guard(impl, false) {}
};
struct ReaderGuard : Guard {
  explicit ReaderGuard(DynamicTable::Impl& impl) : Guard(impl, true) {}
};
}  // namespace

DynamicTable::DynamicTable(const DynamicConfig& config) : config_(config), impl_(new Impl(config)) {}
DynamicTable::~DynamicTable() = default;

namespace {
// Reads the rows of a call (already resolved; -1 reads as zeros) with the lookup kernels.
template <class T>
struct RowReader {
  TableView view;
  RowReader(const DynamicTable::Impl& impl)
      : view{std::is_same<T, double>::value ? RowFormat::f64 : RowFormat::f32, impl.columns[0].block->data(), nullptr,
             impl.high_water.load(), impl.config.dim} {}
  const LookupFns<int64_t>& kernels() const { return lookup_kernels().i64[static_cast<int>(view.format)]; }
};}  // namespace

// The rows of keys (inserting or not), then read(): under one lock, so that no other call
// changes a row in between.
template <class Read>
void resolve_then(DynamicTable::Impl& impl, const int64_t* keys, int64_t n, bool insert, int64_t* rows, Read read) {
  Guard guard(impl, !insert);
  if (insert)
    impl.insert_lookup(keys, n, rows);
  else
    impl.resolve(keys, n, rows, -1, true);
  read();
}

void DynamicTable::lookup(const int64_t* keys, int64_t n, bool insert, int64_t* rows) {
  resolve_then(*impl_, keys, n, insert, rows, [] {});
}

template <class T>
void DynamicTable::gather(const int64_t* keys, int64_t n, bool insert, int64_t* rows, T* out) {
  resolve_then(*impl_, keys, n, insert, rows, [&] {
    RowReader<T> r(*impl_);
    int64_t num_invalid = 0;
    r.kernels().gather(r.view, rows, n, out, OnInvalid::read_zeros, &num_invalid);
  });
}

template <class T>
void DynamicTable::gather_bags(const int64_t* keys, const int64_t* offsets, int64_t num_bags, bool insert,
                               const T* weights, PoolMode mode, int64_t* rows, T* out, int64_t* argmax) {
  resolve_then(*impl_, keys, offsets[num_bags], insert, rows, [&] {
    RowReader<T> r(*impl_);
    int64_t num_invalid = 0;
    r.kernels().bags(r.view, rows, offsets, num_bags, weights, mode, out, argmax, OnInvalid::read_zeros, &num_invalid);
  });
}

template void DynamicTable::gather<float>(const int64_t*, int64_t, bool, int64_t*, float*);
template void DynamicTable::gather<double>(const int64_t*, int64_t, bool, int64_t*, double*);
template void DynamicTable::gather_bags<float>(const int64_t*, const int64_t*, int64_t, bool, const float*, PoolMode,
                                               int64_t*, float*, int64_t*);
template void DynamicTable::gather_bags<double>(const int64_t*, const int64_t*, int64_t, bool, const double*, PoolMode,
                                                int64_t*, double*, int64_t*);

int64_t DynamicTable::evict(const int64_t* keys, int64_t n) {
  WriterGuard w(*impl_);
  return impl_->evict_keys(keys, n);
}

int64_t DynamicTable::advance() {
  WriterGuard w(*impl_);
  return impl_->advance_step();
}

std::vector<int64_t> DynamicTable::last_evicted() const {
  WriterGuard w(*impl_);
  return impl_->last_evicted;
}

void DynamicTable::export_rows(std::vector<int64_t>& keys, std::vector<int64_t>& rows) const {
  WriterGuard w(*impl_);
  impl_->entries(keys, rows, nullptr, nullptr, false);
}

DynamicStats DynamicTable::stats() const {
  WriterGuard w(*impl_);
  const Impl& m = *impl_;
  DynamicStats s;
  s.rows = m.live.load();
  s.pending = m.used - s.rows;
  s.row_capacity = m.row_cap;
  s.slot_capacity = m.slot_cap();
  s.bytes = s.slot_capacity * static_cast<int64_t>(sizeof(Slot) + sizeof(uint64_t));
  for (const Column& col : m.columns) s.bytes += col.block->rows() * col.block->row_bytes();
  s.bytes += static_cast<int64_t>(m.free_rows.size() * sizeof(int64_t));
  s.hits = m.hits.load();
  s.misses = m.misses.load();
  s.admitted = m.admitted;
  s.evicted = m.evicted;
  s.step = static_cast<int64_t>(m.step);
  return s;
}

int64_t DynamicTable::size() const {
  impl_->check_open();
  return impl_->live.load();
}

int DynamicTable::add_column(int64_t width, double fill) {
  WriterGuard w(*impl_);
  Impl& m = *impl_;
  Column col{width, fill, nullptr};
  col.block = m.new_block(col, m.row_cap);
  for (int64_t r = 0; r < m.high_water.load(); ++r) m.fill_row(col, col.block->row(r));
  Exclusive<ReadersLock> alone(m.readers);
  m.columns.push_back(col);
  return static_cast<int>(m.columns.size()) - 1;
}

int DynamicTable::num_columns() const {
  WriterGuard w(*impl_);
  return static_cast<int>(impl_->columns.size());
}
int64_t DynamicTable::column_width(int column) const {
  WriterGuard w(*impl_);
  return impl_->columns.at(static_cast<std::size_t>(column)).width;
}
double DynamicTable::column_fill(int column) const {
  WriterGuard w(*impl_);
  return impl_->columns.at(static_cast<std::size_t>(column)).fill;
}
std::shared_ptr<RowBlock> DynamicTable::column(int column, int64_t* rows_in_use) const {
  WriterGuard w(*impl_);
  *rows_in_use = impl_->high_water.load();
  return impl_->columns.at(static_cast<std::size_t>(column)).block;
}

void DynamicTable::resolve_for_update(const int64_t* keys, int64_t n, int64_t* rows) {
  WriterGuard w(*impl_);
  impl_->resolve(keys, n, rows, impl_->row_cap, false);
}

void DynamicTable::clear_sink() {
  WriterGuard w(*impl_);
  for (const Column& col : impl_->columns) impl_->fill_row(col, col.block->row(impl_->row_cap));
}

void DynamicTable::hold() {
  impl_->writer.lock();
  if (impl_->closed) {
    impl_->writer.unlock();
    impl_->check_open();
  }
}
void DynamicTable::release() { impl_->writer.unlock(); }

DynamicSnapshot DynamicTable::snapshot() const {
  WriterGuard w(*impl_);
  const Impl& m = *impl_;
  DynamicSnapshot s;
  m.entries(s.keys, s.rows, &s.counts, &s.stamps, true);
  auto free_rows = m.free_rows;
  while (!free_rows.empty()) {
    s.free_rows.push_back(free_rows.top());
    free_rows.pop();
  }
  s.last_evicted = m.last_evicted;
  s.high_water = m.high_water.load();
  s.step = static_cast<int64_t>(m.step);
  s.call = static_cast<int64_t>(m.call);
  s.hits = m.hits.load();
  s.misses = m.misses.load();
  s.admitted = m.admitted;
  s.evicted = m.evicted;
  return s;
}

void DynamicTable::restore(const DynamicSnapshot& s, const std::vector<const void*>& column_rows) {
  WriterGuard w(*impl_);
  Impl& m = *impl_;
  if (m.used != 0 || m.high_water.load() != 0) throw std::invalid_argument("restore() needs a new, empty table");
  const std::size_t n = s.keys.size();
  if (s.rows.size() != n || s.counts.size() != n || s.stamps.size() != n)
    throw std::invalid_argument("keys, rows, counts and stamps must have the same length");
  if (column_rows.size() != m.columns.size()) throw std::invalid_argument("one array of rows per column is needed");
  if (s.high_water < 0 || (m.config.max_rows >= 0 && s.high_water > m.config.max_rows))
    throw std::invalid_argument("the number of rows " + std::to_string(s.high_water) + " exceeds max_rows");
  // Every row below the high-water mark is either a key's or free, exactly once.
  std::vector<unsigned char> owner(static_cast<std::size_t>(s.high_water), 0);
  int64_t live = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const int64_t r = s.rows[i];
    if (r < -1 || r >= s.high_water) throw std::invalid_argument("row " + std::to_string(r) + " is out of range");
    if (r >= 0) {
      if (owner[static_cast<std::size_t>(r)]++) throw std::invalid_argument("row " + std::to_string(r) + " is used twice");
      ++live;
    }
  }
  for (int64_t r : s.free_rows) {
    if (r < 0 || r >= s.high_water || owner[static_cast<std::size_t>(r)]++)
      throw std::invalid_argument("free row " + std::to_string(r) + " is out of range or in use");
  }
  if (live + static_cast<int64_t>(s.free_rows.size()) != s.high_water)
    throw std::invalid_argument("rows below the high-water mark are neither used nor free");
  if (s.step < 0 || s.call < 0 || s.call > 0xffffffffLL) throw std::invalid_argument("bad step counters");

  m.reserve_slots(static_cast<int64_t>(n));
  for (std::size_t i = 0; i < n; ++i) {
    const int64_t at = m.find_or_place(s.keys[i]);
    if (at >= 0) throw std::invalid_argument("key " + std::to_string(s.keys[i]) + " appears twice");
    m.publish(-at - 1, s.keys[i], s.rows[i] >= 0 ? static_cast<int32_t>(s.rows[i]) : kPending, s.counts[i], s.stamps[i]);
  }
  m.reserve_rows(s.high_water);
  for (std::size_t c = 0; c < m.columns.size(); ++c)
    if (s.high_water > 0)
      std::memcpy(m.columns[c].block->data(), column_rows[c],
                  static_cast<std::size_t>(s.high_water * m.columns[c].block->row_bytes()));
  for (int64_t r : s.free_rows) m.free_rows.push(r);
  m.high_water = s.high_water;
  m.live = live;
  m.step = static_cast<uint64_t>(s.step);
  m.call = static_cast<uint64_t>(s.call);
  m.hits = s.hits;
  m.misses = s.misses;
  m.admitted = s.admitted;
  m.evicted = s.evicted;
  m.last_evicted = s.last_evicted;
}

void DynamicTable::close() {
  Impl& m = *impl_;
  m.writer.lock();
  struct Unlock {
    WriterLock& l;
    ~Unlock() { l.unlock(); }
  } unlock{m.writer};
  if (m.closed) return;
  Exclusive<ReadersLock> alone(m.readers);
  m.closed = true;
  m.slots.reset();
  m.stamps.reset();
  m.mask = 0;
  m.columns.clear();
  m.free_rows = {};
  m.last_evicted.clear();
  m.live = 0;
  m.high_water = 0;
  m.used = m.deleted = 0;
}

bool DynamicTable::closed() const { return impl_->closed; }

}  // namespace embtab
