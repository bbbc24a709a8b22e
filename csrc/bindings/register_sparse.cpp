// scatter_add / coalesce / bag gradients / sparse optimizer steps: validation, GIL release and
// dispatch to the sparse kernels.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bindings/gil.hpp"
#include "bindings/register.hpp"
#include "bindings/validate.hpp"
#include "kernels/buffer_pool.hpp"
#include "kernels/lookup.hpp"
#include "kernels/sparse.hpp"
#include "kernels/write_region.hpp"

namespace embtab {
namespace bind {
namespace {

using Shape = std::vector<py::ssize_t>;

Shape shape_of(const py::array& a) { return Shape(a.shape(), a.shape() + a.ndim()); }

// values (or grads) must have shape ids.shape + (dim,); returns dim.
std::int64_t check_values_shape(const py::array& values, const Ids& ids, const char* name, std::int64_t dim = -1) {
  Shape expected = shape_of(ids.array);
  const Shape actual = shape_of(values);
  const bool rank_ok = actual.size() == expected.size() + 1;
  if (rank_ok && dim < 0) dim = actual.back();
  expected.push_back(dim < 0 ? 0 : dim);
  if (!rank_ok || actual != expected) {
    std::string want = "ids.shape + (dim,)";
    if (dim >= 0) want += " = " + shape_str(expected);
    throw py::value_error(std::string(name) + " must have shape " + want + " for ids of shape " +
                          shape_str(ids.array) + ", got " + shape_str(values));
  }
  return dim;
}

// An array updated in place: dtype (TypeError), ndim, C-contiguous and writeable (ValueError).
void require_in_place(const py::array& a, const py::dtype& dtype, const char* name, const std::string& dtype_reason) {
  if (!a.dtype().equal(dtype))
    throw py::type_error(std::string(name) + " must have dtype " + py::str(dtype).cast<std::string>() + " (" +
                         dtype_reason + "), got " + dtype_str(a) + "; it is updated in place and never cast");
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + " must be C-contiguous (it is updated in place, never copied)");
  if (!a.writeable()) throw py::value_error(std::string(name) + " is read-only (it is updated in place)");
}

// Owns the buffers of a SparsePlan.
// Scratch of a plan. From the buffer pool: fresh pages for it would cost more than the sort.
struct PlanStorage {
  PooledArray<unsigned char> work;
  PooledArray<std::int64_t> order, seg, rows;
  SparsePlan plan;
};

// Sorts and validates ids against num_rows (< 0: no upper bound) with the GIL released. The plan
// reads each id once, so what it checked is what it sorted, and reports the bad value it read.
PlanBuffers plan_buffers(std::int64_t num_ids, PlanStorage& st) {
  const std::size_t n = static_cast<std::size_t>(num_ids);
  st.work.reset(static_cast<std::size_t>(kPlanWorkBytesPerId) * n + 8);
  st.order.reset(n + 1);
  st.seg.reset(n + 1);
  st.rows.reset(n + 1);
  return PlanBuffers{st.work.get(), st.order.get(), st.seg.get(), st.rows.get()};
}

void build_plan(const Ids& ids, std::int64_t num_rows, PlanStorage& st) {
  const PlanBuffers buffers = plan_buffers(ids.n, st);
  const BadId bad = visit_index(ids.kind, [&](auto itag) {
    using I = decltype(itag);
    const I* ids_ptr = cdata<I>(ids.array);
    GilRelease release;
    return sparse_kernels().index<I>().plan(ids_ptr, ids.n, num_rows, buffers, st.plan);
  });
  if (bad.pos >= 0) throw_id_error(ids.array, bad.pos, bad.value, num_rows);
}

py::array rows_array(const SparsePlan& plan) {
  py::array rows = aligned_empty(py::dtype::of<std::int64_t>(), {static_cast<py::ssize_t>(plan.num_unique)});
  std::int64_t* out = static_cast<std::int64_t*>(rows.mutable_data());
  for (std::int64_t k = 0; k < plan.num_unique; ++k) out[k] = plan.rows[k];
  return rows;
}

// ---------------------------------------------------------------------------------------------

void scatter_add(const py::handle& target_obj, const py::handle& ids_obj, const py::handle& values_obj) {
  py::array target = require_array(target_obj, "target");
  const py::array values_in = require_array(values_obj, "values");
  const FloatKind kind = require_float(values_in, "values");
  if (!target.dtype().equal(values_in.dtype()))
    throw py::type_error("target must have the dtype of values (" + dtype_str(values_in) + "), got " +
                         dtype_str(target) + "; it is updated in place and never cast");
  require_ndim(target, 2, "target");
  Ids ids = check_ids(ids_obj);
  const std::int64_t num_rows = target.shape(0), dim = target.shape(1);
  check_values_shape(values_in, ids, "values", dim);
  require_in_place(target, values_in.dtype(), "target", "the dtype of values");
  // The kernel reads values and ids while it writes target: inputs that share its memory
  // (scatter_add(t, ids, t[:4])) are copied first, as np.add.at does.
  const py::array values = unshared(c_contiguous(values_in), {&target});
  ids.array = unshared(ids.array, {&target});

  const BadId bad = visit_float(kind, [&](auto ttag) {
    using T = decltype(ttag);
    return visit_index(ids.kind, [&](auto itag) {
      using I = decltype(itag);
      T* target_ptr = wdata<T>(target);
      const I* ids_ptr = cdata<I>(ids.array);
      const T* values_ptr = cdata<T>(values);
      GilRelease release;  // only raw pointers from here on
      const WriteRegion exclusive(target_ptr, static_cast<std::size_t>(num_rows * dim) * sizeof(T));
      return sparse_kernels().scatter<T, I>().scatter_add(target_ptr, num_rows, dim, ids_ptr, ids.n, values_ptr);
    });
  });
  if (bad.pos >= 0) throw_id_error(ids.array, bad.pos, bad.value, num_rows);
}

py::tuple coalesce(const py::handle& ids_obj, const py::handle& values_obj) {
  const py::array values_in = require_array(values_obj, "values");
  const FloatKind kind = require_float(values_in, "values");
  const Ids ids = check_ids(ids_obj);
  const std::int64_t dim = check_values_shape(values_in, ids, "values");
  const py::array values = c_contiguous(values_in);

  PlanStorage st;
  build_plan(ids, -1, st);
  py::array rows = rows_array(st.plan);
  py::array sums = aligned_empty(values.dtype(), Shape{static_cast<py::ssize_t>(st.plan.num_unique), static_cast<py::ssize_t>(dim)});
  visit_float(kind, [&](auto ttag) {
    using T = decltype(ttag);
    GradSource<T> source;
    source.kind = SourceKind::values;
    source.dim = dim;
    source.values = cdata<T>(values);
    Update<T> update;
    update.out = wdata<T>(sums);
    GilRelease release;
    sparse_kernels().get<T>().reduce(st.plan, source, update);
  });
  return py::make_tuple(rows, sums);
}

// ---------------------------------------------------------------------------------------------
// Bags

struct Bags {
  Ids ids;
  std::vector<std::int64_t> offsets;
  std::int64_t num_bags;
  PoolMode mode;
  py::array grad_out;  // C-contiguous, num_bags x dim
  FloatKind kind;
  std::int64_t dim;
  py::array weights;  // valid when has_weights
  bool has_weights;
  py::array argmax;  // valid when mode == max
};

Bags check_bags(const py::handle& grad_out_obj, const py::handle& ids_obj, const py::object& offsets_obj,
                const std::string& mode_name, const py::object& weights_obj, const py::object& argmax_obj) {
  const py::array grad_out = require_array(grad_out_obj, "grad_out");
  const FloatKind kind = require_float(grad_out, "grad_out");
  require_ndim(grad_out, 2, "grad_out");
  const PoolMode mode = parse_mode(mode_name);
  Ids ids = check_ids(ids_obj);

  std::vector<std::int64_t> offsets = bag_offsets(ids.array, offsets_obj);
  const std::int64_t num_bags = static_cast<std::int64_t>(offsets.size()) - 1;
  const std::int64_t dim = grad_out.shape(1);
  if (grad_out.shape(0) != num_bags)
    throw py::value_error("grad_out must have one row per bag: shape (num_bags, dim) = (" + std::to_string(num_bags) +
                          ", dim), got " + shape_str(grad_out));

  py::array weights;
  const bool has_weights = check_bag_weights(weights_obj, mode, grad_out.dtype(),
                                             "the dtype of grad_out " + dtype_str(grad_out), ids.array, &weights);

  py::array argmax;
  if (mode == PoolMode::max) {
    if (argmax_obj.is_none())
      throw py::value_error("mode='max' needs argmax (from gather_bags(..., return_argmax=True)) or the table");
    const py::array a = require_array(argmax_obj, "argmax");
    if (!a.dtype().equal(py::dtype::of<std::int64_t>()))
      throw py::type_error("argmax must have dtype int64 (as returned by gather_bags), got " + dtype_str(a));
    const Shape want{static_cast<py::ssize_t>(num_bags), static_cast<py::ssize_t>(dim)};
    if (shape_of(a) != want)
      throw py::value_error("argmax must have the shape of grad_out " + shape_str(want) + ", got " + shape_str(a));
    argmax = c_contiguous(a);
  } else if (!argmax_obj.is_none()) {
    throw py::value_error("argmax is only used with mode='max', got mode='" + mode_name + "'");
  }
  return Bags{std::move(ids), std::move(offsets), num_bags, mode, c_contiguous(grad_out), kind, dim,
              weights, has_weights, argmax};
}

template <class T>
GradSource<T> bag_source(const Bags& bags, const std::int64_t* bag_of) {
  GradSource<T> source;
  source.kind = bags.mode == PoolMode::max ? SourceKind::bags_max : SourceKind::bags;
  source.dim = bags.dim;
  source.grad_out = cdata<T>(bags.grad_out);
  source.bag_of = bag_of;
  source.offsets = bags.offsets.data();
  source.weights = bags.has_weights ? cdata<T>(bags.weights) : nullptr;
  source.mean = bags.mode == PoolMode::mean;
  source.argmax = bags.mode == PoolMode::max ? cdata<std::int64_t>(bags.argmax) : nullptr;
  return source;
}

// bag_of[p]: the bag of position p, for CSR offsets over num_ids ids.
PooledArray<std::int64_t> make_bag_of(const std::vector<std::int64_t>& offset_vector, std::int64_t num_ids) {
  PooledArray<std::int64_t> bag_of(static_cast<std::size_t>(num_ids) + 1);
  std::int64_t* out = bag_of.get();
  const std::int64_t* offsets = offset_vector.data();
  const std::int64_t num_bags = static_cast<std::int64_t>(offset_vector.size()) - 1;
  GilRelease release;
  sparse_kernels().bag_of(offsets, num_bags, out);
  return bag_of;
}

py::tuple bags_grad(const py::handle& grad_out_obj, const py::handle& ids_obj, const py::object& offsets_obj,
                    const std::string& mode_name, const py::object& weights_obj, const py::object& argmax_obj,
                    std::int64_t num_rows) {
  const Bags bags = check_bags(grad_out_obj, ids_obj, offsets_obj, mode_name, weights_obj, argmax_obj);
  PlanStorage st;
  build_plan(bags.ids, num_rows, st);
  const PooledArray<std::int64_t> bag_of = make_bag_of(bags.offsets, bags.ids.n);
  py::array rows = rows_array(st.plan);
  py::array grads = aligned_empty(bags.grad_out.dtype(),
                                  Shape{static_cast<py::ssize_t>(st.plan.num_unique), static_cast<py::ssize_t>(bags.dim)});
  visit_float(bags.kind, [&](auto ttag) {
    using T = decltype(ttag);
    const GradSource<T> source = bag_source<T>(bags, bag_of.get());
    Update<T> update;
    update.out = wdata<T>(grads);
    GilRelease release;
    sparse_kernels().get<T>().reduce(st.plan, source, update);
  });
  return py::make_tuple(rows, grads);
}

// ---------------------------------------------------------------------------------------------
// Optimizer steps

UpdateKind parse_update(const std::string& kind) {
  if (kind == "sgd") return UpdateKind::sgd;
  if (kind == "adagrad") return UpdateKind::adagrad;
  if (kind == "rowwise_adagrad") return UpdateKind::rowwise_adagrad;
  if (kind == "adam") return UpdateKind::adam;
  if (kind == "adamw") return UpdateKind::adamw;
  throw py::value_error("unknown optimizer kind '" + kind + "'");
}

struct Hyper {
  double lr, eps, beta1, beta2, weight_decay, bias_correction2;
};

struct OptimTable {
  py::array table;
  FloatKind kind;
  std::int64_t num_rows, dim;
  UpdateKind update;
  py::array state1, state2;
  py::array step;  // 0-d int64, or empty when the optimizer keeps no count
  std::int64_t* step_count;

