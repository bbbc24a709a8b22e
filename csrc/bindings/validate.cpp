#include "bindings/validate.hpp"

#include "kernels/buffer_pool.hpp"

#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <sstream>
#include <utility>

namespace embtab {
namespace bind {

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

std::string shape_str(const std::vector<py::ssize_t>& shape) {
  std::ostringstream s;
  s << '(';
  for (std::size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  if (shape.size() == 1) s << ',';
  s << ')';
  return s.str();
}

std::string shape_str(const py::array& a) {
  return shape_str(std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim()));
}

std::string position_str(const char* name, const std::vector<py::ssize_t>& shape, std::int64_t flat) {
  if (shape.empty()) return name;
  std::vector<std::int64_t> index(shape.size(), 0);
  for (std::size_t k = shape.size(); k-- > 0;) {
    const std::int64_t extent = shape[k] > 0 ? shape[k] : 1;
    index[k] = flat % extent;
    flat /= extent;
  }
  std::ostringstream s;
  s << name << '[';
  for (std::size_t k = 0; k < index.size(); ++k) s << (k ? ", " : "") << index[k];
  s << ']';
  return s.str();
}

py::array require_array(const py::handle& obj, const char* name) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + " must be a numpy array, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  return py::reinterpret_borrow<py::array>(obj);
}

FloatKind require_float(const py::array& a, const char* name) {
  if (a.dtype().equal(py::dtype::of<float>())) return FloatKind::f32;
  if (a.dtype().equal(py::dtype::of<double>())) return FloatKind::f64;
  throw py::type_error(std::string(name) + " must have dtype float32 or float64, got " + dtype_str(a));
}

IndexKind require_index(const py::array& a, const char* name) {
  if (a.dtype().equal(py::dtype::of<std::int32_t>())) return IndexKind::i32;
  if (a.dtype().equal(py::dtype::of<std::int64_t>())) return IndexKind::i64;
  throw py::type_error(std::string(name) + " must be an integer array of dtype int32 or int64, got " +
                       dtype_str(a));
}

void require_ndim(const py::array& a, py::ssize_t ndim, const char* name) {
  if (a.ndim() != ndim)
    throw py::value_error(std::string(name) + " must be " + std::to_string(ndim) + "-D, got shape " +
                          shape_str(a));
}

py::array c_contiguous(const py::array& a) {
  if (a.flags() & py::array::c_style) return a;
  return py::module_::import("numpy").attr("ascontiguousarray")(a).cast<py::array>();
}

void require_output(const py::array& out, const py::dtype& dtype, const std::vector<py::ssize_t>& shape,
                    const char* name) {
  if (!out.dtype().equal(dtype))
    throw py::type_error(std::string(name) + " must have dtype " + py::str(dtype).cast<std::string>() + ", got " +
                         dtype_str(out));
  const std::vector<py::ssize_t> actual(out.shape(), out.shape() + out.ndim());
  if (actual != shape)
    throw py::value_error(std::string(name) + " must have shape " + shape_str(shape) + ", got " + shape_str(out));
  if (!(out.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + " must be C-contiguous (it is written in place, never copied)");
  if (!out.writeable()) throw py::value_error(std::string(name) + " is read-only");
}

py::array aligned_empty(const py::dtype& dtype, const std::vector<py::ssize_t>& shape) {
  py::ssize_t count = 1;
  for (py::ssize_t extent : shape) count *= extent;
  const std::size_t bytes = static_cast<std::size_t>(count) * static_cast<std::size_t>(dtype.itemsize());
  if (bytes < kMinPooledBytes) {
    // Small outputs: numpy's allocator, over-allocated by 64 bytes and viewed from a 64-byte
    // boundary (through numpy's C API: no call into Python).
    constexpr py::ssize_t kAlign = 64;
    py::array_t<std::uint8_t> buffer(static_cast<py::ssize_t>(bytes) + kAlign);
    const auto address = reinterpret_cast<std::uintptr_t>(buffer.data());
    const std::size_t skip = static_cast<std::size_t>((kAlign - address % kAlign) % kAlign);
    return py::array(dtype, shape, buffer.mutable_data() + skip, buffer);
  }
  // Large outputs: a reusable block from the buffer pool, returned to it when the array dies.
  std::size_t capacity = 0;
  void* block = pool_acquire(bytes, &capacity);
  struct Owner {
    void* block;
    std::size_t capacity;
  };
  auto* owner = new Owner{block, capacity};
  py::capsule base(owner, [](void* p) {
    auto* o = static_cast<Owner*>(p);
    pool_release(o->block, o->capacity);
    delete o;
  });
  return py::array(dtype, shape, block, base);
}

namespace {

// [first, last) byte addresses that the elements of a span; first == last when it has none.
std::pair<std::uintptr_t, std::uintptr_t> memory_extent(const py::array& a) {
  if (a.size() == 0) return {0, 0};
  std::uintptr_t first = reinterpret_cast<std::uintptr_t>(a.data()), last = first;
  for (py::ssize_t k = 0; k < a.ndim(); ++k) {
    const py::ssize_t span = a.strides(k) * (a.shape(k) - 1);
    if (span < 0)
      first -= static_cast<std::uintptr_t>(-span);
    else
      last += static_cast<std::uintptr_t>(span);
  }
  return {first, last + static_cast<std::uintptr_t>(a.itemsize())};
}

}  // namespace

bool may_share_memory(const py::array& a, const py::array& b) {
  const auto x = memory_extent(a), y = memory_extent(b);
  return x.first < x.second && y.first < y.second && x.first < y.second && y.first < x.second;
}

Output::Output(const py::object& out, const py::dtype& dtype, const std::vector<py::ssize_t>& shape,
               std::initializer_list<const py::array*> inputs)
    : result_(prepare_output(out, dtype, shape)), target_(result_), callers_(!out.is_none()) {
  bool overlap = false;
  for (const py::array* input : inputs)
    if (callers_ && input != nullptr && input->ptr() != nullptr) overlap = overlap || may_share_memory(result_, *input);
  if (overlap) target_ = aligned_empty(dtype, shape);
  result_data_ = result_.mutable_data();
  target_data_ = target_.mutable_data();
  bytes_ = static_cast<std::size_t>(result_.nbytes());
}

void Output::finish() {
  if (target_data_ != result_data_) std::memcpy(result_data_, target_data_, bytes_);
}

std::vector<std::int64_t> check_offsets(const py::handle& offsets_obj, std::int64_t num_ids, bool include_last_offset) {
  const py::array offsets = require_array(offsets_obj, "offsets");
  const IndexKind kind = require_index(offsets, "offsets");
  require_ndim(offsets, 1, "offsets");
  const py::ssize_t n = offsets.shape(0);
  if (include_last_offset && n < 1)
    throw py::value_error("offsets must have num_bags + 1 >= 1 entries, got an empty array");
  // The CSR form: torch-style offsets (include_last_offset=False) get the end of the last bag.
  std::vector<std::int64_t> result(static_cast<std::size_t>(n) + (include_last_offset ? 0 : 1));
  const py::array contiguous = c_contiguous(offsets);
  visit_index(kind, [&](auto tag) {
    using I = decltype(tag);
    const I* p = cdata<I>(contiguous);
    for (py::ssize_t i = 0; i < n; ++i) result[static_cast<std::size_t>(i)] = static_cast<std::int64_t>(p[i]);
  });
  if (!include_last_offset) {
    result.back() = num_ids;
    if (n == 0 && num_ids != 0)
      throw py::value_error("offsets is empty (no bags) but ids has " + std::to_string(num_ids) + " entries");
  }
  if (result[0] != 0) throw py::value_error("offsets[0] must be 0, got " + std::to_string(result[0]));
  const std::size_t given = static_cast<std::size_t>(n);
  for (std::size_t i = 1; i < given; ++i)
    if (result[i] < result[i - 1])
      throw py::value_error("offsets must be non-decreasing, but offsets[" + std::to_string(i) + "] = " +
                            std::to_string(result[i]) + " < offsets[" + std::to_string(i - 1) + "] = " +
                            std::to_string(result[i - 1]));
  if (!include_last_offset) {
    if (n > 0 && result[given - 1] > num_ids)
      throw py::value_error("offsets[-1] = " + std::to_string(result[given - 1]) + " starts a bag past the end of ids (len(ids) = " +
                            std::to_string(num_ids) + ")");
  } else if (result.back() != num_ids) {
    // The common mistake: torch's default offsets (one start per bag) given where CSR is expected.
    const std::string hint = result.back() < num_ids
                                 ? "; for offsets that hold only the start of each bag (torch's default), pass "
                                   "include_last_offset=False"
                                 : "";
    throw py::value_error("offsets[-1] must equal len(ids) = " + std::to_string(num_ids) + ", got " +
                          std::to_string(result.back()) + hint);
  }
  return result;
}

std::vector<std::int64_t> bag_offsets(const py::array& ids, const py::object& offsets_obj, bool include_last_offset) {
  std::vector<std::int64_t> offsets;
  if (ids.ndim() == 2) {
    if (!offsets_obj.is_none())
      throw py::value_error("offsets must be None when ids is 2-D (num_bags, bag_len); got offsets with 2-D ids " +
                            shape_str(ids));
    const std::int64_t num_bags = ids.shape(0), bag_len = ids.shape(1);
    offsets.resize(static_cast<std::size_t>(num_bags) + 1);
    for (std::int64_t b = 0; b <= num_bags; ++b) offsets[static_cast<std::size_t>(b)] = b * bag_len;
  } else if (ids.ndim() == 1) {
    if (offsets_obj.is_none())
      throw py::value_error("offsets is required when ids is 1-D (CSR bags); pass 2-D ids for fixed-length bags");
    offsets = check_offsets(offsets_obj, ids.shape(0), include_last_offset);
  } else {
    throw py::value_error("ids must be 1-D with offsets, or 2-D (num_bags, bag_len), got shape " + shape_str(ids));
  }
  return offsets;
}

PoolMode parse_mode(const std::string& mode) {
  if (mode == "sum") return PoolMode::sum;
  if (mode == "mean") return PoolMode::mean;
  if (mode == "max") return PoolMode::max;
  throw py::value_error("mode must be 'sum', 'mean' or 'max', got '" + mode + "'");
}

py::array prepare_output(const py::object& out, const py::dtype& dtype, const std::vector<py::ssize_t>& shape) {
  if (out.is_none()) return aligned_empty(dtype, shape);
  py::array given = require_array(out, "out");
  require_output(given, dtype, shape, "out");
  return given;
}

Ids check_ids(const py::handle& obj) {
  const py::array ids = require_array(obj, "ids");
  const IndexKind kind = require_index(ids, "ids");
  const py::array flat = c_contiguous(ids);
  return Ids{flat, kind, static_cast<std::int64_t>(flat.size())};
}

LookupBags check_lookup_bags(const py::handle& ids_obj, const py::object& offsets_obj, const std::string& mode_name,
                             const py::object& weights_obj, const py::dtype& weight_dtype,
                             const std::string& dtype_owner, bool return_argmax, std::int64_t dim) {
  LookupBags bags;
  bags.mode = parse_mode(mode_name);
  bags.ids = check_ids(ids_obj);
  bags.offsets = bag_offsets(bags.ids.array, offsets_obj);
  bags.num_bags = static_cast<std::int64_t>(bags.offsets.size()) - 1;
  bags.has_weights = check_bag_weights(weights_obj, bags.mode, weight_dtype, dtype_owner, bags.ids.array, &bags.weights);
  if (return_argmax && bags.mode != PoolMode::max) throw py::value_error("return_argmax=True requires mode='max'");
  bags.argmax = py::none();
  if (return_argmax) {
    py::array_t<std::int64_t> argmax(std::vector<py::ssize_t>{bags.num_bags, dim});
    bags.argmax_data = argmax.mutable_data();
    bags.argmax = argmax;
  }
  return bags;
}

bool parse_bounds(const std::string& bounds) {
  if (bounds == "raise") return false;
  if (bounds == "zero") return true;
  throw py::value_error("bounds must be 'raise' or 'zero', got '" + bounds + "'");
}

py::object lookup_result(const py::array& out, const py::object& argmax, bool zero_invalid, std::int64_t num_invalid) {
  if (argmax.is_none() && !zero_invalid) return out;
  py::list result;
  result.append(out);
  if (!argmax.is_none()) result.append(argmax);
  if (zero_invalid) result.append(num_invalid);
  return py::tuple(result);
}

bool check_bag_weights(const py::object& weights_obj, PoolMode mode, const py::dtype& dtype,
                       const std::string& dtype_owner, const py::array& ids, py::array* weights) {
  if (weights_obj.is_none()) return false;
  if (mode == PoolMode::max) throw py::value_error("weights are only supported with mode 'sum' or 'mean', not 'max'");
  const py::array w = require_array(weights_obj, "weights");
  if (!w.dtype().equal(dtype)) throw py::type_error("weights must have " + dtype_owner + ", got " + dtype_str(w));
  const std::vector<py::ssize_t> wshape(w.shape(), w.shape() + w.ndim()), ishape(ids.shape(), ids.shape() + ids.ndim());
  if (wshape != ishape)
    throw py::value_error("weights must have the shape of ids " + shape_str(ids) + ", got " + shape_str(w));
  *weights = c_contiguous(w);
  return true;
}

namespace {

std::string item_name(const char* name, std::size_t i) { return std::string(name) + "[" + std::to_string(i) + "]"; }

// A str, or a sequence of them (never a str's characters).
std::vector<std::string> strings(const py::object& obj, std::size_t count, const char* name) {
  if (py::isinstance<py::str>(obj)) return std::vector<std::string>(count, obj.cast<std::string>());
  if (!py::isinstance<py::sequence>(obj))
    throw py::type_error(std::string(name) + " must be a str or a sequence of str, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  const py::sequence seq = py::reinterpret_borrow<py::sequence>(obj);
  if (seq.size() != count)
    throw py::value_error(std::string(name) + " must have one entry per feature (" + std::to_string(count) +
                          "), got " + std::to_string(seq.size()));
  std::vector<std::string> out;
  for (std::size_t i = 0; i < count; ++i) {
    const py::object item = seq[i];
    if (!py::isinstance<py::str>(item)) throw py::type_error(item_name(name, i) + " must be a str");
    out.push_back(item.cast<std::string>());
  }
  return out;
}

}  // namespace

MultiBatch check_multi_batch(const py::handle& tables_obj, const py::handle& ids_obj, const py::handle& offsets_obj,
                             const py::object& feature_tables_obj, const py::object& modes_obj,
                             const py::object& weights_obj, bool in_place) {
  MultiBatch m;
  if (!py::isinstance<py::sequence>(tables_obj) || py::isinstance<py::str>(tables_obj))
    throw py::type_error("tables must be a sequence of numpy arrays, got " +
                         py::str(py::type::of(tables_obj).attr("__name__")).cast<std::string>());
  const py::sequence tables = py::reinterpret_borrow<py::sequence>(tables_obj);
  if (tables.size() == 0) throw py::value_error("tables must not be empty");
  m.row_base.push_back(0);
  for (std::size_t t = 0; t < tables.size(); ++t) {
    const std::string name = item_name("tables", t);
    py::array table = require_array(tables[t], name.c_str());
    const FloatKind kind = require_float(table, name.c_str());
    if (t == 0) m.kind = kind;
    if (kind != m.kind)
      throw py::type_error(name + " must have the dtype of tables[0] (" + dtype_str(m.tables[0]) + "), got " +
                           dtype_str(table));
    require_ndim(table, 2, name.c_str());
    if (in_place) {
      if (!(table.flags() & py::array::c_style))
        throw py::value_error(name + " must be C-contiguous (it is updated in place, never copied)");
      if (!table.writeable()) throw py::value_error(name + " is read-only (it is updated in place)");
      const char* begin = static_cast<const char*>(table.data());
      for (std::size_t u = 0; u < t; ++u) {
        const char* other = static_cast<const char*>(m.tables[u].data());
        if (begin < other + m.tables[u].nbytes() && other < begin + table.nbytes())
          throw py::value_error(name + " shares memory with " + item_name("tables", u) +
                                " (each table is updated once per step)");
      }
    } else {
      table = c_contiguous(table);
    }
    m.num_rows.push_back(table.shape(0));
    m.dims.push_back(table.shape(1));
    m.row_base.push_back(m.row_base.back() + table.shape(0));
    m.tables.push_back(table);
  }
  const std::int64_t num_tables = static_cast<std::int64_t>(m.tables.size());
  if (feature_tables_obj.is_none()) {
    for (std::int64_t t = 0; t < num_tables; ++t) m.feature_table.push_back(t);
  } else {
    if (!py::isinstance<py::sequence>(feature_tables_obj))
      throw py::type_error("feature_tables must be a sequence of table indices");
    const py::sequence seq = py::reinterpret_borrow<py::sequence>(feature_tables_obj);
    for (std::size_t f = 0; f < seq.size(); ++f) {
      const py::object item = seq[f];
      if (!py::isinstance<py::int_>(item) || py::isinstance<py::bool_>(item))
        throw py::type_error(item_name("feature_tables", f) + " must be an int");
      const std::int64_t t = item.cast<std::int64_t>();
      if (t < 0 || t >= num_tables)
        throw py::value_error(item_name("feature_tables", f) + " = " + std::to_string(t) + " is not a table index (" +
                              std::to_string(num_tables) + " tables)");
      m.feature_table.push_back(t);
    }
    if (m.feature_table.empty()) throw py::value_error("feature_tables must not be empty");
  }
  m.num_features = static_cast<std::int64_t>(m.feature_table.size());
  for (std::int64_t f = 0; f < m.num_features; ++f) {
    m.feature_col.push_back(m.width);
    m.width += m.dims[static_cast<std::size_t>(m.feature_table[static_cast<std::size_t>(f)])];
  }
  m.ids = check_ids(ids_obj);
  require_ndim(m.ids.array, 1, "ids");
  m.offsets = check_offsets(offsets_obj, m.ids.n);
  const std::int64_t num_bags = static_cast<std::int64_t>(m.offsets.size()) - 1;
  if (num_bags % m.num_features != 0)
    throw py::value_error("offsets must have num_features * batch + 1 entries (" + std::to_string(m.num_features) +
                          " features), got " + std::to_string(num_bags + 1));
  m.batch = num_bags / m.num_features;
  for (const std::string& mode : strings(modes_obj, static_cast<std::size_t>(m.num_features), "mode")) {
    const PoolMode p = parse_mode(mode);
    if (p == PoolMode::max) throw py::value_error("multi-table bags pool with mode 'sum' or 'mean', got 'max'");
    m.modes.push_back(p);
  }
  m.has_weights = check_bag_weights(weights_obj, PoolMode::sum, m.tables[0].dtype(),
                                    "the tables' dtype " + dtype_str(m.tables[0]), m.ids.array, &m.weights);
  return m;
}

void throw_bad_multi_id(const MultiBatch& batch, std::int64_t pos) {
  std::int64_t f = 0;
  while (f + 1 < batch.num_features && batch.offsets[static_cast<std::size_t>((f + 1) * batch.batch)] <= pos) ++f;
  const std::size_t t = static_cast<std::size_t>(batch.feature_table[static_cast<std::size_t>(f)]);
  try {
    throw_bad_id(batch.ids.array, pos, batch.num_rows[t]);
  } catch (py::index_error& e) {
    throw py::index_error(std::string(e.what()) + " (feature " + std::to_string(f) + ", table " + std::to_string(t) +
                          ")");
  }
}

void throw_bad_id(const py::array& ids, std::int64_t pos, std::int64_t num_rows, const char* name) {
  const py::array flat = c_contiguous(ids);
  std::int64_t value = 0;
  visit_index(require_index(ids, name), [&](auto tag) {
    using I = decltype(tag);
    value = static_cast<std::int64_t>(cdata<I>(flat)[pos]);
  });
  if (value >= 0 && value < num_rows) {
    // The kernel found a bad id here, but it reads valid now: another thread rewrote the array
    // during the call. Say so rather than call a valid id out of bounds.
    const std::vector<py::ssize_t> shape(ids.shape(), ids.shape() + ids.ndim());
    throw py::index_error(position_str(name, shape, pos) + " was out of bounds for a table with " +
                          std::to_string(num_rows) + " rows when it was read, but now holds " + std::to_string(value) +
                          " (was the array changed by another thread during the call?)");
  }
  throw_id_error(ids, pos, value, num_rows, name);
}

void throw_id_error(const py::array& ids, std::int64_t pos, std::int64_t value, std::int64_t num_rows,
                    const char* name) {
  const std::vector<py::ssize_t> shape(ids.shape(), ids.shape() + ids.ndim());
  const std::string where = position_str(name, shape, pos) + " = " + std::to_string(value);
  if (num_rows < 0) throw py::index_error(where + " is negative (ids are row numbers, >= 0)");
  throw py::index_error(where + (value < 0 ? " is negative" : " is out of bounds") + " for a table with " +
                        std::to_string(num_rows) + " rows (valid ids are 0 to " + std::to_string(num_rows - 1) +
                        ")");
}

namespace {

// The bag boundaries as CSR int64 offsets, every argument checked as a pooled lookup checks it, and
// with num_rows >= 0 every id checked against the table (IndexError naming its position in ids as
// given, e.g. "ids[1, 1]"). The Python layer uses it before it rewrites bags itself (leaving out
// padding or dropped entries), so that errors name what the caller passed.
py::array checked_bag_offsets(const py::handle& ids_obj, const py::object& offsets_obj, bool include_last_offset,
                              std::int64_t num_rows) {
  const Ids ids = check_ids(ids_obj);
  const std::vector<std::int64_t> offsets = bag_offsets(ids.array, offsets_obj, include_last_offset);
  if (num_rows >= 0) {
    visit_index(ids.kind, [&](auto tag) {
      using I = decltype(tag);
      const I* p = cdata<I>(ids.array);
      for (std::int64_t i = 0; i < ids.n; ++i)
        if (p[i] < 0 || static_cast<std::int64_t>(p[i]) >= num_rows) throw_bad_id(ids.array, i, num_rows);
    });
  }
  py::array_t<std::int64_t> result(static_cast<py::ssize_t>(offsets.size()));
  std::copy(offsets.begin(), offsets.end(), result.mutable_data());
  return std::move(result);
}

}  // namespace

void register_validate(py::module_& m) {
  m.def("bag_offsets", &checked_bag_offsets, py::arg("ids"), py::arg("offsets"), py::arg("include_last_offset") = true,
        py::arg("num_rows") = -1, "Checked CSR offsets of a pooled lookup's bags; see embtab.gather_bags.");
}

py::array unshared(const py::array& input, const std::vector<const py::array*>& written) {
  for (const py::array* w : written)
    if (w && may_share_memory(input, *w))
      return py::module_::import("numpy").attr("array")(input, py::arg("copy") = true, py::arg("order") = "C")
          .cast<py::array>();
  return input;
}

}  // namespace bind
}  // namespace embtab
