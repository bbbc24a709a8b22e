// The sort plan of a sparse update: ids read once, checked, sorted by row (stable radix sort), and
// the global rows of multi-table batches.
//
// Part of sparse_isa.cpp, which includes it INSIDE its per-path anonymous namespace (after
// isa_common.hpp and the chunk helpers): like isa_common.hpp, it is compiled once per instruction
// set and must include no header itself. ci/check_odr.sh checks the objects.
#ifndef EMBTAB_ISA_NS
#error "included by sparse_isa.cpp only"
#endif

// ---------------------------------------------------------------------------------------------
// Id validation

// Exclusive upper bound of valid ids as unsigned (no bound: every non-negative int64).
EMBTAB_INLINE uint64_t id_limit(int64_t num_rows) {
  return num_rows < 0 ? (uint64_t(1) << 63) : static_cast<uint64_t>(num_rows);
}

// Reads every id exactly once and checks it (another thread may rewrite the array meanwhile, so a
// second read could see another value). With `copy`, the ids go there as int64 and everything
// after works on that private copy, whose values are exactly the ones checked. Returns the first
// bad position with the value read there (pos -1: none), and the range [lo, hi] of the ids.
template <class I>
BadId scan_ids(const I* ids, int64_t n, int64_t num_rows, int64_t* copy, int64_t& lo_out, int64_t& hi_out) {
  const uint64_t limit = id_limit(num_rows);
  const int64_t chunks = num_chunks(n, 65536);
  BadId bad[kMaxChunks];
  int64_t lo[kMaxChunks], hi[kMaxChunks];
  for_chunks(chunks, [&](int64_t c) {
    int64_t b, e;
    split(n, c, chunks, b, e);
    // Branch-free min/max first (vectorizes); find the position only when something is wrong.
    int64_t mn = INT64_MAX, mx = INT64_MIN;
    if (copy) {
      for (int64_t i = b; i < e; ++i) {
        const int64_t v = static_cast<int64_t>(ids[i]);
        copy[i] = v;
        mn = v < mn ? v : mn;
        mx = v > mx ? v : mx;
      }
    } else {
      for (int64_t i = b; i < e; ++i) {
        const int64_t v = static_cast<int64_t>(ids[i]);
        mn = v < mn ? v : mn;
        mx = v > mx ? v : mx;
      }
    }
    bad[c] = BadId{};
    if (e > b && (mn < 0 || static_cast<uint64_t>(mx) >= limit)) {
      // Without a copy this reads the ids a second time: it reports what it finds now (the value
      // that made min/max fail may have been rewritten); callers without a copy re-check every use.
      for (int64_t i = b; i < e; ++i) {
        const int64_t v = copy ? copy[i] : static_cast<int64_t>(ids[i]);
        if (static_cast<uint64_t>(v) >= limit) {
          bad[c] = BadId{i, v};
          break;
        }
      }
    }
    lo[c] = mn;
    hi[c] = mx;
  });
  int64_t mn = INT64_MAX, mx = INT64_MIN;
  for (int64_t c = 0; c < chunks; ++c) {
    if (bad[c].pos >= 0) return bad[c];
    mn = min_of(mn, lo[c]);
    mx = max_of(mx, hi[c]);
  }
  lo_out = mn;
  hi_out = mx;
  return BadId{};
}

// ---------------------------------------------------------------------------------------------
// Stable LSD radix sort of records by a key of `bits` bits. DigitOf(rec, shift, mask) extracts one
// digit. Each chunk histograms and scatters its own contiguous part, in order, so the permutation
// is the same for every number of chunks. Returns the buffer holding the result.

template <class Rec, class DigitOf>
Rec* lsd_sort(Rec* src, Rec* dst, int64_t n, int bits, int64_t chunks, DigitOf digit_of) {
  if (bits <= 0) return src;
  const int passes = (bits + 10) / 11;
  const int digit_bits = (bits + passes - 1) / passes;
  const int64_t buckets = int64_t(1) << digit_bits;
  const uint64_t mask = static_cast<uint64_t>(buckets - 1);
  Scratch<int64_t> counts(chunks * buckets);
  for (int pass = 0; pass < passes; ++pass) {
    const int shift = pass * digit_bits;
    for_chunks(chunks, [&](int64_t c) {
      int64_t* cnt = counts.p + c * buckets;
      for (int64_t d = 0; d < buckets; ++d) cnt[d] = 0;
      int64_t b, e;
      split(n, c, chunks, b, e);
      for (int64_t i = b; i < e; ++i) ++cnt[digit_of(src[i], shift, mask)];
    });
    // Exclusive prefix in (digit, chunk) order; a pass where one digit holds everything is skipped.
    int64_t run = 0;
    bool trivial = false;
    for (int64_t d = 0; d < buckets; ++d) {
      int64_t in_digit = 0;
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t t = counts.p[c * buckets + d];
        counts.p[c * buckets + d] = run;
        run += t;
        in_digit += t;
      }
      if (in_digit == n) trivial = true;
    }
    if (trivial) continue;
    for_chunks(chunks, [&](int64_t c) {
      int64_t* cnt = counts.p + c * buckets;
      int64_t b, e;
      split(n, c, chunks, b, e);
      for (int64_t i = b; i < e; ++i) dst[cnt[digit_of(src[i], shift, mask)]++] = src[i];
    });
    Rec* t = src;
    src = dst;
    dst = t;
  }
  return src;
}

struct WideRec {
  uint64_t key;
  uint64_t pos;
};

