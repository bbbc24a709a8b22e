// gather_bags_multi: validation, GIL release and dispatch to the multi-table lookup kernel. (Its
// optimizer step, optim_step_bags_multi, is bound with the other steps in register_sparse.cpp.)
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <vector>

#include "bindings/gil.hpp"
#include "bindings/register.hpp"
#include "bindings/validate.hpp"
#include "kernels/multi.hpp"

namespace embtab {
namespace bind {
namespace {

py::array gather_bags_multi(const py::handle& tables_obj, const py::handle& ids_obj, const py::handle& offsets_obj,
                            const py::object& feature_tables_obj, const py::object& modes_obj,
                            const py::object& weights_obj, const py::object& out_obj) {
  const MultiBatch m = check_multi_batch(tables_obj, ids_obj, offsets_obj, feature_tables_obj, modes_obj, weights_obj,
                                         false);
  py::array result = prepare_output(out_obj, m.tables[0].dtype(), {m.batch, m.width});
  // A caller's out= is written only once every id has proved good, and may overlap the inputs:
  // the kernel writes a fresh array, copied into out at the end (as lookups with out= do).
  py::array out = out_obj.is_none() ? result : aligned_empty(m.tables[0].dtype(), {m.batch, m.width});
  const std::int64_t bad = visit_float(m.kind, [&](auto ttag) {
    using T = decltype(ttag);
    return visit_index(m.ids.kind, [&](auto itag) {
      using I = decltype(itag);
      std::vector<const T*> tables;
      for (const py::array& t : m.tables) tables.push_back(cdata<T>(t));
      MultiBags<T> bags;
      bags.num_features = m.num_features;
      bags.batch = m.batch;
      bags.tables = tables.data();
      bags.num_rows = m.num_rows.data();
      bags.dims = m.dims.data();
      bags.feature_table = m.feature_table.data();
      bags.modes = m.modes.data();
      bags.offsets = m.offsets.data();
      bags.weights = m.has_weights ? cdata<T>(m.weights) : nullptr;
      bags.out = wdata<T>(out);
      bags.out_stride = m.width;
      bags.out_col = m.feature_col.data();
      const I* ids = cdata<I>(m.ids.array);
      GilRelease release;  // only raw pointers from here on
      return multi_kernels().get<T, I>().bags(bags, ids);
    });
  });
  if (bad >= 0) throw_bad_multi_id(m, bad);
  if (!out.is(result)) std::memcpy(result.mutable_data(), out.data(), static_cast<std::size_t>(out.nbytes()));
  return result;
}

}  // namespace

void register_multi(py::module_& m) {
  m.def("gather_bags_multi", &gather_bags_multi, py::arg("tables"), py::arg("ids"), py::arg("offsets"),
        py::arg("feature_tables") = py::none(), py::arg("mode") = "sum", py::arg("weights") = py::none(),
        py::arg("out") = py::none(), "Pooled lookups in many tables at once; see embtab.gather_bags_multi.");
}

}  // namespace bind
}  // namespace embtab
