// Argument checks shared by the register_*.cpp files. Everything here runs with the GIL held,
// before any kernel; the messages name the argument, what was expected and what was given.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "kernels/lookup.hpp"

namespace embtab {
namespace bind {

namespace py = pybind11;

std::string dtype_str(const py::array& a);
std::string shape_str(const py::array& a);
std::string shape_str(const std::vector<py::ssize_t>& shape);

// "ids[1, 2]" for flat position 5 of an array of shape (2, 3).
std::string position_str(const char* name, const std::vector<py::ssize_t>& shape, std::int64_t flat);

// Requires a numpy array (TypeError otherwise).
py::array require_array(const py::handle& obj, const char* name);

enum class FloatKind { f32, f64 };
enum class IndexKind { i32, i64 };

// float32 / float64 (native byte order); TypeError naming the argument otherwise.
FloatKind require_float(const py::array& a, const char* name);
// int32 / int64 (native byte order); TypeError naming the argument otherwise.
IndexKind require_index(const py::array& a, const char* name);

void require_ndim(const py::array& a, py::ssize_t ndim, const char* name);

// C-contiguous view of a read-only input (copies only when the layout is not C-contiguous; the
// dtype was already checked, so no conversion can happen).
py::array c_contiguous(const py::array& a);

// An array a kernel will write into: must have exactly this dtype (TypeError), this shape,
// C-contiguity and be writeable (ValueError). Never copied.
void require_output(const py::array& out, const py::dtype& dtype, const std::vector<py::ssize_t>& shape,
                    const char* name);

// A new C-contiguous array whose data starts on a 64-byte boundary (a view into a slightly larger
// buffer), so that kernels can use aligned, non-temporal stores.
py::array aligned_empty(const py::dtype& dtype, const std::vector<py::ssize_t>& shape);

// A kernel's output: a new aligned array when `out` is None, else the caller's array, checked as
// require_output does.
py::array prepare_output(const py::object& out, const py::dtype& dtype, const std::vector<py::ssize_t>& shape);

// Whether the memory of two arrays may overlap: np.may_share_memory's answer, from the byte ranges
// their elements span (exact for C-contiguous arrays).
bool may_share_memory(const py::array& a, const py::array& b);

// The output of a kernel that reads `inputs`, as prepare_output makes it. When the caller's `out`
// overlaps an input, the kernel writes a private array instead, and finish() copies it into out
// once the kernel has succeeded: the result is then as if every input had been read first (what
// np.take(..., out=) gives), and a failed call leaves out untouched.
class Output {
 public:
  Output(const py::object& out, const py::dtype& dtype, const std::vector<py::ssize_t>& shape,
         std::initializer_list<const py::array*> inputs);
  // What the call returns.
  const py::array& result() const { return result_; }
  // Where the kernel writes.
  void* data() const { return target_data_; }
  // True when the kernel writes straight into memory the caller passed (out=): then nothing may be
  // written unless the whole call succeeds.
  bool is_callers() const { return callers_ && target_data_ == result_data_; }
  // Copies the private array into out (a no-op otherwise). Needs no GIL: this object owns both.
  void finish();