// From sorted records: segment starts, unique rows (key + lo) and positions.
template <class Rec, class KeyOf, class PosOf>
int64_t finish_plan(const Rec* sorted, int64_t n, int64_t lo, int64_t chunks, KeyOf key_of, PosOf pos_of,
                    const PlanBuffers& buf) {
  int64_t starts[kMaxChunks];
  for_chunks(chunks, [&](int64_t c) {
    int64_t b, e;
    split(n, c, chunks, b, e);
    int64_t count = 0;
    for (int64_t i = b; i < e; ++i) count += (i == 0 || key_of(sorted[i]) != key_of(sorted[i - 1])) ? 1 : 0;
    starts[c] = count;
  });
  int64_t total = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t t = starts[c];
    starts[c] = total;
    total += t;
  }
  for_chunks(chunks, [&](int64_t c) {
    int64_t b, e;
    split(n, c, chunks, b, e);
    int64_t k = starts[c];
    for (int64_t i = b; i < e; ++i) {
      const uint64_t key = key_of(sorted[i]);
      if (i == 0 || key != key_of(sorted[i - 1])) {
        buf.seg[k] = i;
        buf.rows[k] = static_cast<int64_t>(key + static_cast<uint64_t>(lo));
        ++k;
      }
      buf.order[i] = static_cast<int64_t>(pos_of(sorted[i]));
    }
  });
  buf.seg[total] = n;
  return total;
}

template <class I>
BadId plan(const I* ids, int64_t n, int64_t num_rows, const PlanBuffers& buf, SparsePlan& out) {
  out.n = 0;
  out.num_unique = 0;
  out.order = buf.order;
  out.seg = buf.seg;
  out.rows = buf.rows;
  buf.seg[0] = 0;
  if (n <= 0) return BadId{};
  // The ids are read once, into buf.rows (free until finish_plan writes the unique rows there);
  // the sort keys are built from that copy, so every row of the plan is an id that was checked.
  int64_t* id_copy = buf.rows;
  int64_t lo = 0, hi = 0;
  const BadId bad = scan_ids(ids, n, num_rows, id_copy, lo, hi);
  if (bad.pos >= 0) return bad;
  const uint64_t span = static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo);
  const int bits = span == 0 ? 0 : 64 - __builtin_clzll(span);
  const int64_t chunks = num_chunks(n, 32768);
  out.n = n;
  if (bits <= 32 && static_cast<uint64_t>(n) <= (uint64_t(1) << 32)) {
    // (id - lo) in the high half, the position in the low half: sorting by the key digits keeps
    // equal ids in position order.
    uint64_t* a = static_cast<uint64_t*>(buf.work);
    uint64_t* b = a + n;
    for_chunks(chunks, [&](int64_t c) {
      int64_t s, e;
      split(n, c, chunks, s, e);
      for (int64_t i = s; i < e; ++i)
        a[i] = ((static_cast<uint64_t>(id_copy[i]) - static_cast<uint64_t>(lo)) << 32) | static_cast<uint64_t>(i);
    });
    const uint64_t* sorted =
        lsd_sort(a, b, n, bits, chunks, [](uint64_t r, int shift, uint64_t mask) { return (r >> (32 + shift)) & mask; });
    out.num_unique = finish_plan(
        sorted, n, lo, chunks, [](uint64_t r) { return r >> 32; }, [](uint64_t r) { return r & 0xffffffffu; }, buf);
  } else {
    WideRec* a = static_cast<WideRec*>(buf.work);
    WideRec* b = a + n;
    for_chunks(chunks, [&](int64_t c) {
      int64_t s, e;
      split(n, c, chunks, s, e);
      for (int64_t i = s; i < e; ++i)
        a[i] = WideRec{static_cast<uint64_t>(id_copy[i]) - static_cast<uint64_t>(lo), static_cast<uint64_t>(i)};
    });
    const WideRec* sorted =
        lsd_sort(a, b, n, bits, chunks, [](const WideRec& r, int shift, uint64_t mask) { return (r.key >> shift) & mask; });
    out.num_unique = finish_plan(
        sorted, n, lo, chunks, [](const WideRec& r) { return r.key; }, [](const WideRec& r) { return r.pos; }, buf);
  }
  return BadId{};
}

// ---------------------------------------------------------------------------------------------

// Multi-table batches: each id checked against its feature's table and shifted by the table's first
// global row, reading each id once. Positions are split between threads; a chunk finds the feature
// of its first position, then follows the features' boundaries.
template <class I>
int64_t global_ids(const I* ids, const int64_t* offsets, int64_t num_features, int64_t batch,
                   const int64_t* feature_table, const int64_t* num_rows, const int64_t* row_base, int64_t* global) {
  const int64_t n = offsets[num_features * batch];
  if (n <= 0) return -1;
  const int64_t chunks = num_chunks(n, 65536);
  int64_t bad[kMaxChunks];
  for_chunks(chunks, [&](int64_t c) {
    int64_t b, e;
    split(n, c, chunks, b, e);
    bad[c] = -1;
    if (b >= e) return;
    int64_t f = 0;
    while (f + 1 < num_features && offsets[(f + 1) * batch] <= b) ++f;
    for (int64_t p = b; p < e; ++p) {
      while (p >= offsets[(f + 1) * batch]) ++f;
      const int64_t t = feature_table[f];
      const int64_t id = static_cast<int64_t>(ids[p]);
      if (static_cast<uint64_t>(id) >= static_cast<uint64_t>(num_rows[t])) {
        bad[c] = p;
        return;
      }
      global[p] = row_base[t] + id;
    }
  });
  for (int64_t c = 0; c < chunks; ++c)
    if (bad[c] >= 0) return bad[c];
  return -1;
}
