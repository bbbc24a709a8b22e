// Reduced-precision tables: validation, GIL release and dispatch to the lowp kernels
// (gather / gather_bags over float16, bfloat16 and 8-bit row-wise tables, and the conversions).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "bindings/register.hpp"
#include "bindings/validate.hpp"
#include "kernels/lowp.hpp"

namespace embtab {
namespace bind {
namespace {

struct LowpTable {
  py::array array;   // C-contiguous storage (8-bit: the codes)
  py::array params;  // 8-bit only: C-contiguous (num_rows, 2) float32 scale and bias
  LowpFormat format;
  std::int64_t num_rows, dim;
  I8Table i8{};

  // What the kernels take as `table`.
  const void* kernel_table() const { return format == LowpFormat::i8 ? static_cast<const void*>(&i8) : array.data(); }
};

// The row that invalid ids read with bounds="zero" (nullptr otherwise): zero bytes, which read as
// zeros in every format (8-bit: zero codes, scale and bias).
class LowpZeroRow {
 public:
  LowpZeroRow(bool needed, const LowpTable& table)
      : zeros_(needed, lowp_row_bytes(table.format, table.dim)), format_(table.format) {
    i8_ = I8Table{static_cast<const std::uint8_t*>(zeros_.row()), static_cast<const float*>(zeros_.row())};
  }
  const void* row() const {
    if (zeros_.row() == nullptr) return nullptr;
    return format_ == LowpFormat::i8 ? static_cast<const void*>(&i8_) : zeros_.row();
  }

