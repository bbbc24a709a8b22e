// Sparse gradient and optimizer kernels, compiled once per instruction set (see CMakeLists.txt).
#include <cstddef>
#include <cstdint>

#include "kernels/parallel.hpp"
#include "kernels/sparse.hpp"

namespace embtab {
namespace EMBTAB_ISA_NS {

#include "kernels/isa_common.hpp"

namespace {

using std::int64_t;
using std::size_t;
using std::uint64_t;

// Per-chunk results live in fixed arrays of this size; chunks never exceed it.
constexpr int64_t kMaxChunks = 256;

// One chunk per thread, each with at least `per_chunk` units of work.
EMBTAB_INLINE int64_t num_chunks(int64_t work, int64_t per_chunk) {
  const int64_t threads = min_of<int64_t>(get_num_threads(), kMaxChunks);
  return max_of<int64_t>(1, min_of<int64_t>(threads, work / per_chunk));
}

// Runs f(c) for every chunk c in [0, chunks), one per thread.
template <class F>
void for_chunks(int64_t chunks, F&& f) {
  if (chunks <= 1) {
    f(int64_t(0));
    return;
  }
  parallel_for(static_cast<size_t>(chunks), 1, [&](size_t c0, size_t c1) {
    for (size_t c = c0; c < c1; ++c) f(static_cast<int64_t>(c));
  });
}

// [begin, end) of chunk c when n items are split into `chunks` equal parts.
EMBTAB_INLINE void split(int64_t n, int64_t c, int64_t chunks, int64_t& begin, int64_t& end) {
  const int64_t base = n / chunks, extra = n % chunks;
  begin = c * base + min_of(c, extra);
  end = begin + base + (c < extra ? 1 : 0);
}

// Owning array (operator new[]; no standard-library templates in ISA code).
template <class T>
struct Scratch {
  T* p;
  explicit Scratch(int64_t n) : p(new T[static_cast<size_t>(max_of<int64_t>(n, 1))]) {}
  ~Scratch() { delete[] p; }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

EMBTAB_INLINE void prefetch_row_write(const void* row, int64_t bytes) {
  const char* p = static_cast<const char*>(row);
  for (int64_t off = 0; off < bytes; off += kCacheLine) __builtin_prefetch(p + off, 1, 3);
}

EMBTAB_INLINE float sqrt_of(float x) { return __builtin_sqrtf(x); }
EMBTAB_INLINE double sqrt_of(double x) { return __builtin_sqrt(x); }

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
// Gradient sources: write into g the sum of the gradients of positions order[p0 .. p1) (never
// empty) of row r, in order.

template <class T>
struct ValuesSource {
  const T* values;
  const int64_t* order;
  int64_t dim, ahead;

  template <int D>
  EMBTAB_INLINE void add(T* EMBTAB_RESTRICT g, int64_t, int64_t p0, int64_t p1, int64_t p_end) const {
    for (int64_t p = p0; p < p1; ++p) {
      if (p + ahead < p_end) prefetch_row(values + order[p + ahead] * dim, dim * int64_t(sizeof(T)));
      if (p == p0)
        row_copy_from_zero<D>(g, values + order[p] * dim, dim);
      else
        row_add<D>(g, values + order[p] * dim, dim);
    }
  }
};

// Positions come in row order, so their bags are random: prefetch the bag of a position 2 * ahead
// positions on, and the gradient row of the one `ahead` positions on.
EMBTAB_INLINE void prefetch_bag_rows(const int64_t* order, const int64_t* bag_of, const void* rows,
                                     int64_t row_bytes, int64_t p, int64_t ahead, int64_t p_end) {
  if (p + 2 * ahead < p_end) __builtin_prefetch(bag_of + order[p + 2 * ahead], 0, 3);
  if (p + ahead < p_end)
    prefetch_row(static_cast<const char*>(rows) + bag_of[order[p + ahead]] * row_bytes, row_bytes);
}

// Where the gradient row of bag b is, and whether the bag is a mean: one table (grad_out's rows one
// after the other) or a multi-table batch (kernels/multi.hpp: a column block of a wider row).
template <class T>
struct OneTableBags {
  const T* grad_out;
  int64_t dim;
  bool mean_bags;
  EMBTAB_INLINE const T* row(int64_t b) const { return grad_out + b * dim; }
  EMBTAB_INLINE bool mean(int64_t) const { return mean_bags; }
};

template <class T>
struct MultiTableBags {
  const T* grad_out;
  int64_t stride, batch;
  const int64_t* feature_col;
  const unsigned char* feature_mean;
  EMBTAB_INLINE const T* row(int64_t b) const {
    const int64_t f = b / batch;
    return grad_out + (b - f * batch) * stride + feature_col[f];
  }
  EMBTAB_INLINE bool mean(int64_t b) const { return feature_mean[b / batch] != 0; }
};

template <class T, class Layout>
struct BagsSource {
  Layout layout;
  const int64_t* order;
  const int64_t* bag_of;
  const int64_t* offsets;
  const T* weights;
  int64_t dim, ahead;

