// A dynamic embedding table: an open-addressing hash map from any int64 key to its own row, rows
// created when a key is first seen (after `admit_after` sightings), evicted by LRU / LFU order when
// `max_rows` is reached or by a time to live counted in steps, and reused with fresh values.
// Pure C++; no Python.
//
// Semantics (the contract the Python reference model in tests/test_dynamic_model.py follows):
// - An inserting call (lookup / gather / gather_bags with insert) gets the next "stamp"
//   (step << 32 | call number within the step). Every occurrence of a key adds 1 to its count
//   (saturating); every key of the call gets the call's stamp. A key never seen before becomes
//   pending. Pending keys whose count reached admit_after are admitted in the order of their first
//   occurrence in the call: each takes the smallest free row, else a fresh row (while fewer than
//   max_rows rows exist), else the row of the admitted key with the smallest score among those the
//   call did not use (LRU: (stamp, row); LFU: (count, stamp, row)), which is evicted. When no such
//   key is left the remaining admissions wait (their keys stay pending).
// - advance() ends a step: with a ttl, every key (admitted or pending) whose last step is more
//   than ttl steps ago is removed. evict(keys) removes keys. Freed rows are reused smallest first.
// - A row is (re)initialised when a key takes it: the weight column from (seed, key, column) only,
//   so the same key always starts from the same values; every other column to its fill value.
//
// Memory: 24 bytes per hash slot (key, row, count: 16 bytes probed together; the last-use stamp
// apart); slots are a power of two and are rebuilt at 80% occupancy (live + pending + deleted
// slots) to twice the live ones, so a table uses 24 / load bytes per key, load between 0.4 and 0.8
// (30 to 60 bytes). Rows: one block per column
// (the weight, then optimizer state), 128-byte aligned, with one extra "sink" row at the end that
// optimizer updates of unknown keys write into (and that is zeroed after each update).
//
// Concurrency: calls that change the table (writers) run one at a time (a recursive writer lock, so
// a holder, e.g. an optimizer step, can call the other writers). Non-inserting lookups (readers) run
// concurrently with each other and with a writer: a writer publishes each new slot with a release
// store of its row after the row is initialised, and takes the reader-exclusive lock only to remove
// keys whose rows may be reused (so no reader still reads such a row) and to swap in grown arrays,
// which it built while readers went on using the old ones.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "kernels/lookup.hpp"

namespace embtab {

enum class EvictPolicy : int { lru = 0, lfu = 1 };
enum class InitKind : int { normal = 0, uniform = 1, zeros = 2 };

struct DynamicConfig {
  std::int64_t dim = 1;
  int elem_bytes = 4;  // 4: float32 rows, 8: float64
  InitKind init = InitKind::normal;
  double scale = 1.0;  // normal: the standard deviation; uniform: the bound
  std::uint64_t seed = 0;
  std::int64_t capacity = 0;   // rows (and keys) to reserve
  std::int64_t max_rows = -1;  // < 0: no limit
  std::int64_t admit_after = 1;
  EvictPolicy evict = EvictPolicy::lru;
  std::int64_t ttl = -1;  // < 0: none
};

// Rows of one column: rows x width elements of elem_bytes, 128-byte aligned, freed with the last
// owner (the table, or a numpy view of it).
class RowBlock {
 public:
  RowBlock(std::int64_t rows, std::int64_t width, int elem_bytes);
  ~RowBlock();
  RowBlock(const RowBlock&) = delete;
  RowBlock& operator=(const RowBlock&) = delete;
  void* data() const { return data_; }
  char* row(std::int64_t r) const { return static_cast<char*>(data_) + r * row_bytes_; }
  std::int64_t rows() const { return rows_; }
  std::int64_t row_bytes() const { return row_bytes_; }

