// Threads and SIMD path selection.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/register.hpp"
#include "kernels/dispatch.hpp"
#include "kernels/parallel.hpp"

namespace embtab {
namespace bind {

namespace py = pybind11;

namespace {

// The path named `name`; ValueError for an unknown name.
Isa parse_path(const std::string& name) {
  Isa isa;
  if (!parse_isa(name.c_str(), isa))
    throw py::value_error("unknown SIMD path '" + name + "'; expected 'scalar', 'avx2' or 'avx512'");
  return isa;
}

// The path named `name`, which must be available here.
Isa isa_from_name(const std::string& name) {
  const Isa isa = parse_path(name);
  if (!isa_available(isa))
    throw py::value_error("SIMD path '" + name + "' is not available on this CPU or in this build (available: " +
                          [] {
                            std::string s;
                            for (Isa a : kIsas)
                              if (isa_available(a)) s += (s.empty() ? "" : ", ") + std::string(isa_name(a));
                            return s;
                          }() + ")");
  return isa;
}

}  // namespace

void register_runtime(py::module_& m) {
  m.def("get_num_threads", &get_num_threads);
  m.def("set_num_threads", [](int n) {
    if (n < 0) throw py::value_error("num_threads must be >= 0 (0 restores the default), got " + std::to_string(n));
    py::gil_scoped_release release;  // resizing joins worker threads
    set_num_threads(n);
  });
  m.def("default_num_threads", &default_num_threads);
  m.def("simd_path", [] { return std::string(isa_name(current_isa())); });
  m.def("set_simd_path", [](const std::string& name) { set_current_isa(isa_from_name(name)); });
  m.def("available_simd_paths", [] {
    std::vector<std::string> names;
    for (Isa isa : kIsas)
      if (isa_available(isa)) names.emplace_back(isa_name(isa));
    return names;
  });
  m.def("simd_path_features", [](const std::string& name) {
    const char* features = isa_features(parse_path(name));
    if (features == nullptr) throw py::value_error("SIMD path '" + name + "' is not in this build");
    std::vector<std::string> names;
    std::string current;
    for (const char* p = features;; ++p) {
      if (*p == ',' || *p == '\0') {
        if (!current.empty()) names.push_back(current);
        current.clear();
        if (*p == '\0') break;
      } else {
        current += *p;
      }
    }
    return names;
  }, py::arg("name"),
     "The CPU features a SIMD path is compiled for (GCC -m flag names); the path runs only where the CPU "
     "and OS support all of them (see EMBTAB_DISABLE_CPU_FEATURES).");
  m.def("best_simd_path", [] { return std::string(isa_name(best_isa())); });
}

}  // namespace bind
}  // namespace embtab