  template <int D>
  EMBTAB_INLINE void add(T* EMBTAB_RESTRICT g, int64_t, int64_t p0, int64_t p1, int64_t p_end) const {
    const int64_t n = D > 0 ? D : dim;
    for (int64_t p = p0; p < p1; ++p) {
      prefetch_bag(p, p_end);
      const int64_t pos = order[p];
      const int64_t b = bag_of[pos];
      const T* EMBTAB_RESTRICT src = layout.row(b);
      const bool first = p == p0;
      if (!layout.mean(b)) {
        if (weights) {
          if (first)
            row_scale_copy_from_zero<D>(g, src, weights[pos], dim);
          else
            row_axpy<D>(g, src, weights[pos], dim);
        } else {
          if (first)
            row_copy_from_zero<D>(g, src, dim);
          else
            row_add<D>(g, src, dim);
        }
      } else {
        // As torch's embedding_bag backward: the bag's gradient divided by its length, then weighted.
        const T len = static_cast<T>(offsets[b + 1] - offsets[b]);
        if (first) row_zero<D>(g, dim);
        if (weights) {
          const T w = weights[pos];
          for (int64_t j = 0; j < n; ++j) g[j] += (src[j] / len) * w;
        } else {
          for (int64_t j = 0; j < n; ++j) g[j] += src[j] / len;
        }
      }
    }
  }
  // Positions come in row order, so their bags are random: prefetch the bag of a position 2 * ahead
  // positions on, and the gradient row of the one `ahead` positions on.
  EMBTAB_INLINE void prefetch_bag(int64_t p, int64_t p_end) const {
    if (p + 2 * ahead < p_end) __builtin_prefetch(bag_of + order[p + 2 * ahead], 0, 3);
    if (p + ahead < p_end) prefetch_row(layout.row(bag_of[order[p + ahead]]), dim * int64_t(sizeof(T)));
  }
};

template <class T>
struct MaxSource {
  const T* grad_out;
  const int64_t* order;
  const int64_t* bag_of;
  const int64_t* argmax;
  int64_t dim, ahead;

