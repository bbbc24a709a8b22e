// DynamicTable: argument checks, GIL release and dispatch to the dynamic hash-table kernel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bindings/gil.hpp"
#include "bindings/register.hpp"
#include "bindings/validate.hpp"
#include "kernels/buffer_pool.hpp"
#include "kernels/dynamic_table.hpp"

namespace embtab {
namespace bind {
namespace {

using Shape = std::vector<py::ssize_t>;
using TablePtr = std::shared_ptr<DynamicTable>;

// Runs a kernel call with the GIL released; a closed table is a ValueError, as for a closed file.
template <class F>
auto call(F&& f) -> decltype(f()) {
  try {
    GilRelease release;
    return f();
  } catch (const DynamicTableClosed& e) {
    throw py::value_error("the DynamicTable is closed");
  }
}

// --- constructor arguments ----------------------------------------------------------------------

std::int64_t int_arg(const py::handle& obj, const char* name, std::int64_t minimum) {
  if (py::isinstance<py::bool_>(obj) || !PyIndex_Check(obj.ptr()))
    throw py::type_error(std::string(name) + " must be an integer, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  const py::int_ value = py::reinterpret_steal<py::int_>(PyNumber_Index(obj.ptr()));
  if (!value) throw py::error_already_set();
  if (value < py::int_(minimum))
    throw py::value_error(std::string(name) + " must be >= " + std::to_string(minimum) + ", got " +
                          py::str(value).cast<std::string>());
  if (value > py::int_(std::numeric_limits<std::int64_t>::max()))
    throw py::value_error(std::string(name) + " is too large, got " + py::str(value).cast<std::string>());
  return value.cast<std::int64_t>();
}

// None, or an integer >= minimum; -1 stands for None.
std::int64_t optional_int_arg(const py::handle& obj, const char* name, std::int64_t minimum) {
  return obj.is_none() ? -1 : int_arg(obj, name, minimum);
}

TablePtr make_table(const py::handle& dim_obj, const py::handle& dtype_obj, const std::string& init,
                    const py::handle& std_obj, std::uint64_t seed, const py::handle& capacity_obj,
                    const py::handle& max_rows_obj, const py::handle& admit_after_obj, const std::string& evict,
                    const py::handle& ttl_obj) {
  DynamicConfig c;
  c.dim = int_arg(dim_obj, "dim", 1);
  const py::dtype dtype = py::dtype::from_args(py::reinterpret_borrow<py::object>(dtype_obj));
  if (dtype.equal(py::dtype::of<float>()))
    c.elem_bytes = 4;
  else if (dtype.equal(py::dtype::of<double>()))
    c.elem_bytes = 8;
  else
    throw py::type_error("dtype must be float32 or float64, got " + py::str(dtype).cast<std::string>());
  double std_dev = -1.0;
  if (!std_obj.is_none()) {
    std_dev = std_obj.cast<double>();
    if (!(std_dev >= 0.0) || std::isinf(std_dev))
      throw py::value_error("std must be >= 0 and finite, got " + py::repr(std_obj).cast<std::string>());
  }
  if (init == "normal") {
    c.init = InitKind::normal;
    c.scale = std_dev >= 0 ? std_dev : 1.0;
  } else if (init == "uniform") {
    c.init = InitKind::uniform;
    c.scale = std_dev >= 0 ? std::sqrt(3.0) * std_dev : 1.0 / static_cast<double>(c.dim);
  } else if (init == "zeros") {
    c.init = InitKind::zeros;
    c.scale = 0.0;
  } else {
    throw py::value_error("init must be 'normal', 'uniform' or 'zeros', got '" + init + "'");
  }
  c.seed = seed;
  c.capacity = int_arg(capacity_obj, "capacity", 0);
  c.max_rows = optional_int_arg(max_rows_obj, "max_rows", 1);
  c.admit_after = int_arg(admit_after_obj, "admit_after", 1);
  if (evict == "lru")
    c.evict = EvictPolicy::lru;
  else if (evict == "lfu")
    c.evict = EvictPolicy::lfu;
  else
    throw py::value_error("evict must be 'lru' or 'lfu', got '" + evict + "'");
  c.ttl = optional_int_arg(ttl_obj, "ttl", 0);
  if (c.max_rows > std::numeric_limits<std::int32_t>::max() || c.capacity > std::numeric_limits<std::int32_t>::max())
    throw py::value_error("a DynamicTable holds at most 2**31 - 1 rows");
  return std::make_shared<DynamicTable>(c);
}

// --- keys ---------------------------------------------------------------------------------------

// Keys: an int64 array (int32 is widened, uint64 accepted below 2**63), C-contiguous, read by the
// kernel once. Anything else is a TypeError.
py::array check_keys(const py::handle& obj) {
  const py::array keys = require_array(obj, "keys");
  const py::dtype dtype = keys.dtype();
  if (dtype.equal(py::dtype::of<std::int64_t>())) return c_contiguous(keys);
  if (dtype.equal(py::dtype::of<std::int32_t>())) return keys.attr("astype")(py::dtype::of<std::int64_t>()).cast<py::array>();
  if (dtype.equal(py::dtype::of<std::uint64_t>())) {
    const py::array contiguous = c_contiguous(keys);
    const Shape shape(keys.shape(), keys.shape() + keys.ndim());
    py::array_t<std::int64_t> out(shape);
    const std::uint64_t* in = cdata<std::uint64_t>(contiguous);
    std::int64_t* o = out.mutable_data();
    for (py::ssize_t i = 0; i < contiguous.size(); ++i) {
      const std::uint64_t k = in[i];
      if (k > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        throw py::type_error(position_str("keys", shape, i) + " = " + std::to_string(k) +
                             " does not fit in int64 (uint64 keys must be below 2**63)");
      o[i] = static_cast<std::int64_t>(k);
    }
    return std::move(out);
  }
  throw py::type_error("keys must be integers (int64, or str / bytes, which embtab.DynamicTable hashes to int64), got " +
                       dtype_str(keys));
}

Shape shape_of(const py::array& a) { return Shape(a.shape(), a.shape() + a.ndim()); }

py::array lookup(const TablePtr& t, const py::handle& keys_obj, bool insert) {
  const py::array keys = check_keys(keys_obj);
  py::array rows = aligned_empty(py::dtype::of<std::int64_t>(), shape_of(keys));
  const std::int64_t* k = cdata<std::int64_t>(keys);
  std::int64_t* r = wdata<std::int64_t>(rows);
  const std::int64_t n = keys.size();
  call([&] { t->lookup(k, n, insert, r); });
  return rows;
}

py::dtype table_dtype(const TablePtr& t) {
  return t->config().elem_bytes == 4 ? py::dtype::of<float>() : py::dtype::of<double>();
}

template <class F>
decltype(auto) visit_table(const TablePtr& t, F&& f) {
  return visit_float(t->config().elem_bytes == 4 ? FloatKind::f32 : FloatKind::f64, std::forward<F>(f));
}

py::array gather(const TablePtr& t, const py::handle& keys_obj, bool insert) {
  const py::array keys = check_keys(keys_obj);
  Shape shape = shape_of(keys);
  shape.push_back(t->config().dim);
  py::array out = aligned_empty(table_dtype(t), shape);
  const std::int64_t n = keys.size();
  PooledArray<std::int64_t> rows(static_cast<std::size_t>(n) + 1);
  visit_table(t, [&](auto tag) {
    using T = decltype(tag);
    const std::int64_t* k = cdata<std::int64_t>(keys);
    T* o = wdata<T>(out);
    call([&] { t->gather<T>(k, n, insert, rows.get(), o); });
  });
  return out;
}

// Returns out, then argmax (return_argmax) and rows (return_rows) when asked for.
py::object gather_bags(const TablePtr& t, const py::handle& keys_obj, const py::object& offsets_obj,
                       const std::string& mode, const py::object& weights_obj, bool insert, bool return_argmax,
                       bool return_rows) {
  const py::array keys = check_keys(keys_obj);
  const py::dtype dtype = table_dtype(t);
  const std::int64_t dim = t->config().dim;
  const LookupBags bags = check_lookup_bags(keys, offsets_obj, mode, weights_obj, dtype,
                                            "the table's dtype " + py::str(dtype).cast<std::string>(), return_argmax,
                                            dim);
  py::array out = aligned_empty(dtype, {static_cast<py::ssize_t>(bags.num_bags), static_cast<py::ssize_t>(dim)});
  py::array rows = aligned_empty(py::dtype::of<std::int64_t>(), shape_of(keys));
  visit_table(t, [&](auto tag) {
    using T = decltype(tag);
    const std::int64_t* k = cdata<std::int64_t>(bags.ids.array);
    const T* w = bags.has_weights ? cdata<T>(bags.weights) : nullptr;
    T* o = wdata<T>(out);
    std::int64_t* r = wdata<std::int64_t>(rows);
    call([&] { t->gather_bags<T>(k, bags.offsets.data(), bags.num_bags, insert, w, bags.mode, r, o, bags.argmax_data); });
  });
  if (!return_argmax && !return_rows) return out;
  py::list result;
  result.append(out);
  if (return_argmax) result.append(bags.argmax);
  if (return_rows) result.append(rows);
  return py::tuple(result);
}

py::dict int_dict(std::initializer_list<std::pair<const char*, std::int64_t>> items) {
  py::dict d;
  for (const auto& item : items) d[item.first] = item.second;
  return d;
}

py::array int64_array(const std::vector<std::int64_t>& v) {
  py::array_t<std::int64_t> a(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), a.mutable_data());
  return std::move(a);
}

template <class T>
std::vector<T> vector_of(const py::dict& d, const char* name, const py::dtype& dtype) {
  const py::array a = require_array(d[name], name);
  if (!a.dtype().equal(dtype))
    throw py::type_error(std::string(name) + " must have dtype " + py::str(dtype).cast<std::string>() + ", got " +
                         dtype_str(a));
  require_ndim(a, 1, name);
  const py::array c = c_contiguous(a);
  const T* p = cdata<T>(c);
  return std::vector<T>(p, p + c.size());
}

// A view of a column's rows (the rows in use; with the sink row too if `with_sink`), keeping its
// block alive.
py::array column_view(const TablePtr& t, int column, bool with_sink) {
  if (column < 0 || column >= call([&] { return t->num_columns(); })) throw py::index_error("no such column");
  std::int64_t in_use = 0;
  std::shared_ptr<RowBlock> block = call([&] { return t->column(column, &in_use); });
  const std::int64_t rows = with_sink ? block->rows() : in_use;
  const std::int64_t width = block->row_bytes() / t->config().elem_bytes;
  auto* owner = new std::shared_ptr<RowBlock>(block);
  py::capsule base(owner, [](void* p) { delete static_cast<std::shared_ptr<RowBlock>*>(p); });
  return py::array(table_dtype(t), {static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(width)}, block->data(),
                   base);
}

py::dict snapshot(const TablePtr& t) {
  const DynamicSnapshot s = call([&] { return t->snapshot(); });
  py::dict d = int_dict({{"high_water", s.high_water}, {"step", s.step}, {"call", s.call}, {"hits", s.hits},
                         {"misses", s.misses}, {"admitted", s.admitted}, {"evicted", s.evicted}});
  d["keys"] = int64_array(s.keys);
  d["rows"] = int64_array(s.rows);
  py::array_t<std::uint32_t> counts(static_cast<py::ssize_t>(s.counts.size()));
  std::copy(s.counts.begin(), s.counts.end(), counts.mutable_data());
  d["counts"] = counts;
  py::array_t<std::uint64_t> stamps(static_cast<py::ssize_t>(s.stamps.size()));
  std::copy(s.stamps.begin(), s.stamps.end(), stamps.mutable_data());
  d["stamps"] = stamps;
  d["free_rows"] = int64_array(s.free_rows);
  d["last_evicted"] = int64_array(s.last_evicted);
  return d;
}

// Rebuilds a new table from snapshot(); `columns` holds one (high_water, width) array per column.
void restore(const TablePtr& t, const py::dict& d, const py::list& columns) {
  DynamicSnapshot s;
  s.keys = vector_of<std::int64_t>(d, "keys", py::dtype::of<std::int64_t>());
  s.rows = vector_of<std::int64_t>(d, "rows", py::dtype::of<std::int64_t>());
  s.counts = vector_of<std::uint32_t>(d, "counts", py::dtype::of<std::uint32_t>());
  s.stamps = vector_of<std::uint64_t>(d, "stamps", py::dtype::of<std::uint64_t>());
  s.free_rows = vector_of<std::int64_t>(d, "free_rows", py::dtype::of<std::int64_t>());
  s.last_evicted = vector_of<std::int64_t>(d, "last_evicted", py::dtype::of<std::int64_t>());
  const std::pair<const char*, std::int64_t*> counters[] = {
      {"high_water", &s.high_water}, {"step", &s.step}, {"call", &s.call},         {"hits", &s.hits},
      {"misses", &s.misses},         {"admitted", &s.admitted}, {"evicted", &s.evicted}};
  for (const auto& counter : counters) *counter.second = int_arg(d[counter.first], counter.first, 0);
  const int num_columns = call([&] { return t->num_columns(); });
  if (static_cast<int>(columns.size()) != num_columns)
    throw py::value_error("restore needs " + std::to_string(num_columns) + " arrays of rows, got " +
                          std::to_string(columns.size()));
  std::vector<py::array> kept;
  std::vector<const void*> data;
  for (int c = 0; c < num_columns; ++c) {
    const py::array a = require_array(columns[static_cast<std::size_t>(c)], "column");
    const std::int64_t width = call([&] { return t->column_width(c); });
    require_output(a, table_dtype(t), {static_cast<py::ssize_t>(s.high_water), static_cast<py::ssize_t>(width)},
                   c == 0 ? "weight" : "state column");
    kept.push_back(a);
    data.push_back(a.data());
  }
  call([&] { t->restore(s, data); });
}

}  // namespace

void register_dynamic(py::module_& m) {
  py::class_<DynamicTable, TablePtr>(m, "DynamicTable", "Hash table from int64 keys to rows; see embtab.DynamicTable.")
      .def(py::init(&make_table), py::arg("dim"), py::arg("dtype"), py::arg("init"), py::arg("std"), py::arg("seed"),
           py::arg("capacity"), py::arg("max_rows"), py::arg("admit_after"), py::arg("evict"), py::arg("ttl"))
      .def("lookup", &lookup, py::arg("keys"), py::arg("insert"))
      .def("gather", &gather, py::arg("keys"), py::arg("insert"))
      .def("gather_bags", &gather_bags, py::arg("keys"), py::arg("offsets"), py::arg("mode"), py::arg("weights"),
           py::arg("insert"), py::arg("return_argmax") = false, py::arg("return_rows") = false)
      .def("evict", [](const TablePtr& t, const py::handle& keys_obj) {
        const py::array keys = check_keys(keys_obj);
        const std::int64_t* k = cdata<std::int64_t>(keys);
        const std::int64_t n = keys.size();
        return call([&] { return t->evict(k, n); });
      }, py::arg("keys"))
      .def("advance", [](const TablePtr& t) { return call([&] { return t->advance(); }); })
      .def("last_evicted", [](const TablePtr& t) { return int64_array(call([&] { return t->last_evicted(); })); })
      .def("export", [](const TablePtr& t) {
        std::vector<std::int64_t> keys, rows;
        call([&] { t->export_rows(keys, rows); });
        return py::make_tuple(int64_array(keys), int64_array(rows));
      })
      .def("stats", [](const TablePtr& t) {
        const DynamicStats s = call([&] { return t->stats(); });
        return int_dict({{"rows", s.rows}, {"capacity", s.row_capacity}, {"bytes", s.bytes}, {"hits", s.hits},
                         {"misses", s.misses}, {"admitted", s.admitted}, {"evicted", s.evicted},
                         {"pending", s.pending}, {"slots", s.slot_capacity}, {"step", s.step}});
      })
      .def("__len__", [](const TablePtr& t) { return call([&] { return t->size(); }); })
      .def("add_column", [](const TablePtr& t, const py::handle& width_obj, double fill) {
        const std::int64_t width = int_arg(width_obj, "width", 1);
        return call([&] { return t->add_column(width, fill); });
      }, py::arg("width"), py::arg("fill"))
      .def("num_columns", [](const TablePtr& t) { return call([&] { return t->num_columns(); }); })
      .def("column_fill", [](const TablePtr& t, int c) { return call([&] { return t->column_fill(c); }); })
      .def("column", &column_view, py::arg("column"), py::arg("with_sink") = false)
      .def("resolve_for_update", [](const TablePtr& t, const py::handle& keys_obj) {
        const py::array keys = check_keys(keys_obj);
        py::array rows = aligned_empty(py::dtype::of<std::int64_t>(), shape_of(keys));
        const std::int64_t* k = cdata<std::int64_t>(keys);
        std::int64_t* r = wdata<std::int64_t>(rows);
        const std::int64_t n = keys.size();
        call([&] { t->resolve_for_update(k, n, r); });
        return rows;
      }, py::arg("keys"))
      .def("clear_sink", [](const TablePtr& t) { call([&] { t->clear_sink(); }); })
      .def("hold", [](const TablePtr& t) { call([&] { t->hold(); }); })
      .def("release", [](const TablePtr& t) {
        try {
          t->release();
        } catch (const std::logic_error& e) {
          throw py::value_error(e.what());
        }
      })
      .def("snapshot", &snapshot)
      .def("restore", &restore, py::arg("snapshot"), py::arg("columns"))
      .def("close", [](const TablePtr& t) {
        if (!t->closed()) call([&] { t->close(); });
      })
      .def_property_readonly("closed", [](const TablePtr& t) { return t->closed(); })
      .def_property_readonly("dim", [](const TablePtr& t) { return t->config().dim; })
      .def_property_readonly("dtype", &table_dtype);
}

}  // namespace bind
}  // namespace embtab
