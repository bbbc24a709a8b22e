// Gradient sources of a sparse update: where the gradient of each position comes from (values,
// one table's bags, many tables' bags, max-pooled bags).
//
// Part of sparse_isa.cpp, which includes it INSIDE its per-path anonymous namespace (after
// isa_common.hpp and the chunk helpers): like isa_common.hpp, it is compiled once per instruction
// set and must include no header itself. ci/check_odr.sh checks the objects.
#ifndef EMBTAB_ISA_NS
#error "included by sparse_isa.cpp only"
#endif

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
