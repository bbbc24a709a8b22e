// Gather and pooled-bag kernels, compiled once per instruction set (see CMakeLists.txt).
#include <cstddef>
#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define EMBTAB_HAVE_STREAM_STORES 1
#endif

#include "kernels/lookup.hpp"
#include "kernels/parallel.hpp"
#include "kernels/tuner.hpp"

namespace embtab {
namespace EMBTAB_ISA_NS {

#include "kernels/isa_common.hpp"

namespace {

using std::int64_t;

// How many rows ahead to prefetch: about 8 KiB of rows in flight per thread.
EMBTAB_INLINE int64_t prefetch_distance(int64_t row_bytes) {
  return max_of<int64_t>(2, min_of<int64_t>(16, 8192 / max_of<int64_t>(row_bytes, 1)));
}

// Where the rows of a lookup come from (and, in `invalid`, what an invalid id does).
template <class T>
struct Rows {
  const T* table;
  int64_t num_rows, dim;
  InvalidIds invalid;
  // Prefetch only the first cache line of a row ahead and leave the rest to the hardware
  // prefetcher (bags; chosen by the tuner) instead of every line of it.
  bool lead_line_only = false;

  // The row of ids[pos] = id, or nullptr when the kernel must stop. D > 0 is the row length
  // known at compile time (it must equal dim).
  template <int D = 0, class I>
  EMBTAB_INLINE const T* row(I id, int64_t pos) const {
    if (EMBTAB_LIKELY(id_in_range(id, num_rows))) return table + static_cast<int64_t>(id) * (D > 0 ? D : dim);
    return static_cast<const T*>(invalid.resolve(pos));
  }

  template <int D = 0, class I>
  EMBTAB_INLINE void prefetch(const I* ids, int64_t pos, int64_t end) const {
    if (pos < end) {
      const I ahead = ids[pos];
      if (id_in_range(ahead, num_rows)) {
        const int64_t n = D > 0 ? D : dim;
        if (lead_line_only)
          __builtin_prefetch(table + static_cast<int64_t>(ahead) * n, 0, 3);
        else
          prefetch_row(table + static_cast<int64_t>(ahead) * n, n * int64_t(sizeof(T)));
      }
    }
  }
};

// Copies one row with non-temporal stores (dst 64-byte aligned, bytes a multiple of 64): a large
// output then streams to memory instead of first being read into cache and evicting the table.
EMBTAB_INLINE void stream_copy(void* EMBTAB_RESTRICT dst, const void* EMBTAB_RESTRICT src, int64_t bytes) {
#if defined(EMBTAB_HAVE_STREAM_STORES) && defined(__AVX512F__)
  for (int64_t off = 0; off < bytes; off += 64)
    _mm512_stream_si512(reinterpret_cast<__m512i*>(static_cast<char*>(dst) + off),
                        _mm512_loadu_si512(static_cast<const char*>(src) + off));
#elif defined(EMBTAB_HAVE_STREAM_STORES) && defined(__AVX2__)
  for (int64_t off = 0; off < bytes; off += 32)
    _mm256_stream_si256(reinterpret_cast<__m256i*>(static_cast<char*>(dst) + off),
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const char*>(src) + off)));
#elif defined(EMBTAB_HAVE_STREAM_STORES)
  for (int64_t off = 0; off < bytes; off += 16)
    _mm_stream_si128(reinterpret_cast<__m128i*>(static_cast<char*>(dst) + off),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const char*>(src) + off)));
#else
  __builtin_memcpy(dst, src, static_cast<std::size_t>(bytes));
#endif
}

template <int D, bool Stream, class T, class I>
void gather_range(const Rows<T>& rows, const I* EMBTAB_RESTRICT ids, int64_t begin, int64_t end,
                  T* EMBTAB_RESTRICT out) {
  const int64_t dim = rows.dim;
  const int64_t ahead = prefetch_distance(dim * int64_t(sizeof(T)));
  for (int64_t i = begin; i < end; ++i) {
    rows.template prefetch<D>(ids, i + ahead, end);
    const T* row = rows.template row<D>(ids[i], i);
    if (!row) break;
    if (Stream)
      stream_copy(out + i * dim, row, dim * int64_t(sizeof(T)));
    else
      row_copy<D>(out + i * dim, row, dim);
  }
#if defined(EMBTAB_HAVE_STREAM_STORES)
  if (Stream) _mm_sfence();
#endif
}

// Outputs at least this large are written with non-temporal stores.
constexpr int64_t kStreamOutputBytes = int64_t(8) << 20;
constexpr int64_t kStreamBagOutputBytes = int64_t(2) << 20;