  template <int D>
  EMBTAB_INLINE void add(T* EMBTAB_RESTRICT g, int64_t row, int64_t p0, int64_t p1, int64_t p_end) const {
    const int64_t n = D > 0 ? D : dim;
    row_zero<D>(g, dim);  // a row may win no element at all
    int64_t previous_bag = -1;
    for (int64_t p = p0; p < p1; ++p) {
      prefetch_bag_rows(order, bag_of, grad_out, dim * int64_t(sizeof(T)), p, ahead, p_end);
      prefetch_bag_rows(order, bag_of, argmax, dim * int64_t(sizeof(int64_t)), p, ahead, p_end);
      const int64_t b = bag_of[order[p]];
      // Positions come in order, so a row repeated inside one bag is seen consecutively: count it once.
      if (b == previous_bag) continue;
      previous_bag = b;
      const T* EMBTAB_RESTRICT src = grad_out + b * dim;
      const int64_t* EMBTAB_RESTRICT won = argmax + b * dim;
      for (int64_t j = 0; j < n; ++j) {
        const T sum = g[j] + src[j];
        g[j] = won[j] == row ? sum : g[j];
      }
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Updates of row r (k-th unique row) with its summed gradient g.

template <int D, class T>
EMBTAB_INLINE T sum_of_squares(const T* EMBTAB_RESTRICT g, int64_t dim) {
  // 16 independent lanes and a fixed tree: vectorizes without reassociation, so every path and
  // thread count gives the same bits.
  const int64_t n = D > 0 ? D : dim;
  T lane[16] = {};
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int l = 0; l < 16; ++l) lane[l] += g[j + l] * g[j + l];
  for (int l = 0; j < n; ++j, ++l) lane[l] += g[j] * g[j];
  for (int width = 8; width >= 1; width /= 2)
    for (int l = 0; l < width; ++l) lane[l] += lane[l + width];
  return lane[0];
}

template <class T>
struct StoreUpdate {
  static constexpr bool kStore = true;
  static constexpr int kRows = 1;  // rows of num_rows x dim arrays touched per update (for prefetching)
  T* out;
  EMBTAB_INLINE T* row_buffer(int64_t k, int64_t dim, T*) const { return out + k * dim; }
  EMBTAB_INLINE void prefetch(int64_t, int64_t) const {}
  template <int D>
  EMBTAB_INLINE void apply(int64_t, T*, int64_t) const {}
};

template <class T>
struct SgdUpdate {
  static constexpr bool kStore = false;
  static constexpr int kRows = 1;
  EMBTAB_INLINE T* row_buffer(int64_t, int64_t, T* buf) const { return buf; }
  T* table;
  T neg_lr;
  int64_t dim;
  EMBTAB_INLINE void prefetch(int64_t r, int64_t bytes) const { prefetch_row_write(table + r * dim, bytes); }
  template <int D>
  EMBTAB_INLINE void apply(int64_t r, T* EMBTAB_RESTRICT g, int64_t) const {
    const int64_t n = D > 0 ? D : dim;
    T* EMBTAB_RESTRICT p = table + r * dim;
    for (int64_t j = 0; j < n; ++j) p[j] = p[j] + neg_lr * g[j];
  }
};

template <class T>
struct AdagradUpdate {
  static constexpr bool kStore = false;
  static constexpr int kRows = 2;
  EMBTAB_INLINE T* row_buffer(int64_t, int64_t, T* buf) const { return buf; }
  T* table;
  T* sum;
  T neg_lr, eps;
  int64_t dim;
  EMBTAB_INLINE void prefetch(int64_t r, int64_t bytes) const {
    prefetch_row_write(table + r * dim, bytes);
    prefetch_row_write(sum + r * dim, bytes);
  }
  template <int D>
  EMBTAB_INLINE void apply(int64_t r, T* EMBTAB_RESTRICT g, int64_t) const {
    const int64_t n = D > 0 ? D : dim;
    T* EMBTAB_RESTRICT p = table + r * dim;
    T* EMBTAB_RESTRICT s = sum + r * dim;
    for (int64_t j = 0; j < n; ++j) {
      const T acc = s[j] + g[j] * g[j];
      s[j] = acc;
      const T std_dev = sqrt_of(acc) + eps;
      p[j] = p[j] + neg_lr * (g[j] / std_dev);
    }
  }
};

template <class T>
struct RowwiseAdagradUpdate {
  static constexpr bool kStore = false;
  static constexpr int kRows = 1;
  EMBTAB_INLINE T* row_buffer(int64_t, int64_t, T* buf) const { return buf; }
  T* table;
  T* sum;  // one per row
  T lr, eps, weight_decay;
  int64_t dim;
  EMBTAB_INLINE void prefetch(int64_t r, int64_t bytes) const {
    prefetch_row_write(table + r * dim, bytes);
    __builtin_prefetch(sum + r, 1, 3);
  }
  template <int D>
  EMBTAB_INLINE void apply(int64_t r, T* EMBTAB_RESTRICT g, int64_t) const {
    const int64_t n = D > 0 ? D : dim;
    T* EMBTAB_RESTRICT p = table + r * dim;
    if (weight_decay != T(0))
      for (int64_t j = 0; j < n; ++j) g[j] = g[j] + weight_decay * p[j];
    const T mean_sq = n > 0 ? sum_of_squares<D>(g, dim) / static_cast<T>(n) : T(0);
    const T acc = sum[r] + mean_sq;
    sum[r] = acc;
    const T multiplier = lr / (sqrt_of(acc) + eps);
    for (int64_t j = 0; j < n; ++j) p[j] = p[j] - multiplier * g[j];
  }
};

// The rows an Adam-style update writes: the table's and its two moments'.
template <class T>
struct MomentRows {
  static constexpr bool kStore = false;
  static constexpr int kRows = 3;
  EMBTAB_INLINE T* row_buffer(int64_t, int64_t, T* buf) const { return buf; }
  T* table;
  T* exp_avg;
  T* exp_avg_sq;
  int64_t dim;
  EMBTAB_INLINE void prefetch(int64_t r, int64_t bytes) const {
    prefetch_row_write(table + r * dim, bytes);
    prefetch_row_write(exp_avg + r * dim, bytes);
    prefetch_row_write(exp_avg_sq + r * dim, bytes);
  }
};

template <class T>
struct AdamUpdate : MomentRows<T> {
  T neg_step, one_minus_beta1, one_minus_beta2, eps;
  template <int D>
  EMBTAB_INLINE void apply(int64_t r, T* EMBTAB_RESTRICT g, int64_t) const {
    const int64_t dim = this->dim, n = D > 0 ? D : dim;
    T* EMBTAB_RESTRICT p = this->table + r * dim;
    T* EMBTAB_RESTRICT m = this->exp_avg + r * dim;
    T* EMBTAB_RESTRICT v = this->exp_avg_sq + r * dim;
    for (int64_t j = 0; j < n; ++j) {
      const T m_old = m[j], v_old = v[j];
      const T dm = (g[j] - m_old) * one_minus_beta1;
      const T dv = (g[j] * g[j] - v_old) * one_minus_beta2;
      m[j] = m_old + dm;
      v[j] = v_old + dv;
      const T numer = dm + m_old;
      const T denom = sqrt_of(dv + v_old) + eps;
      p[j] = p[j] + neg_step * (numer / denom);
    }
  }
};

// torch.optim.AdamW on the touched rows: decoupled decay first, then Adam with torch's lerp (its
// two formulas, chosen by the weight as torch chooses), addcmul and addcdiv operation order.
template <class T>
struct AdamWUpdate : MomentRows<T> {
  T decay, neg_step, lerp_weight, beta2, one_minus_beta2, bias_correction2, eps;
  template <int D>
  EMBTAB_INLINE void apply(int64_t r, T* EMBTAB_RESTRICT g, int64_t) const {
    const bool small_weight = lerp_weight < T(0.5);
    const T one_minus_weight = T(1) - lerp_weight;
    const int64_t dim = this->dim, n = D > 0 ? D : dim;
    T* EMBTAB_RESTRICT p = this->table + r * dim;
    T* EMBTAB_RESTRICT m = this->exp_avg + r * dim;
    T* EMBTAB_RESTRICT v = this->exp_avg_sq + r * dim;
    for (int64_t j = 0; j < n; ++j) {
      const T m_new = small_weight ? m[j] + lerp_weight * (g[j] - m[j]) : g[j] - (g[j] - m[j]) * one_minus_weight;
      const T v_new = v[j] * beta2 + one_minus_beta2 * g[j] * g[j];
      m[j] = m_new;
      v[j] = v_new;
      const T denom = sqrt_of(v_new) / bias_correction2 + eps;
      p[j] = p[j] * decay + neg_step * m_new / denom;
    }
  }
};

// ---------------------------------------------------------------------------------------------

template <int D, class T, class Source, class Upd>
void reduce_range(const SparsePlan& plan, const Source& source, const Upd& upd, int64_t k0, int64_t k1, int64_t dim,
                  T* buf) {
  const int64_t p_end = plan.seg[k1];
  const int64_t row_bytes = dim * int64_t(sizeof(T));
  const int64_t ahead = 2 * prefetch_distance(row_bytes * Upd::kRows);
  for (int64_t k = k0; k < k1; ++k) {
    if (k + ahead < k1) upd.prefetch(plan.rows[k + ahead], row_bytes);
    T* EMBTAB_RESTRICT g = upd.row_buffer(k, dim, buf);
    source.template add<D>(g, plan.rows[k], plan.seg[k], plan.seg[k + 1], p_end);
    upd.template apply<D>(plan.rows[k], g, dim);
  }
}

template <class T, class Source, class Upd>
void reduce_with(const SparsePlan& plan, const Source& source, const Upd& upd, int64_t dim) {
  const int64_t work = (plan.n + plan.num_unique) * max_of<int64_t>(dim, 1);
  const int64_t chunks = num_chunks(work, 32768);
  // A cache-line aligned row per chunk for the summed gradient, allocated before the first write:
  // an allocation failure then leaves the table and its state untouched (no half-applied step).
  const int64_t stride = Upd::kStore ? 0 : dim + kCacheLine;
  Scratch<T> buf(chunks * stride);
  for_chunks(chunks, [&](int64_t c) {
    const int64_t k0 = bag_chunk_begin(plan.seg, plan.num_unique, c, chunks);
    const int64_t k1 = bag_chunk_begin(plan.seg, plan.num_unique, c + 1, chunks);
    if (k0 >= k1) return;
    T* row = reinterpret_cast<T*>((reinterpret_cast<std::uintptr_t>(buf.p + c * stride) + kCacheLine - 1) &
                                  ~static_cast<std::uintptr_t>(kCacheLine - 1));
    EMBTAB_DISPATCH_DIM(dim, reduce_range<D>(plan, source, upd, k0, k1, dim, row));
  });
}

// Calls f with the update functor of u's kind (the double parameters rounded to T here, once).
template <class T, class F>
void with_update(const Update<T>& u, int64_t dim, F&& f) {
  switch (u.kind) {
    case UpdateKind::sgd:
      f(SgdUpdate<T>{u.table, static_cast<T>(-u.lr), dim});
      break;
    case UpdateKind::adagrad:
      f(AdagradUpdate<T>{u.table, u.state1, static_cast<T>(-u.lr), static_cast<T>(u.eps), dim});
      break;
    case UpdateKind::rowwise_adagrad:
      f(RowwiseAdagradUpdate<T>{u.table, u.state1, static_cast<T>(u.lr), static_cast<T>(u.eps),
                                static_cast<T>(u.weight_decay), dim});
      break;
    case UpdateKind::adam:
      f(AdamUpdate<T>{{u.table, u.state1, u.state2, dim}, static_cast<T>(-u.lr), static_cast<T>(1.0 - u.beta1),
                      static_cast<T>(1.0 - u.beta2), static_cast<T>(u.eps)});
      break;
    case UpdateKind::adamw:
      f(AdamWUpdate<T>{{u.table, u.state1, u.state2, dim}, static_cast<T>(1.0 - u.weight_decay),
                       static_cast<T>(-u.lr), static_cast<T>(1.0 - u.beta1), static_cast<T>(u.beta2),
                       static_cast<T>(1.0 - u.beta2), static_cast<T>(u.bias_correction2), static_cast<T>(u.eps)});
      break;
    default:
      f(StoreUpdate<T>{u.out});
      break;
  }
}

template <class T, class Source>
void reduce_source(const SparsePlan& plan, const Source& source, const Update<T>& u, int64_t dim) {
  with_update(u, dim, [&](const auto& upd) { reduce_with<T>(plan, source, upd, dim); });
}

template <class T>
void reduce(const SparsePlan& plan, const GradSource<T>& s, const Update<T>& u) {
  if (plan.num_unique <= 0) return;
  const int64_t dim = s.dim;
  const int64_t ahead = prefetch_distance(dim * int64_t(sizeof(T)));
  switch (s.kind) {
    case SourceKind::bags:
      reduce_source(plan,
                    BagsSource<T, OneTableBags<T>>{OneTableBags<T>{s.grad_out, dim, s.mean}, plan.order, s.bag_of,
                                                   s.offsets, s.weights, dim, ahead},
                    u, dim);
      break;
    case SourceKind::bags_max:
      reduce_source(plan, MaxSource<T>{s.grad_out, plan.order, s.bag_of, s.argmax, dim, ahead}, u, dim);
      break;
    default:
      reduce_source(plan, ValuesSource<T>{s.values, plan.order, dim, ahead}, u, dim);
      break;
  }
}

// Multi-table batches: chunks of the unique rows (all tables' together, in global order) go to the
// threads; a chunk walks its rows table by table, each run of one table's rows reduced as the
// single-table kernel does, on a view of the plan whose rows are that table's own ids.
template <class T>
void reduce_multi(const SparsePlan& plan, const MultiGradSource<T>& s, const Update<T>* updates, const int64_t* dims,
                  const int64_t* row_base, int64_t num_tables) {
  if (plan.num_unique <= 0 || num_tables <= 0) return;
  int64_t max_dim = 1;
  for (int64_t t = 0; t < num_tables; ++t) max_dim = max_of(max_dim, dims[t]);
  const int64_t chunks = num_chunks((plan.n + plan.num_unique) * max_dim, 32768);
  for_chunks(chunks, [&](int64_t c) {
    const int64_t k0 = bag_chunk_begin(plan.seg, plan.num_unique, c, chunks);
    const int64_t k1 = bag_chunk_begin(plan.seg, plan.num_unique, c + 1, chunks);
    if (k0 >= k1) return;
    Scratch<T> buf(max_dim + kCacheLine);
    T* row = reinterpret_cast<T*>((reinterpret_cast<std::uintptr_t>(buf.p) + kCacheLine - 1) &
                                  ~static_cast<std::uintptr_t>(kCacheLine - 1));
    Scratch<int64_t> local(k1 - k0);
    int64_t t = 0;
    for (int64_t k = k0; k < k1;) {
      while (plan.rows[k] >= row_base[t + 1]) ++t;
      int64_t end = k;
      for (; end < k1 && plan.rows[end] < row_base[t + 1]; ++end) local.p[end - k0] = plan.rows[end] - row_base[t];
      const SparsePlan view{plan.n, end - k, plan.order, plan.seg + k, local.p + (k - k0)};
      const int64_t dim = dims[t];
      const BagsSource<T, MultiTableBags<T>> source{
          MultiTableBags<T>{s.grad_out, s.stride, s.batch, s.feature_col, s.feature_mean}, plan.order, s.bag_of,
          s.offsets, s.weights, dim, prefetch_distance(dim * int64_t(sizeof(T)))};
      with_update(updates[t], dim, [&](const auto& upd) {
        EMBTAB_DISPATCH_DIM(dim, reduce_range<D>(view, source, upd, 0, end - k, dim, row));
      });
      k = end;
    }
  });
}

void bag_of(const int64_t* offsets, int64_t num_bags, int64_t* out) {
  if (num_bags <= 0) return;
  const int64_t chunks = num_chunks(offsets[num_bags] + num_bags, 65536);
  for_chunks(chunks, [&](int64_t c) {
    const int64_t b0 = bag_chunk_begin(offsets, num_bags, c, chunks);
    const int64_t b1 = bag_chunk_begin(offsets, num_bags, c + 1, chunks);
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t p = offsets[b]; p < offsets[b + 1]; ++p) out[p] = b;
  });
}

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

template <class I>
constexpr SparseIndexFns<I> index_fns() {
  return SparseIndexFns<I>{&plan<I>, &global_ids<I>};
}
template <class T, class I>
constexpr ScatterFns<T, I> scatter_fns() {
  return ScatterFns<T, I>{&scatter_add<T, I>};
}
template <class T>
constexpr SparseFns<T> value_fns() {
  return SparseFns<T>{&reduce<T>, &reduce_multi<T>};
}

const SparseKernels kTable{index_fns<std::int32_t>(),
                           index_fns<std::int64_t>(),
                           scatter_fns<float, std::int32_t>(),
                           scatter_fns<float, std::int64_t>(),
                           scatter_fns<double, std::int32_t>(),
                           scatter_fns<double, std::int64_t>(),
                           value_fns<float>(),
                           value_fns<double>(),
                           &bag_of};

}  // namespace

const SparseKernels& sparse_kernels() { return kTable; }

}  // namespace EMBTAB_ISA_NS
}  // namespace embtab
