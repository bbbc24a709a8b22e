// gather / gather_bags over every row format: validation, GIL release and dispatch to the lookup
// engine (kernels/lookup.hpp).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "bindings/gil.hpp"
#include "bindings/register.hpp"
#include "bindings/validate.hpp"
#include "kernels/lookup.hpp"

namespace embtab {
namespace bind {
namespace {

// The names of RowFormat values, as the `dtype` argument and messages spell them.
constexpr const char* kFormatNames[kRowFormats] = {"float32", "float64", "float16", "bfloat16", "int8"};

// A lookup's table: the arrays the kernel reads (C-contiguous; owned for the call) and its view.
struct Table {
  py::array rows;    // the values (8-bit: the codes)
  py::array params;  // 8-bit only: (num_rows, 2) float32 scale and bias
  TableView view;

  const char* name() const { return kFormatNames[static_cast<int>(view.format)]; }
  // Results, accumulation and weights: float64 for float64 tables, float32 for every other format.
  py::dtype result_dtype() const {
    return view.format == RowFormat::f64 ? py::dtype::of<double>() : py::dtype::of<float>();
  }
};

Table make_table(RowFormat format, const py::array& rows, const py::array& params) {
  require_ndim(rows, 2, "table");
  Table table{c_contiguous(rows), params, TableView{}};
  table.view = TableView{format, table.rows.data(),
                         format == RowFormat::i8 ? static_cast<const float*>(table.params.data()) : nullptr,
                         rows.shape(0), rows.shape(1)};
  return table;
}

// An 8-bit table comes as the pair (codes, params) of a QuantizedTable.
Table check_i8_table(const py::handle& obj) {
  if (!py::isinstance<py::tuple>(obj) || py::len(obj) != 2)
    throw py::type_error("an 8-bit table must be a QuantizedTable (see embtab.quantize_rows), or the pair (codes, "
                         "params) of one, got " + py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  const py::tuple parts = py::reinterpret_borrow<py::tuple>(obj);
  const py::array codes = require_array(parts[0], "codes");
  if (!codes.dtype().equal(py::dtype::of<std::uint8_t>()))
    throw py::type_error("8-bit codes must have dtype uint8, got " + dtype_str(codes));
  require_ndim(codes, 2, "codes");
  const py::array params = require_array(parts[1], "params");
  if (!params.dtype().equal(py::dtype::of<float>()))
    throw py::type_error("8-bit params (scale, bias) must have dtype float32, got " + dtype_str(params));
  if (params.ndim() != 2 || params.shape(0) != codes.shape(0) || params.shape(1) != 2)
    throw py::value_error("8-bit params must have shape (num_rows, 2) = (" + std::to_string(codes.shape(0)) +
                          ", 2), got " + shape_str(params));
  return make_table(RowFormat::i8, codes, c_contiguous(params));
}

// The format named by `dtype` (None or "float16" / "bfloat16" / "int8"), which must agree with
// `table_format` (the dtype of a BFloat16Table or QuantizedTable, None for an array); -1 if neither
// names one.
int named_format(const py::object& dtype, const py::object& table_format) {
  int format = -1;
  if (!dtype.is_none()) {
    if (!py::isinstance<py::str>(dtype))
      throw py::type_error("dtype must be None or a string ('float16', 'bfloat16' or 'int8'), got " +
                           py::str(py::type::of(dtype).attr("__name__")).cast<std::string>());
    const std::string name = dtype.cast<std::string>();
    for (RowFormat f : {RowFormat::f16, RowFormat::bf16, RowFormat::i8})
      if (name == kFormatNames[static_cast<int>(f)]) format = static_cast<int>(f);
    if (format < 0) throw py::value_error("dtype must be None, 'float16', 'bfloat16' or 'int8', got '" + name + "'");
  }
  if (!table_format.is_none()) {
    const std::string name = table_format.cast<std::string>();
    if (format >= 0 && name != kFormatNames[format])
      throw py::value_error(std::string("dtype='") + kFormatNames[format] + "' does not match the table, a " + name +
                            " table");
    for (int f = 0; f < kRowFormats; ++f)
      if (name == kFormatNames[f]) format = f;
  }
  return format;
}

Table check_table(const py::handle& obj, const py::object& dtype, const py::object& table_format) {
  const int named = named_format(dtype, table_format);
  if (named == static_cast<int>(RowFormat::i8)) return check_i8_table(obj);
  const py::array rows = require_array(obj, "table");
  const py::dtype stored = rows.dtype();
  RowFormat format;
  if (named == static_cast<int>(RowFormat::f16)) {
    if (!stored.equal(py::dtype("float16")))
      throw py::type_error("a float16 table must have dtype float16, got " + dtype_str(rows));
    format = RowFormat::f16;
  } else if (named == static_cast<int>(RowFormat::bf16)) {
    if (!stored.equal(py::dtype::of<std::uint16_t>()))
      throw py::type_error("a bfloat16 table must be stored as uint16 bits (see embtab.to_bfloat16), got dtype " +
                           dtype_str(rows));
    format = RowFormat::bf16;
  } else if (stored.equal(py::dtype::of<float>())) {
    format = RowFormat::f32;
  } else if (stored.equal(py::dtype::of<double>())) {
    format = RowFormat::f64;
  } else if (stored.equal(py::dtype("float16"))) {
    format = RowFormat::f16;
  } else if (stored.equal(py::dtype::of<std::uint16_t>())) {
    throw py::type_error("a uint16 table needs dtype='bfloat16' (embtab stores bfloat16 values as uint16 bits)");
  } else {
    throw py::type_error("table must have dtype float32, float64 or float16 (or be a BFloat16Table or a "
                         "QuantizedTable), got " + dtype_str(rows));
  }
  return make_table(format, rows, py::array());
}

// What an invalid id does: bounds="zero" reads zeros; otherwise the call raises, and when the
// kernel writes into the caller's own `out`, every id is checked before anything is written.
OnInvalid on_invalid(bool zero_invalid, const Output& out) {
  if (zero_invalid) return OnInvalid::read_zeros;
  return out.is_callers() ? OnInvalid::stop_before_writing : OnInvalid::stop;
}

// Calls f(fns) with the kernels of this table's format and these ids' index type.
template <class F>
std::int64_t with_kernels(const Table& table, IndexKind index, F&& f) {
  const LookupKernels& kernels = lookup_kernels();
  const int format = static_cast<int>(table.view.format);
  return index == IndexKind::i32 ? f(kernels.i32[format], std::int32_t{}) : f(kernels.i64[format], std::int64_t{});
}

// Returns the output, or (output, number of invalid ids) with bounds="zero".
py::object gather(const py::handle& table_obj, const py::handle& ids_obj, const py::object& out_obj,
                  const std::string& bounds, const py::object& dtype, const py::object& table_format) {
  const bool zero_invalid = parse_bounds(bounds);
  const Table table = check_table(table_obj, dtype, table_format);
  const Ids ids = check_ids(ids_obj);
  std::vector<py::ssize_t> shape(ids.array.shape(), ids.array.shape() + ids.array.ndim());
  shape.push_back(table.view.dim);
  Output out(out_obj, table.result_dtype(), shape, {&table.rows, &table.params, &ids.array});
  const OnInvalid invalid = on_invalid(zero_invalid, out);
  std::int64_t num_invalid = 0;
  const std::int64_t bad = with_kernels(table, ids.kind, [&](const auto& fns, auto itag) {
    using I = decltype(itag);
    const I* ids_ptr = cdata<I>(ids.array);
    GilRelease release;  // only raw pointers from here on
    const std::int64_t first_bad = fns.gather(table.view, ids_ptr, ids.n, out.data(), invalid, &num_invalid);
    if (first_bad < 0) out.finish();
    return first_bad;
  });
  if (bad >= 0) throw_bad_id(ids.array, bad, table.view.num_rows);
  return lookup_result(out.result(), py::none(), zero_invalid, num_invalid);
}

py::object gather_bags(const py::handle& table_obj, const py::handle& ids_obj, const py::object& offsets_obj,
                       const std::string& mode_name, const py::object& weights_obj, const py::object& out_obj,
                       bool return_argmax, const std::string& bounds, const py::object& dtype,
                       const py::object& table_format) {
  const bool zero_invalid = parse_bounds(bounds);
  const Table table = check_table(table_obj, dtype, table_format);
  const py::dtype result_dtype = table.result_dtype();
  const LookupBags bags = check_lookup_bags(
      ids_obj, offsets_obj, mode_name, weights_obj, result_dtype,
      "dtype " + py::str(result_dtype).cast<std::string>() + " (the result dtype of a " + table.name() + " table)",
      return_argmax, table.view.dim);
  Output out(out_obj, result_dtype, {bags.num_bags, table.view.dim},
             {&table.rows, &table.params, &bags.ids.array, bags.has_weights ? &bags.weights : nullptr});
  const OnInvalid invalid = on_invalid(zero_invalid, out);
  std::int64_t num_invalid = 0;
  const std::int64_t bad = with_kernels(table, bags.ids.kind, [&](const auto& fns, auto itag) {
    using I = decltype(itag);
    const I* ids_ptr = cdata<I>(bags.ids.array);
    const void* weights_ptr = bags.has_weights ? bags.weights.data() : nullptr;
    GilRelease release;  // only raw pointers from here on
    const std::int64_t first_bad = fns.bags(table.view, ids_ptr, bags.offsets.data(), bags.num_bags, weights_ptr,
                                            bags.mode, out.data(), bags.argmax_data, invalid, &num_invalid);
    if (first_bad < 0) out.finish();
    return first_bad;
  });
  if (bad >= 0) throw_bad_id(bags.ids.array, bad, table.view.num_rows);
  return lookup_result(out.result(), bags.argmax, zero_invalid, num_invalid);
}

}  // namespace

void register_lookup(py::module_& m) {
  m.def("gather", &gather, py::arg("table"), py::arg("ids"), py::arg("out") = py::none(),
        py::arg("bounds") = "raise", py::arg("dtype") = py::none(), py::arg("table_format") = py::none(),
        "Rows of table at ids; see embtab.gather. An 8-bit table is the pair (codes, params); table_format is "
        "the dtype of a BFloat16Table / QuantizedTable.");
  m.def("gather_bags", &gather_bags, py::arg("table"), py::arg("ids"), py::arg("offsets") = py::none(),
        py::arg("mode") = "sum", py::arg("weights") = py::none(), py::arg("out") = py::none(),
        py::arg("return_argmax") = false, py::arg("bounds") = "raise", py::arg("dtype") = py::none(),
        py::arg("table_format") = py::none(), "Pooled lookups; see embtab.gather_bags and _core.gather.");
}

}  // namespace bind
}  // namespace embtab