template <class T, class I>
int64_t gather(const T* table, int64_t num_rows, int64_t dim, const I* ids, int64_t n, T* out, const T* zero_row,
               int64_t* num_invalid) {
  int64_t first_bad = -1;
  const Rows<T> rows{table, num_rows, dim, InvalidIds{zero_row, &first_bad, num_invalid}};
  if (n <= 0) return -1;
  if (dim == 0) {
    // Nothing to copy, but ids are still checked.
    for (int64_t i = 0; i < n; ++i)
      if (!rows.row(ids[i], i)) break;
    return first_bad;
  }
  const int64_t row_bytes = dim * int64_t(sizeof(T));
  const bool stream = n * row_bytes >= kStreamOutputBytes && row_bytes % 64 == 0 &&
                      reinterpret_cast<std::uintptr_t>(out) % 64 == 0;
  const std::size_t grain = static_cast<std::size_t>(max_of<int64_t>(1, 32768 / dim));
  parallel_for(static_cast<std::size_t>(n), grain, [&](std::size_t b, std::size_t e) {
    if (stream)
      EMBTAB_DISPATCH_DIM(dim, gather_range<D, true>(rows, ids, int64_t(b), int64_t(e), out));
    else
      EMBTAB_DISPATCH_DIM(dim, gather_range<D, false>(rows, ids, int64_t(b), int64_t(e), out));
  });
  return first_bad;
}

// Max pooling that propagates NaN like numpy's max; with argmax, the first maximum (or first NaN)
// wins, like numpy's argmax.
template <int D, class T>
EMBTAB_INLINE void row_max(T* EMBTAB_RESTRICT dst, const T* EMBTAB_RESTRICT src, std::int64_t dim) {
  const std::int64_t n = D > 0 ? D : dim;
  for (std::int64_t j = 0; j < n; ++j) {
    const T v = src[j], m = dst[j];
    dst[j] = (v > m || v != v) ? v : m;
  }
}
template <int D, class T>
EMBTAB_INLINE void row_max_arg(T* EMBTAB_RESTRICT dst, int64_t* EMBTAB_RESTRICT arg, const T* EMBTAB_RESTRICT src,
                               int64_t id, std::int64_t dim) {
  const std::int64_t n = D > 0 ? D : dim;
  for (std::int64_t j = 0; j < n; ++j) {
    const T v = src[j], m = dst[j];
    const bool take = v > m || (v != v && m == m);
    dst[j] = take ? v : m;
    arg[j] = take ? id : arg[j];
  }
}

// One bag with the whole row accumulator in vector registers (D a multiple of the lane count).
// Same operations in the same order as the generic loop in bags_range, so the same results.
template <int D, PoolMode M, bool Weighted, bool Stream, class T, class I>
EMBTAB_INLINE bool bag_in_registers(const Rows<T>& rows, const I* EMBTAB_RESTRICT ids, int64_t s, int64_t e,
                                    int64_t ids_end, int64_t ahead, const T* EMBTAB_RESTRICT weights,
                                    T* EMBTAB_RESTRICT o) {
  typedef typename VecOf<T>::type V;
  constexpr int L = int(sizeof(V) / sizeof(T));
  constexpr int NV = D / L;
  // The row of ids[i], prefetching the one `ahead` positions on.
  const auto fetch = [&](int64_t i) -> const T* {
    rows.template prefetch<D>(ids, i + ahead, ids_end);
    return rows.template row<D>(ids[i], i);
  };
  V acc[NV];
  {
    const T* EMBTAB_RESTRICT row = fetch(s);
    if (!row) return false;
    const V w = Weighted ? vsplat(weights[s]) : vsplat(T(1));
    for (int k = 0; k < NV; ++k) acc[k] = Weighted ? w * vload(row + k * L) : vload(row + k * L);
  }
  for (int64_t i = s + 1; i < e; ++i) {
    const T* EMBTAB_RESTRICT row = fetch(i);
    if (!row) return false;
    if (M == PoolMode::max) {
      for (int k = 0; k < NV; ++k) {
        const V v = vload(row + k * L);
        acc[k] = ((v > acc[k]) | (v != v)) ? v : acc[k];
      }
    } else if (Weighted) {
      const V w = vsplat(weights[i]);
      for (int k = 0; k < NV; ++k) acc[k] += w * vload(row + k * L);
    } else {
      for (int k = 0; k < NV; ++k) acc[k] += vload(row + k * L);
    }
  }
  if (M == PoolMode::mean) {
    const V n = vsplat(static_cast<T>(e - s));
    for (int k = 0; k < NV; ++k) acc[k] = acc[k] / n;
  }
  if (Stream)
    for (int k = 0; k < NV; ++k) vstream(o + k * L, acc[k]);
  else
    for (int k = 0; k < NV; ++k) vstore(o + k * L, acc[k]);
  return true;
}