 private:
  py::array result_, target_;
  bool callers_;
  void* result_data_;
  void* target_data_;
  std::size_t bytes_;
};

// Ids of any shape: an integer array (TypeError otherwise), made C-contiguous.
struct Ids {
  py::array array;  // C-contiguous
  IndexKind kind;
  std::int64_t n;
};
Ids check_ids(const py::handle& obj);

// CSR offsets of num_bags + 1 entries: integer, 1-D, starting at 0, non-decreasing, ending at
// num_ids. Returned as int64. With include_last_offset=false (torch's default convention) the
// array holds num_bags starts and the end of the last bag (num_ids) is appended.
std::vector<std::int64_t> check_offsets(const py::handle& offsets_obj, std::int64_t num_ids,
                                        bool include_last_offset = true);

// Bag boundaries by the rules of gather_bags: 2-D ids (num_bags, bag_len) are fixed-length bags
// and take no offsets; 1-D ids need CSR offsets (checked as check_offsets does). int64.
std::vector<std::int64_t> bag_offsets(const py::array& ids, const py::object& offsets_obj,
                                      bool include_last_offset = true);

// "sum" / "mean" / "max"; ValueError otherwise.
PoolMode parse_mode(const std::string& mode);

// bounds="raise" (false) or "zero" (true); ValueError otherwise.
bool parse_bounds(const std::string& bounds);

// The arguments of a pooled lookup after its table, checked in this order: mode, ids, offsets (or
// 2-D ids), weights (of `weight_dtype`; `dtype_owner` names it in the TypeError), and
// return_argmax (mode="max" only); argmax is allocated (num_bags x dim) when asked for.
struct LookupBags {
  PoolMode mode;
  Ids ids;
  std::vector<std::int64_t> offsets;
  std::int64_t num_bags;
  py::array weights;  // valid when has_weights
  bool has_weights;
  py::object argmax;                  // None unless return_argmax
  std::int64_t* argmax_data = nullptr;  // its data, or nullptr
};
LookupBags check_lookup_bags(const py::handle& ids_obj, const py::object& offsets_obj, const std::string& mode_name,
                             const py::object& weights_obj, const py::dtype& weight_dtype,
                             const std::string& dtype_owner, bool return_argmax, std::int64_t dim);

// What a lookup returns: `out` alone, or a tuple of out, then argmax (if not None), then the number
// of invalid ids (with bounds="zero").
py::object lookup_result(const py::array& out, const py::object& argmax, bool zero_invalid, std::int64_t num_invalid);

// Per-id weights of a bag lookup: None (returns false), or an array of exactly `dtype` (TypeError
// naming `dtype_owner`, e.g. "the table's dtype float32") with the shape of ids; refused for
// mode="max". The checked C-contiguous array goes to *weights.
bool check_bag_weights(const py::object& weights_obj, PoolMode mode, const py::dtype& dtype,
                       const std::string& dtype_owner, const py::array& ids, py::array* weights);

// A multi-table batch (kernels/multi.hpp), checked in this order: tables (a non-empty sequence of
// 2-D arrays of one float dtype; with `in_place` each must be C-contiguous and writeable, and no two
// may share memory, else each is made C-contiguous), feature_tables (None: one feature per table),
// ids (1-D), offsets (CSR over num_features * batch bags), modes ("sum" / "mean", one string or one
// per feature), weights (None or the tables' dtype, shape of ids).
struct MultiBatch {
  std::vector<py::array> tables;
  FloatKind kind;
  std::vector<std::int64_t> num_rows, dims, row_base;  // row_base: num_tables + 1 entries
  std::vector<std::int64_t> feature_table, feature_col;
  std::vector<PoolMode> modes;
  std::int64_t num_features = 0, batch = 0, width = 0;  // width: the sum of the features' dims
  Ids ids;
  std::vector<std::int64_t> offsets;
  py::array weights;  // valid when has_weights
  bool has_weights = false;
};
MultiBatch check_multi_batch(const py::handle& tables_obj, const py::handle& ids_obj, const py::handle& offsets_obj,
                             const py::object& feature_tables_obj, const py::object& modes_obj,
                             const py::object& weights_obj, bool in_place);

// Throws IndexError for a bad id of a multi-table batch, naming its table.
[[noreturn]] void throw_bad_multi_id(const MultiBatch& batch, std::int64_t pos);

// Throws IndexError for the id at flat position `pos` of `ids` (shape `shape`).
[[noreturn]] void throw_bad_id(const py::array& ids, std::int64_t pos, std::int64_t num_rows,
                               const char* name = "ids");
// The same for a kernel that reports the value it found bad (read once: another thread may have
// rewritten ids since). num_rows < 0: no upper bound, only negative ids are bad.
[[noreturn]] void throw_id_error(const py::array& ids, std::int64_t pos, std::int64_t value, std::int64_t num_rows,
                                 const char* name = "ids");

// A read-only input that a kernel reads while it writes the arrays in `written`: the input itself,
// or a private C-contiguous copy when it overlaps one of them (the result is then as if the input
// had been copied first, as numpy's ufuncs and np.add.at give it).
py::array unshared(const py::array& input, const std::vector<const py::array*>& written);

template <class T>
const T* cdata(const py::array& a) {
  return static_cast<const T*>(a.data());
}
template <class T>
T* wdata(py::array& a) {
  return static_cast<T*>(a.mutable_data());
}

// Calls f(T{}) with T = float or double.
template <class F>
decltype(auto) visit_float(FloatKind kind, F&& f) {
  if (kind == FloatKind::f32) return f(float{});
  return f(double{});
}
// Calls f(I{}) with I = int32_t or int64_t.
template <class F>
decltype(auto) visit_index(IndexKind kind, F&& f) {
  if (kind == IndexKind::i32) return f(std::int32_t{});
  return f(std::int64_t{});
}

}  // namespace bind
}  // namespace embtab
