// The update rules of the sparse optimizers (SGD, Adagrad, row-wise Adagrad, Adam, AdamW) for one
// row and its summed gradient.
//
// Part of sparse_isa.cpp, which includes it INSIDE its per-path anonymous namespace (after
// isa_common.hpp and the chunk helpers): like isa_common.hpp, it is compiled once per instruction
// set and must include no header itself. ci/check_odr.sh checks the objects.
#ifndef EMBTAB_ISA_NS
#error "included by sparse_isa.cpp only"
#endif

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