 private:
  ZeroRow zeros_;
  LowpFormat format_;
  I8Table i8_;
};

LowpFormat parse_format(const std::string& name) {
  if (name == "float16") return LowpFormat::f16;
  if (name == "bfloat16") return LowpFormat::bf16;
  if (name == "int8") return LowpFormat::i8;
  throw py::value_error("dtype must be 'float16', 'bfloat16' or 'int8', got '" + name + "'");
}

// An 8-bit table comes as the pair (codes, params) of a QuantizedTable.
LowpTable check_i8_table(const py::handle& obj) {
  if (!py::isinstance<py::tuple>(obj) || py::len(obj) != 2)
    throw py::type_error("an 8-bit table must be the pair (codes, params) of a QuantizedTable (see embtab.quantize_rows)");
  const py::tuple parts = py::reinterpret_borrow<py::tuple>(obj);
  py::array codes = require_array(parts[0], "codes");
  if (!codes.dtype().equal(py::dtype::of<std::uint8_t>()))
    throw py::type_error("8-bit codes must have dtype uint8, got " + dtype_str(codes));
  require_ndim(codes, 2, "codes");
  py::array params = require_array(parts[1], "params");
  if (!params.dtype().equal(py::dtype::of<float>()))
    throw py::type_error("8-bit params (scale, bias) must have dtype float32, got " + dtype_str(params));
  if (params.ndim() != 2 || params.shape(0) != codes.shape(0) || params.shape(1) != 2)
    throw py::value_error("8-bit params must have shape (num_rows, 2) = (" + std::to_string(codes.shape(0)) +
                          ", 2), got " + shape_str(params));
  LowpTable table{c_contiguous(codes), c_contiguous(params), LowpFormat::i8, codes.shape(0), codes.shape(1)};
  table.i8 = I8Table{static_cast<const std::uint8_t*>(table.array.data()), static_cast<const float*>(table.params.data())};
  return table;
}

LowpTable check_table(const py::handle& obj, const std::string& format_name) {
  const LowpFormat format = parse_format(format_name);
  if (format == LowpFormat::i8) return check_i8_table(obj);
  py::array table = require_array(obj, "table");
  if (format == LowpFormat::f16 && !table.dtype().equal(py::dtype("float16")))
    throw py::type_error("a float16 table must have dtype float16, got " + dtype_str(table));
  if (format == LowpFormat::bf16 && !table.dtype().equal(py::dtype::of<std::uint16_t>()))
    throw py::type_error("a bfloat16 table must be stored as uint16 bits (see embtab.to_bfloat16), got dtype " +
                         dtype_str(table));
  require_ndim(table, 2, "table");
  return LowpTable{c_contiguous(table), py::array(), format, table.shape(0), table.shape(1)};
}

// Returns the output, or (output, number of invalid ids) with bounds="zero".
py::object gather(const py::handle& table_obj, const py::handle& ids_obj, const py::object& out_obj,
                  const std::string& format, const std::string& bounds) {
  const bool zero_invalid = parse_bounds(bounds);
  const LowpTable table = check_table(table_obj, format);
  const Ids ids = check_ids(ids_obj);

  std::vector<py::ssize_t> shape(ids.array.shape(), ids.array.shape() + ids.array.ndim());
  shape.push_back(table.dim);
  py::array out = prepare_output(out_obj, py::dtype::of<float>(), shape);
  std::int64_t num_invalid = 0;
  const LowpZeroRow zeros(zero_invalid, table);

  const std::int64_t bad = visit_index(ids.kind, [&](auto itag) {
    using I = decltype(itag);
    const void* table_ptr = table.kernel_table();
    const I* ids_ptr = cdata<I>(ids.array);
    float* out_ptr = wdata<float>(out);
    py::gil_scoped_release release;  // only raw pointers from here on
    return lowp_kernels().get<I>(table.format).gather(table_ptr, table.num_rows, table.dim, ids_ptr, ids.n, out_ptr,
                                                      zeros.row(), &num_invalid);
  });
  if (bad >= 0) throw_bad_id(ids.array, bad, table.num_rows);
  return lookup_result(out, py::none(), zero_invalid, num_invalid);
}

py::object gather_bags(const py::handle& table_obj, const py::handle& ids_obj, const py::object& offsets_obj,
                       const std::string& mode_name, const py::object& weights_obj, const py::object& out_obj,
                       bool return_argmax, const std::string& format, const std::string& bounds) {
  const bool zero_invalid = parse_bounds(bounds);
  const LowpTable table = check_table(table_obj, format);
  const LookupBags bags = check_lookup_bags(ids_obj, offsets_obj, mode_name, weights_obj, py::dtype::of<float>(),
                                            "dtype float32 for a " + format + " table", return_argmax, table.dim);
  py::array out = prepare_output(out_obj, py::dtype::of<float>(), {bags.num_bags, table.dim});
  std::int64_t num_invalid = 0;
  const LowpZeroRow zeros(zero_invalid, table);

  const std::int64_t bad = visit_index(bags.ids.kind, [&](auto itag) {
    using I = decltype(itag);
    const void* table_ptr = table.kernel_table();
    const I* ids_ptr = cdata<I>(bags.ids.array);
    const float* weights_ptr = bags.has_weights ? cdata<float>(bags.weights) : nullptr;
    float* out_ptr = wdata<float>(out);
    py::gil_scoped_release release;  // only raw pointers from here on
    return lowp_kernels().get<I>(table.format).bags(table_ptr, table.num_rows, table.dim, ids_ptr, bags.offsets.data(),
                                                    bags.num_bags, weights_ptr, bags.mode, out_ptr, bags.argmax_data,
                                                    zeros.row(), &num_invalid);
  });
  if (bad >= 0) throw_bad_id(bags.ids.array, bad, table.num_rows);
  return lookup_result(out, bags.argmax, zero_invalid, num_invalid);
}

py::array to_bfloat16(const py::handle& src_obj, const py::handle& out_obj) {
  const py::array src_in = require_array(src_obj, "x");
  if (!src_in.dtype().equal(py::dtype::of<float>()))
    throw py::type_error("x must have dtype float32, got " + dtype_str(src_in));
  const py::array src = c_contiguous(src_in);
  py::array out = require_array(out_obj, "out");
  require_output(out, py::dtype::of<std::uint16_t>(), std::vector<py::ssize_t>(src.shape(), src.shape() + src.ndim()),
                 "out");
  const float* src_ptr = cdata<float>(src);
  std::uint16_t* out_ptr = wdata<std::uint16_t>(out);
  const std::int64_t n = src.size();
  {
    py::gil_scoped_release release;
    lowp_kernels().to_bfloat16(src_ptr, n, out_ptr);
  }
  return out;
}

// Quantizes into codes (num_rows, dim) uint8 and params (num_rows, 2) float32, both C-contiguous
// and writable (the caller allocates them aligned).
void quantize_rows_8bit(const py::handle& table_obj, const py::handle& codes_obj, const py::handle& params_obj) {
  const py::array table_in = require_array(table_obj, "table");
  if (!table_in.dtype().equal(py::dtype::of<float>()))
    throw py::type_error("table must have dtype float32, got " + dtype_str(table_in));
  require_ndim(table_in, 2, "table");
  const py::array table = c_contiguous(table_in);
  const std::int64_t num_rows = table.shape(0), dim = table.shape(1);
  py::array codes = require_array(codes_obj, "codes");
  require_output(codes, py::dtype::of<std::uint8_t>(), {num_rows, dim}, "codes");
  py::array params = require_array(params_obj, "params");
  require_output(params, py::dtype::of<float>(), {num_rows, 2}, "params");
  const float* table_ptr = cdata<float>(table);
  std::uint8_t* codes_ptr = wdata<std::uint8_t>(codes);
  float* params_ptr = wdata<float>(params);
  std::int64_t bad;
  {
    py::gil_scoped_release release;
    bad = lowp_kernels().quantize_rows_8bit(table_ptr, num_rows, dim, codes_ptr, params_ptr);
  }
  if (bad >= 0)
    throw py::value_error("table row " + std::to_string(bad) +
                          " cannot be quantized: it holds a NaN or an infinity, or its range max - min is so close "
                          "to the float32 limit that its codes would decode to infinity");
}

}  // namespace

void register_lowp(py::module_& m) {
  m.def("lowp_gather", &gather, py::arg("table"), py::arg("ids"), py::arg("out"), py::arg("dtype"),
        py::arg("bounds") = "raise",
        "Rows of a reduced-precision table as float32; see embtab.gather.");
  m.def("lowp_gather_bags", &gather_bags, py::arg("table"), py::arg("ids"), py::arg("offsets"), py::arg("mode"),
        py::arg("weights"), py::arg("out"), py::arg("return_argmax"), py::arg("dtype"),
        py::arg("bounds") = "raise", "Pooled lookups over a reduced-precision table; see embtab.gather_bags.");
  m.def("to_bfloat16_bits", &to_bfloat16, py::arg("x"), py::arg("out"),
        "float32 -> bfloat16 bits (uint16), round to nearest even; see embtab.to_bfloat16.");
  m.def("quantize_rows_8bit", &quantize_rows_8bit, py::arg("table"), py::arg("codes"), py::arg("params"),
        "Row-wise 8-bit quantization into codes and (scale, bias) params; see embtab.quantize_rows.");
}

}  // namespace bind
}  // namespace embtab