// Output row b starts at out + b * out_stride (dim for one table; the width of the whole output
// row for one table's block of a multi-table lookup).
template <int D, PoolMode M, bool Weighted, bool Arg, class T, class I>
void bags_range(const Rows<T>& rows, const I* EMBTAB_RESTRICT ids, const int64_t* offsets, int64_t bag_begin,
                int64_t bag_end, const T* EMBTAB_RESTRICT weights, T* EMBTAB_RESTRICT out, int64_t out_stride,
                int64_t* EMBTAB_RESTRICT argmax, bool stream) {
  const int64_t dim = rows.dim;
  const int64_t ahead = prefetch_distance(dim * int64_t(sizeof(T)));
  const int64_t ids_end = offsets[bag_end];
  constexpr int kLanes = int(kVecBytes / sizeof(T));
  constexpr bool kRegisters = D > 0 && D % kLanes == 0 && D / kLanes <= kMaxAccumulators && !Arg;
  for (int64_t b = bag_begin; b < bag_end; ++b) {
    const int64_t s = offsets[b], e = offsets[b + 1];
    T* EMBTAB_RESTRICT o = out + b * out_stride;
    int64_t* EMBTAB_RESTRICT am = Arg ? argmax + b * dim : nullptr;
    if (s == e) {
      row_zero<D>(o, dim);
      if (Arg)
        for (int64_t j = 0; j < dim; ++j) am[j] = -1;
      continue;
    }
    if constexpr (kRegisters) {
      const bool ok = stream ? bag_in_registers<D, M, Weighted, true>(rows, ids, s, e, ids_end, ahead, weights, o)
                             : bag_in_registers<D, M, Weighted, false>(rows, ids, s, e, ids_end, ahead, weights, o);
      if (!ok) break;
      continue;
    }
    for (int64_t i = s; i < e; ++i) {
      rows.template prefetch<D>(ids, i + ahead, ids_end);
      const I id = ids[i];
      const T* EMBTAB_RESTRICT row = rows.template row<D>(id, i);
      if (!row) return;
      // A zero row read for an invalid id wins nothing: its argmax entry is -1.
      const int64_t winner = id_in_range(id, rows.num_rows) ? static_cast<int64_t>(id) : -1;
      if (M == PoolMode::max) {
        if (i == s) {
          row_copy<D>(o, row, dim);
          if (Arg)
            for (int64_t j = 0; j < dim; ++j) am[j] = winner;
        } else if (Arg) {
          row_max_arg<D>(o, am, row, winner, dim);
        } else {
          row_max<D>(o, row, dim);
        }
      } else if (Weighted) {
        if (i == s)
          row_scale_copy<D>(o, row, weights[i], dim);
        else
          row_axpy<D>(o, row, weights[i], dim);
      } else {
        if (i == s)
          row_copy<D>(o, row, dim);
        else
          row_add<D>(o, row, dim);
      }
    }
    if (M == PoolMode::mean) row_div<D>(o, static_cast<T>(e - s), dim);
  }
#if defined(EMBTAB_HAVE_STREAM_STORES)
  if (stream) _mm_sfence();
#endif
}

template <PoolMode M, bool Weighted, bool Arg, class T, class I>
int64_t bags_mode(const Rows<T>& table_rows, const I* ids, const int64_t* offsets, int64_t num_bags,
                  const T* weights, T* out, int64_t* argmax) {
  Rows<T> rows = table_rows;
  const int64_t dim = rows.dim;
  const int64_t total = offsets[num_bags];
  // Split bags between threads by (ids read + bags written), so that long bags balance.
  const int64_t work = (total + num_bags) * max_of<int64_t>(dim, 1);
  const int64_t chunks = min_of<int64_t>(get_num_threads(), max_of<int64_t>(1, work / 65536));
  // A large pooled output streams to memory (non-temporal stores) instead of being read first.
  const int64_t row_bytes = dim * int64_t(sizeof(T));
  const bool stream = num_bags * row_bytes >= kStreamBagOutputBytes && row_bytes % 64 == 0 &&
                      reinterpret_cast<std::uintptr_t>(out) % 64 == 0;
  // Whole rows or lead lines ahead: which is faster depends on the machine's state (on a 2-vCPU
  // VM each won by 15-25% in one of two states its memory throughput moves between, perhaps
  // whether the vCPUs share a core), so multi-threaded calls large enough to be memory bound let
  // the tuner choose.
  const bool eligible = chunks >= 2 && total * row_bytes >= kTuneMinBytes;
  const TuneTicket ticket =
      tune_begin(TuneSite::bags_prefetch,
                 bags_tune_detail(row_bytes, chunks, M == PoolMode::max ? (Arg ? 3 : 2) : (Weighted ? 1 : 0)), eligible);
  rows.lead_line_only = ticket.arm == 1;
  parallel_for(static_cast<std::size_t>(chunks), 1, [&](std::size_t c0, std::size_t c1) {
    for (std::size_t c = c0; c < c1; ++c) {
      const int64_t b0 = bag_chunk_begin(offsets, num_bags, int64_t(c), chunks);
      const int64_t b1 = bag_chunk_begin(offsets, num_bags, int64_t(c) + 1, chunks);
      if (b0 < b1) EMBTAB_DISPATCH_DIM(dim, bags_range<D, M, Weighted, Arg>(rows, ids, offsets, b0, b1, weights, out, dim, argmax, stream));
    }
  });
  tune_end(ticket, static_cast<double>(total));
  return *rows.invalid.first_bad;
}