 private:
  void* data_ = nullptr;
  std::int64_t rows_, row_bytes_;
};

struct DynamicStats {
  std::int64_t rows = 0, pending = 0, row_capacity = 0, slot_capacity = 0, bytes = 0, hits = 0, misses = 0,
               admitted = 0, evicted = 0, step = 0;
};

// Everything needed to save and rebuild a table. Admitted keys are listed in row order.
struct DynamicSnapshot {
  std::vector<std::int64_t> keys, rows;  // rows: -1 for pending keys
  std::vector<std::uint32_t> counts;
  std::vector<std::uint64_t> stamps;
  std::vector<std::int64_t> free_rows, last_evicted;
  std::int64_t high_water = 0, step = 0, call = 0, hits = 0, misses = 0, admitted = 0, evicted = 0;
};

// Thrown by every call on a closed table.
struct DynamicTableClosed : std::logic_error {
  DynamicTableClosed() : std::logic_error("the DynamicTable is closed") {}
};

class DynamicTable {
 public:
  explicit DynamicTable(const DynamicConfig& config);
  ~DynamicTable();
  DynamicTable(const DynamicTable&) = delete;
  DynamicTable& operator=(const DynamicTable&) = delete;

  const DynamicConfig& config() const { return config_; }

  // rows[i] = the row of keys[i], or -1. With insert, counts, admits and evicts as described above.
  void lookup(const std::int64_t* keys, std::int64_t n, bool insert, std::int64_t* rows);
  // lookup, then out[i] = the row of keys[i] (zeros for -1), all under one lock. T = float / double
  // as the table. `rows` receives the rows (n entries, caller's scratch).
  template <class T>
  void gather(const std::int64_t* keys, std::int64_t n, bool insert, std::int64_t* rows, T* out);
  // lookup, then lookup_kernels().bags over the rows (an unknown key reads as a zero row).
  template <class T>
  void gather_bags(const std::int64_t* keys, const std::int64_t* offsets, std::int64_t num_bags, bool insert,
                   const T* weights, PoolMode mode, std::int64_t* rows, T* out, std::int64_t* argmax);

  // Writers that remove keys. Return the number of rows freed.
  std::int64_t evict(const std::int64_t* keys, std::int64_t n);
  std::int64_t advance();
  // The keys whose rows the last inserting call, advance() or evict() freed, in the order freed.
  std::vector<std::int64_t> last_evicted() const;

  // Admitted keys and their rows, in row order.
  void export_rows(std::vector<std::int64_t>& keys, std::vector<std::int64_t>& rows) const;
  DynamicStats stats() const;
  std::int64_t size() const;  // admitted keys

  // Columns: 0 is the weight. add_column returns the new column's index; its rows start at `fill`.
  int add_column(std::int64_t width, double fill);
  int num_columns() const;
  std::int64_t column_width(int column) const;
  double column_fill(int column) const;
  // The column's block and the rows in use (the high-water mark; the sink row is block->rows() - 1).
  std::shared_ptr<RowBlock> column(int column, std::int64_t* rows_in_use) const;

  // For optimizer updates, between hold() and release(): rows of keys without inserting (the sink
  // row for unknown keys, so that their gradient goes nowhere), and the zeroing of the sink after.
  void resolve_for_update(const std::int64_t* keys, std::int64_t n, std::int64_t* rows);
  void clear_sink();

  // The writer lock, held across several calls by one thread (recursive).
  void hold();
  void release();

  DynamicSnapshot snapshot() const;
  // Replaces the contents (a new table only). Throws std::invalid_argument on inconsistent input.
  void restore(const DynamicSnapshot& snapshot, const std::vector<const void*>& column_rows);

  // Frees the memory (views of columns keep their blocks); every later call throws DynamicTableClosed.
  void close();
  bool closed() const;

  struct Slot;
  struct Impl;

 private:
  DynamicConfig config_;
  std::unique_ptr<Impl> impl_;
};

// The initial value of element j of the row of `key` (normal: N(0, scale^2); uniform:
// U(-scale, scale); zeros), as float. Exposed for tests of the generator.
void dynamic_init_row(InitKind init, double scale, std::uint64_t seed, std::int64_t key, std::int64_t dim,
                      float* out);

}  // namespace embtab
