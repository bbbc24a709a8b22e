// gather / gather_bags: validation, GIL release and dispatch to the lookup kernels.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "bindings/register.hpp"
#include "bindings/validate.hpp"
#include "kernels/lookup.hpp"

namespace embtab {
namespace bind {
namespace {

struct Table {
  py::array array;  // C-contiguous
  FloatKind kind;
  std::int64_t num_rows, dim;
};

Table check_table(const py::handle& obj) {
  py::array table = require_array(obj, "table");
  const FloatKind kind = require_float(table, "table");
  require_ndim(table, 2, "table");
  return Table{c_contiguous(table), kind, table.shape(0), table.shape(1)};
}

// Returns the output, or (output, number of invalid ids) with bounds="zero".
py::object gather(const py::handle& table_obj, const py::handle& ids_obj, const py::object& out_obj,
                  const std::string& bounds) {
  const bool zero_invalid = parse_bounds(bounds);
  const Table table = check_table(table_obj);
  const Ids ids = check_ids(ids_obj);

  std::vector<py::ssize_t> shape(ids.array.shape(), ids.array.shape() + ids.array.ndim());
  shape.push_back(table.dim);
  py::array out = prepare_output(out_obj, table.array.dtype(), shape);
  const std::int64_t n = ids.n;
  std::int64_t num_invalid = 0;

  const std::int64_t bad = visit_float(table.kind, [&](auto ttag) {
    using T = decltype(ttag);
    return visit_index(ids.kind, [&](auto itag) {
      using I = decltype(itag);
      const T* table_ptr = cdata<T>(table.array);
      const I* ids_ptr = cdata<I>(ids.array);
      T* out_ptr = wdata<T>(out);
      const ZeroRow zeros(zero_invalid, table.dim * std::int64_t(sizeof(T)));
      const T* zero_row = static_cast<const T*>(zeros.row());
      py::gil_scoped_release release;  // only raw pointers from here on
      return lookup_kernels().get<T, I>().gather(table_ptr, table.num_rows, table.dim, ids_ptr, n, out_ptr, zero_row,
                                                 &num_invalid);
    });
  });
  if (bad >= 0) throw_bad_id(ids.array, bad, table.num_rows);
  return lookup_result(out, py::none(), zero_invalid, num_invalid);
}

py::object gather_bags(const py::handle& table_obj, const py::handle& ids_obj, const py::object& offsets_obj,
                       const std::string& mode_name, const py::object& weights_obj, const py::object& out_obj,
                       bool return_argmax, const std::string& bounds) {
  const bool zero_invalid = parse_bounds(bounds);
  const Table table = check_table(table_obj);
  const LookupBags bags = check_lookup_bags(ids_obj, offsets_obj, mode_name, weights_obj, table.array.dtype(),
                                            "the table's dtype " + dtype_str(table.array), return_argmax, table.dim);
  py::array out = prepare_output(out_obj, table.array.dtype(), {bags.num_bags, table.dim});

  std::int64_t num_invalid = 0;
  const std::int64_t bad = visit_float(table.kind, [&](auto ttag) {
    using T = decltype(ttag);
    return visit_index(bags.ids.kind, [&](auto itag) {
      using I = decltype(itag);
      const T* table_ptr = cdata<T>(table.array);
      const I* ids_ptr = cdata<I>(bags.ids.array);
      const T* weights_ptr = bags.has_weights ? cdata<T>(bags.weights) : nullptr;
      T* out_ptr = wdata<T>(out);
      const ZeroRow zeros(zero_invalid, table.dim * std::int64_t(sizeof(T)));
      const T* zero_row = static_cast<const T*>(zeros.row());
      py::gil_scoped_release release;  // only raw pointers from here on
      return lookup_kernels().get<T, I>().bags(table_ptr, table.num_rows, table.dim, ids_ptr, bags.offsets.data(),
                                               bags.num_bags, weights_ptr, bags.mode, out_ptr, bags.argmax_data,
                                               zero_row, &num_invalid);
    });
  });
  if (bad >= 0) throw_bad_id(bags.ids.array, bad, table.num_rows);
  return lookup_result(out, bags.argmax, zero_invalid, num_invalid);
}

}  // namespace

void register_lookup(py::module_& m) {
  m.def("gather", &gather, py::arg("table"), py::arg("ids"), py::arg("out") = py::none(),
        py::arg("bounds") = "raise", "Rows of table at ids; see embtab.gather.");
  m.def("gather_bags", &gather_bags, py::arg("table"), py::arg("ids"), py::arg("offsets") = py::none(),
        py::arg("mode") = "sum", py::arg("weights") = py::none(), py::arg("out") = py::none(),
        py::arg("return_argmax") = false, py::arg("bounds") = "raise", "Pooled lookups; see embtab.gather_bags.");
}

}  // namespace bind
}  // namespace embtab