template <class T, class I>
int64_t bags(const T* table, int64_t num_rows, int64_t dim, const I* ids, const int64_t* offsets, int64_t num_bags,
             const T* weights, PoolMode mode, T* out, int64_t* argmax, const T* zero_row, int64_t* num_invalid) {
  int64_t first_bad = -1;
  const Rows<T> rows{table, num_rows, dim, InvalidIds{zero_row, &first_bad, num_invalid}};
  if (num_bags <= 0) return -1;
  switch (mode) {
    case PoolMode::max:
      return argmax ? bags_mode<PoolMode::max, false, true>(rows, ids, offsets, num_bags, weights, out, argmax)
                    : bags_mode<PoolMode::max, false, false>(rows, ids, offsets, num_bags, weights, out, argmax);
    case PoolMode::mean:
      return weights ? bags_mode<PoolMode::mean, true, false>(rows, ids, offsets, num_bags, weights, out, argmax)
                     : bags_mode<PoolMode::mean, false, false>(rows, ids, offsets, num_bags, weights, out, argmax);
    default:
      return weights ? bags_mode<PoolMode::sum, true, false>(rows, ids, offsets, num_bags, weights, out, argmax)
                     : bags_mode<PoolMode::sum, false, false>(rows, ids, offsets, num_bags, weights, out, argmax);
  }
}

// Bags [bag_begin, bag_end) of one table on the calling thread, the per-bag code of bags() (sum or
// mean, optionally weighted): the share of one thread in a multi-table lookup.
template <class T, class I>
int64_t bags_block(const T* table, int64_t num_rows, int64_t dim, const I* ids, const int64_t* offsets,
                   int64_t bag_begin, int64_t bag_end, const T* weights, PoolMode mode, T* out, int64_t out_stride) {
  int64_t first_bad = -1;
  const Rows<T> rows{table, num_rows, dim, InvalidIds{nullptr, &first_bad, nullptr}};
  if (bag_begin >= bag_end) return -1;
  const bool mean = mode == PoolMode::mean;
  if (weights) {
    if (mean)
      EMBTAB_DISPATCH_DIM(dim, bags_range<D, PoolMode::mean, true, false>(rows, ids, offsets, bag_begin, bag_end, weights, out, out_stride, nullptr, false));
    else
      EMBTAB_DISPATCH_DIM(dim, bags_range<D, PoolMode::sum, true, false>(rows, ids, offsets, bag_begin, bag_end, weights, out, out_stride, nullptr, false));
  } else {
    if (mean)
      EMBTAB_DISPATCH_DIM(dim, bags_range<D, PoolMode::mean, false, false>(rows, ids, offsets, bag_begin, bag_end, weights, out, out_stride, nullptr, false));
    else
      EMBTAB_DISPATCH_DIM(dim, bags_range<D, PoolMode::sum, false, false>(rows, ids, offsets, bag_begin, bag_end, weights, out, out_stride, nullptr, false));
  }
  return first_bad;
}

template <class T, class I>
constexpr LookupFns<T, I> fns() {
  return LookupFns<T, I>{&gather<T, I>, &bags<T, I>, &bags_block<T, I>};
}

const LookupKernels kTable{fns<float, std::int32_t>(), fns<float, std::int64_t>(), fns<double, std::int32_t>(),
                           fns<double, std::int64_t>()};

}  // namespace

const LookupKernels& lookup_kernels() { return kTable; }

}  // namespace EMBTAB_ISA_NS
}  // namespace embtab
