// Building reduced-precision tables (float32 -> bfloat16, row-wise 8-bit quantization): validation,
// GIL release and dispatch to the kernels of kernels/lowp.hpp. (Lookups over these tables are the
// ones of register_lookup.cpp.)
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "bindings/gil.hpp"
#include "bindings/register.hpp"
#include "bindings/validate.hpp"
#include "kernels/lowp.hpp"

namespace embtab {
namespace bind {
namespace {

// The float32 input of a conversion (`converter` takes float16 and float64 too, and converts them).
void require_float32(const py::array& a, const char* name, const char* converter) {
  if (!a.dtype().equal(py::dtype::of<float>()))
    throw py::type_error(std::string(name) + " must be a float array (" + converter +
                         " converts float16 and float64 to float32), got dtype " + dtype_str(a));
}

py::array to_bfloat16(const py::handle& src_obj, const py::handle& out_obj) {
  const py::array src_in = require_array(src_obj, "x");
  require_float32(src_in, "x", "embtab.to_bfloat16");
  require_ndim(src_in, 2, "x");
  const py::array src = c_contiguous(src_in);
  py::array out = require_array(out_obj, "out");
  require_output(out, py::dtype::of<std::uint16_t>(), std::vector<py::ssize_t>(src.shape(), src.shape() + src.ndim()),
                 "out");
  const float* src_ptr = cdata<float>(src);
  std::uint16_t* out_ptr = wdata<std::uint16_t>(out);
  const std::int64_t n = src.size();
  {
    GilRelease release;
    lowp_kernels().to_bfloat16(src_ptr, n, out_ptr);
  }
  return out;
}

// Quantizes into codes (num_rows, dim) uint8 and params (num_rows, 2) float32, both C-contiguous
// and writable (the caller allocates them aligned).
void quantize_rows_8bit(const py::handle& table_obj, const py::handle& codes_obj, const py::handle& params_obj) {
  const py::array table_in = require_array(table_obj, "table");
  require_float32(table_in, "table", "embtab.quantize_rows");
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
    GilRelease release;
    bad = lowp_kernels().quantize_rows_8bit(table_ptr, num_rows, dim, codes_ptr, params_ptr);
  }
  if (bad >= 0)
    throw py::value_error("table row " + std::to_string(bad) +
                          " cannot be quantized: it holds a NaN or an infinity, or its range max - min is so close "
                          "to the float32 limit that its codes would decode to infinity");
}

}  // namespace

void register_lowp(py::module_& m) {
  m.def("to_bfloat16_bits", &to_bfloat16, py::arg("x"), py::arg("out"),
        "float32 -> bfloat16 bits (uint16), round to nearest even; see embtab.to_bfloat16.");
  m.def("quantize_rows_8bit", &quantize_rows_8bit, py::arg("table"), py::arg("codes"), py::arg("params"),
        "Row-wise 8-bit quantization into codes and (scale, bias) params; see embtab.quantize_rows.");
}

}  // namespace bind
}  // namespace embtab
