// The reduction: each unique row's gradients summed in order, then its update, rows split between
// threads; one table or many.
//
// Part of sparse_isa.cpp, which includes it INSIDE its per-path anonymous namespace (after
// isa_common.hpp and the chunk helpers): like isa_common.hpp, it is compiled once per instruction
// set and must include no header itself. ci/check_odr.sh checks the objects.
#ifndef EMBTAB_ISA_NS
#error "included by sparse_isa.cpp only"
#endif

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
