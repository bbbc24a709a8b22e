// scatter_add: target[ids] += values in the order of the ids, rows split between threads.
//
// Part of sparse_isa.cpp, which includes it INSIDE its per-path anonymous namespace (after
// isa_common.hpp and the chunk helpers): like isa_common.hpp, it is compiled once per instruction
// set and must include no header itself. ci/check_odr.sh checks the objects.
#ifndef EMBTAB_ISA_NS
#error "included by sparse_isa.cpp only"
#endif

// ---------------------------------------------------------------------------------------------
// scatter_add: rows are split between threads by a histogram of the ids (so that skewed ids still
// balance); each thread scans all ids in order and adds only its own rows, so every row receives
// its values in their original order, whatever the thread count.

constexpr int64_t kScatterBuckets = 4096;

template <int D, class T, class I>
void scatter_owned(T* EMBTAB_RESTRICT target, int64_t dim, const I* EMBTAB_RESTRICT ids, int64_t n,
                   const T* EMBTAB_RESTRICT values, int64_t row_lo, int64_t row_hi) {
  // [row_lo, row_hi) lies inside the table and every id is tested against it where it is used, in
  // unsigned arithmetic (no overflow for any id): ids rewritten after the check cannot escape.
  const uint64_t width = static_cast<uint64_t>(row_hi - row_lo);
  const uint64_t lo = static_cast<uint64_t>(row_lo);
  const int64_t row_bytes = dim * int64_t(sizeof(T));
  const int64_t ahead = prefetch_distance(row_bytes) * 2;
  for (int64_t i = 0; i < n; ++i) {
    if (i + ahead < n) {
      const int64_t next = static_cast<int64_t>(ids[i + ahead]);
      if (static_cast<uint64_t>(next) - lo < width) {
        prefetch_row_write(target + next * dim, row_bytes);
        prefetch_row(values + (i + ahead) * dim, row_bytes);
      }
    }
    const int64_t id = static_cast<int64_t>(ids[i]);
    if (static_cast<uint64_t>(id) - lo < width) row_add<D>(target + id * dim, values + i * dim, dim);
  }
}

template <class T, class I>
BadId scatter_add(T* target, int64_t num_rows, int64_t dim, const I* ids, int64_t n, const T* values) {
  if (n <= 0) return BadId{};
  const int64_t owners = num_chunks(n * max_of<int64_t>(dim, 1), 65536);
  if (owners <= 1 || num_rows <= 1) {
    int64_t lo, hi;
    const BadId bad = scan_ids(ids, n, num_rows, static_cast<int64_t*>(nullptr), lo, hi);
    if (bad.pos >= 0 || dim <= 0) return bad;
    EMBTAB_DISPATCH_DIM(dim, scatter_owned<D>(target, dim, ids, n, values, 0, num_rows));
    return BadId{};
  }
  int shift = 0;
  while (((num_rows - 1) >> shift) >= kScatterBuckets) ++shift;
  const int64_t buckets = ((num_rows - 1) >> shift) + 1;
  const uint64_t limit = static_cast<uint64_t>(num_rows);
  Scratch<int64_t> hist(owners * buckets);
  BadId bad[kMaxChunks];
  for_chunks(owners, [&](int64_t c) {
    int64_t* h = hist.p + c * buckets;
    for (int64_t t = 0; t < buckets; ++t) h[t] = 0;
    int64_t b, e;
    split(n, c, owners, b, e);
    bad[c] = BadId{};
    for (int64_t i = b; i < e; ++i) {
      const int64_t id = static_cast<int64_t>(ids[i]);
      if (static_cast<uint64_t>(id) >= limit) {
        bad[c] = BadId{i, id};
        break;
      }
      ++h[id >> shift];
    }
  });
  for (int64_t c = 0; c < owners; ++c)
    if (bad[c].pos >= 0) return bad[c];
  if (dim <= 0) return BadId{};
  // Owner o gets the buckets from the first one where the running count reaches o * n / owners.
  int64_t first_row[kMaxChunks + 1];
  first_row[0] = 0;
  int64_t owner = 1, running = 0;
  for (int64_t t = 0; t < buckets && owner < owners; ++t) {
    while (owner < owners && running >= (n * owner) / owners) first_row[owner++] = t << shift;
    for (int64_t c = 0; c < owners; ++c) running += hist.p[c * buckets + t];
  }
  while (owner < owners) first_row[owner++] = num_rows;
  first_row[owners] = num_rows;
  for_chunks(owners, [&](int64_t c) {
    const int64_t r0 = min_of(first_row[c], num_rows), r1 = min_of(first_row[c + 1], num_rows);
    if (r0 < r1) EMBTAB_DISPATCH_DIM(dim, scatter_owned<D>(target, dim, ids, n, values, r0, r1));
  });
  return BadId{};
}