  // What the update writes (the unused ones are empty arrays): kept apart, held together.
  std::vector<const py::array*> written() const { return {&table, &state1, &state2, &step}; }

  // The byte ranges of the arrays it writes, for the WriteRegion that the update holds.
  struct Ranges {
    MemoryRange ranges[WriteRegion::kMaxRanges] = {};
    int count = 0;
  };
  Ranges written_ranges() const {
    Ranges r;
    for (const py::array* a : written())
      if (a->size() > 0) r.ranges[r.count++] = MemoryRange{a->data(), static_cast<std::size_t>(a->nbytes())};
    return r;
  }
};

// The step count of an optimizer that keeps one: a writeable 0-d int64 array, advanced by one with
// the update it counts (as torch keeps `step` as a tensor in the state).
py::array check_step_count(const py::object& obj) {
  py::array a = require_array(obj, "state['step']");
  if (!a.dtype().equal(py::dtype::of<std::int64_t>()))
    throw py::type_error("state['step'] must be a 0-d int64 array (the optimizer's step count), got dtype " +
                         dtype_str(a));
  if (a.ndim() != 0) throw py::value_error("state['step'] must be a 0-d array, got shape " + shape_str(a));
  if (!a.writeable()) throw py::value_error("state['step'] is read-only (the step advances it in place)");
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    throw py::value_error("state['step'] must be an aligned int64 array");
  return a;
}

// An optimizer's table: a float32 / float64, 2-D array that can be updated in place. The
// optimizers check it at construction with this (embtab.optim), each step again.
py::array check_optim_table(const py::handle& table_obj) {
  py::array table = require_array(table_obj, "table");
  require_float(table, "table");
  require_ndim(table, 2, "table");
  require_in_place(table, table.dtype(), "table", "float32 or float64");
  return table;
}

OptimTable check_optim(const std::string& kind_name, const py::handle& table_obj, const py::object& state1_obj,
                       const py::object& state2_obj, const py::object& step_obj) {
  const UpdateKind update = parse_update(kind_name);
  py::array table = check_optim_table(table_obj);
  const FloatKind kind = require_float(table, "table");
  const std::int64_t num_rows = table.shape(0), dim = table.shape(1);
  auto state = [&](const py::object& obj, const char* name, const Shape& shape) {
    py::array a = require_array(obj, name);
    require_output(a, table.dtype(), shape, name);
    return a;
  };
  const Shape full{static_cast<py::ssize_t>(num_rows), static_cast<py::ssize_t>(dim)};
  OptimTable t{table, kind, num_rows, dim, update, py::array(), py::array(), py::array(), nullptr};
  const char* name1 = "state['sum']";
  const char* name2 = "state['exp_avg_sq']";
  if (update == UpdateKind::adagrad) t.state1 = state(state1_obj, name1, full);
  if (update == UpdateKind::rowwise_adagrad) t.state1 = state(state1_obj, name1, Shape{static_cast<py::ssize_t>(num_rows)});
  if (update == UpdateKind::adam || update == UpdateKind::adamw) {
    name1 = "state['exp_avg']";
    t.state1 = state(state1_obj, name1, full);
    t.state2 = state(state2_obj, name2, full);
  }
  if (!step_obj.is_none()) {
    t.step = check_step_count(step_obj);
    t.step_count = wdata<std::int64_t>(t.step);
  }
  // Every written array is C-contiguous, so overlapping byte ranges are exactly shared memory. Two
  // of them in one place would each see the other's writes mid-update: refused, nothing copied.
  const std::pair<const py::array*, const char*> written[] = {
      {&t.table, "the table"}, {&t.state1, name1}, {&t.state2, name2}, {&t.step, "state['step']"}};
  for (std::size_t i = 0; i < 4; ++i)
    for (std::size_t j = i + 1; j < 4; ++j)
      if (may_share_memory(*written[i].first, *written[j].first))
        throw py::value_error(std::string(written[i].second) + " and " + written[j].second +
                              " share memory; an optimizer's table and state must be separate arrays (the step "
                              "writes both)");
  return t;
}

template <class T>
Update<T> make_update(OptimTable& t, const Hyper& h) {
  Update<T> u;
  u.kind = t.update;
  u.table = wdata<T>(t.table);
  const bool adam = t.update == UpdateKind::adam || t.update == UpdateKind::adamw;
  if (t.update == UpdateKind::adagrad || t.update == UpdateKind::rowwise_adagrad || adam) u.state1 = wdata<T>(t.state1);
  if (adam) u.state2 = wdata<T>(t.state2);
  u.lr = h.lr;
  u.eps = h.eps;
  u.beta1 = h.beta1;
  u.beta2 = h.beta2;
  u.weight_decay = h.weight_decay;
  u.bias_correction2 = h.bias_correction2;
  return u;
}

// The update itself, GIL released. The step count advances in the same call, inside the write
// region, so no Python code (a signal handler raising KeyboardInterrupt, another thread's step) can
// run between the update and its count.
template <class T>
void apply_update(OptimTable& t, const SparsePlan& plan, const GradSource<T>& source, const Hyper& h) {
  const Update<T> update = make_update<T>(t, h);
  const SparseFns<T>& fns = sparse_kernels().get<T>();
  const OptimTable::Ranges written = t.written_ranges();
  std::int64_t* step_count = t.step_count;
  GilRelease release;
  // One update of a table and its state at a time.
  const WriteRegion exclusive(written.ranges, written.count);
  fns.reduce(plan, source, update);
  if (step_count) ++*step_count;
}

void optim_step(const std::string& kind_name, const py::handle& table_obj, const py::object& state1_obj,
                const py::object& state2_obj, const py::handle& ids_obj, const py::handle& grads_obj, double lr,
                double eps, double beta1, double beta2, double weight_decay, double bias_correction2, const py::object& step_obj) {
  OptimTable t = check_optim(kind_name, table_obj, state1_obj, state2_obj, step_obj);
  const py::array grads_in = require_array(grads_obj, "grads");
  require_float(grads_in, "grads");
  if (!grads_in.dtype().equal(t.table.dtype()))
    throw py::type_error("grads must have the table's dtype " + dtype_str(t.table) + ", got " + dtype_str(grads_in));
  const Ids ids = check_ids(ids_obj);
  check_values_shape(grads_in, ids, "grads", t.dim);
  // Read while the table and state are written: a view of them (grads=table[:4]) is copied first.
  const py::array grads = unshared(c_contiguous(grads_in), t.written());
  PlanStorage st;
  build_plan(ids, t.num_rows, st);  // every id is checked (and read, once) before the table is touched
  const Hyper h{lr, eps, beta1, beta2, weight_decay, bias_correction2};
  visit_float(t.kind, [&](auto ttag) {
    using T = decltype(ttag);
    GradSource<T> source;
    source.kind = SourceKind::values;
    source.dim = t.dim;
    source.values = cdata<T>(grads);
    apply_update<T>(t, st.plan, source, h);
  });
}

void optim_step_bags(const std::string& kind_name, const py::handle& table_obj, const py::object& state1_obj,
                     const py::object& state2_obj, const py::handle& grad_out_obj, const py::handle& ids_obj,
                     const py::object& offsets_obj, const std::string& mode_name, const py::object& weights_obj,
                     const py::object& argmax_obj, double lr, double eps, double beta1, double beta2,
                     double weight_decay, double bias_correction2, const py::object& step_obj) {
  OptimTable t = check_optim(kind_name, table_obj, state1_obj, state2_obj, step_obj);
  Bags bags = check_bags(grad_out_obj, ids_obj, offsets_obj, mode_name, weights_obj, argmax_obj);
  if (!bags.grad_out.dtype().equal(t.table.dtype()))
    throw py::type_error("grad_out must have the table's dtype " + dtype_str(t.table) + ", got " +
                         dtype_str(bags.grad_out));
  if (bags.dim != t.dim)
    throw py::value_error("grad_out must have the table's row length: shape (" + std::to_string(bags.num_bags) + ", " +
                          std::to_string(t.dim) + "), got " + shape_str(bags.grad_out));
  // Read while the table and state are written: views of them are copied first.
  bags.grad_out = unshared(bags.grad_out, t.written());
  if (bags.has_weights) bags.weights = unshared(bags.weights, t.written());
  if (bags.mode == PoolMode::max) bags.argmax = unshared(bags.argmax, t.written());
  PlanStorage st;
  build_plan(bags.ids, t.num_rows, st);
  const PooledArray<std::int64_t> bag_of = make_bag_of(bags.offsets, bags.ids.n);
  const Hyper h{lr, eps, beta1, beta2, weight_decay, bias_correction2};
  visit_float(t.kind, [&](auto ttag) {
    using T = decltype(ttag);
    apply_update<T>(t, st.plan, bag_source<T>(bags, bag_of.get()), h);
  });
}

// ---------------------------------------------------------------------------------------------
// Multi-table steps

Hyper hyper_of(const py::handle& params, std::size_t t) {
  if (!py::isinstance<py::dict>(params))
    throw py::type_error("params[" + std::to_string(t) + "] must be a dict of hyperparameters");
  const py::dict d = py::reinterpret_borrow<py::dict>(params);
  const auto get = [&](const char* key, double fallback) { return d.contains(key) ? d[key].cast<double>() : fallback; };
  return Hyper{get("lr", 0.0), get("eps", 0.0), get("beta1", 0.0), get("beta2", 0.0), get("weight_decay", 0.0),
               get("bias_correction2", 1.0)};
}

// One update of every table of a multi-table batch (embtab.optim.step_bags_multi): ids are checked
// against their tables (each read once, into a private array of global rows), then sorted once,
// then one parallel region updates every touched row of every table; each table's step count (if
// it keeps one) advances with its update, as optim_step_bags's does.
void optim_step_bags_multi(const std::string& kind_name, const py::handle& tables_obj, const py::handle& states1_obj,
                           const py::handle& states2_obj, const py::handle& steps_obj, const py::handle& grad_out_obj,
                           const py::handle& ids_obj, const py::handle& offsets_obj,
                           const py::object& feature_tables_obj, const py::object& modes_obj,
                           const py::object& weights_obj, const py::handle& params_obj) {
  const MultiBatch m = check_multi_batch(tables_obj, ids_obj, offsets_obj, feature_tables_obj, modes_obj, weights_obj,
                                         true);
  const std::size_t num_tables = m.tables.size();
  const auto per_table = [&](const py::handle& obj, const char* name) {
    if (!py::isinstance<py::sequence>(obj) || py::len(obj) != num_tables)
      throw py::value_error(std::string(name) + " must be a sequence with one entry per table (" +
                            std::to_string(num_tables) + ")");
    return py::reinterpret_borrow<py::sequence>(obj);
  };
  const py::sequence states1 = per_table(states1_obj, "states1"), states2 = per_table(states2_obj, "states2");
  const py::sequence steps = per_table(steps_obj, "steps"), params = per_table(params_obj, "params");
  std::vector<OptimTable> opt;
  std::vector<Hyper> hyper;
  for (std::size_t t = 0; t < num_tables; ++t) {
    opt.push_back(check_optim(kind_name, m.tables[t], states1[t], states2[t], steps[t]));
    hyper.push_back(hyper_of(params[t], t));
  }
  const py::array grad_out_in = require_array(grad_out_obj, "grad_out");
  require_float(grad_out_in, "grad_out");
  if (!grad_out_in.dtype().equal(m.tables[0].dtype()))
    throw py::type_error("grad_out must have the tables' dtype " + dtype_str(m.tables[0]) + ", got " +
                         dtype_str(grad_out_in));
  const std::vector<py::ssize_t> want{static_cast<py::ssize_t>(m.batch), static_cast<py::ssize_t>(m.width)};
  if (std::vector<py::ssize_t>(grad_out_in.shape(), grad_out_in.shape() + grad_out_in.ndim()) != want)
    throw py::value_error("grad_out must have the shape of the lookup's output (batch, sum of the features' dims) = " +
                          shape_str(want) + ", got " + shape_str(grad_out_in));
  // Read while the tables and states are written: views of them are copied first.
  std::vector<const py::array*> written;
  for (const OptimTable& t : opt)
    for (const py::array* a : t.written()) written.push_back(a);
  const py::array grad_out = unshared(c_contiguous(grad_out_in), written);
  const py::array weights = m.has_weights ? unshared(m.weights, written) : py::array();

  // Global ids (every id read once and checked against its table), then one plan over all of them.
  const std::int64_t n = m.ids.n;
  PooledArray<std::int64_t> global(static_cast<std::size_t>(n) + 1);
  const std::int64_t bad = visit_index(m.ids.kind, [&](auto itag) {
    using I = decltype(itag);
    const I* ids = cdata<I>(m.ids.array);
    std::int64_t* out = global.get();
    GilRelease release;
    return sparse_kernels().index<I>().global_ids(ids, m.offsets.data(), m.num_features, m.batch,
                                                   m.feature_table.data(), m.num_rows.data(), m.row_base.data(), out);
  });
  if (bad >= 0) throw_bad_multi_id(m, bad);
  PlanStorage st;
  const PlanBuffers buffers = plan_buffers(n, st);
  {
    const std::int64_t* ids = global.get();
    const std::int64_t total_rows = m.row_base.back();
    GilRelease release;
    sparse_kernels().index<std::int64_t>().plan(ids, n, total_rows, buffers, st.plan);
  }
  const PooledArray<std::int64_t> bag_of = make_bag_of(m.offsets, n);
  std::vector<unsigned char> feature_mean;
  for (PoolMode mode : m.modes) feature_mean.push_back(mode == PoolMode::mean ? 1 : 0);

  // Each table's written arrays (table, state, step count) as one region; regions are taken in
  // the order of their tables' addresses, so that two multi-table steps cannot deadlock.
  std::vector<std::size_t> order(num_tables);
  for (std::size_t t = 0; t < num_tables; ++t) order[t] = t;
  std::sort(order.begin(), order.end(),
            [&](std::size_t a, std::size_t b) { return opt[a].table.data() < opt[b].table.data(); });
  std::vector<OptimTable::Ranges> ranges(num_tables);
  std::vector<std::int64_t*> step_counts;
  for (std::size_t t : order) {
    ranges[t] = opt[t].written_ranges();
    if (opt[t].step_count) step_counts.push_back(opt[t].step_count);
  }

  visit_float(m.kind, [&](auto ttag) {
    using T = decltype(ttag);
    std::vector<Update<T>> updates;
    for (std::size_t t = 0; t < num_tables; ++t) updates.push_back(make_update<T>(opt[t], hyper[t]));
    MultiGradSource<T> source;
    source.batch = m.batch;
    source.grad_out = cdata<T>(grad_out);
    source.stride = m.width;
    source.feature_col = m.feature_col.data();
    source.feature_mean = feature_mean.data();
    source.bag_of = bag_of.get();
    source.offsets = m.offsets.data();
    source.weights = m.has_weights ? cdata<T>(weights) : nullptr;
    const SparseFns<T>& fns = sparse_kernels().get<T>();
    GilRelease release;
    std::vector<std::unique_ptr<WriteRegion>> held;
    for (std::size_t t : order)
      held.emplace_back(new WriteRegion(ranges[t].ranges, ranges[t].count));
    fns.reduce_multi(st.plan, source, updates.data(), m.dims.data(), m.row_base.data(),
                     static_cast<std::int64_t>(num_tables));
    for (std::int64_t* count : step_counts) ++*count;
  });
}

}  // namespace

void register_sparse(py::module_& m) {
  m.def("scatter_add", &scatter_add, py::arg("target"), py::arg("ids"), py::arg("values"),
        "target[ids] += values, like np.add.at; see embtab.scatter_add.");
  m.def("coalesce", &coalesce, py::arg("ids"), py::arg("values"),
        "(sorted unique rows, summed values); see embtab.coalesce.");
  m.def("bags_grad", &bags_grad, py::arg("grad_out"), py::arg("ids"), py::arg("offsets") = py::none(),
        py::arg("mode") = "sum", py::arg("weights") = py::none(), py::arg("argmax") = py::none(),
        py::arg("num_rows") = -1, "Coalesced gradient of gather_bags; see embtab.gather_bags_grad.");
  m.def("check_optim_table", &check_optim_table, py::arg("table"),
        "The table of an optimizer, checked (TypeError / ValueError); see embtab.optim.");
  m.def("optim_step", &optim_step, py::arg("kind"), py::arg("table"), py::arg("state1"), py::arg("state2"),
        py::arg("ids"), py::arg("grads"), py::arg("lr"), py::arg("eps") = 0.0, py::arg("beta1") = 0.0,
        py::arg("beta2") = 0.0, py::arg("weight_decay") = 0.0, py::arg("bias_correction2") = 1.0,
        py::arg("step") = py::none(),
        "One sparse optimizer step (advancing the 0-d int64 `step` count, if given); see embtab.optim.");
  m.def("optim_step_bags", &optim_step_bags, py::arg("kind"), py::arg("table"), py::arg("state1"), py::arg("state2"),
        py::arg("grad_out"), py::arg("ids"), py::arg("offsets") = py::none(), py::arg("mode") = "sum",
        py::arg("weights") = py::none(), py::arg("argmax") = py::none(), py::arg("lr") = 0.0, py::arg("eps") = 0.0,
        py::arg("beta1") = 0.0, py::arg("beta2") = 0.0, py::arg("weight_decay") = 0.0, py::arg("bias_correction2") = 1.0,
        py::arg("step") = py::none(),
        "Fused bag gradient + sparse optimizer step (advancing `step`, if given); see embtab.optim.");
  m.def("optim_step_bags_multi", &optim_step_bags_multi, py::arg("kind"), py::arg("tables"), py::arg("states1"),
        py::arg("states2"), py::arg("steps"), py::arg("grad_out"), py::arg("ids"), py::arg("offsets"),
        py::arg("feature_tables") = py::none(), py::arg("mode") = "sum", py::arg("weights") = py::none(),
        py::arg("params") = py::list(), "One fused step of many tables; see embtab.optim.step_bags_multi.");
}

}  // namespace bind
}  // namespace embtab
