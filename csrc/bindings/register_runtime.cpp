// Threads and SIMD path selection.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "bindings/gil.hpp"
#include "bindings/register.hpp"
#include "kernels/buffer_pool.hpp"
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
  m.def("set_num_threads", [](std::int64_t n) {
    if (n < 0 || n > kMaxThreads)
      throw py::value_error("num_threads must be 0 (the default) to " + std::to_string(kMaxThreads) + ", got " +
                            std::to_string(n));
    std::string failure;
    {
      GilRelease release;  // resizing starts or joins worker threads
      try {
        set_num_threads(static_cast<int>(n));
      } catch (const std::system_error& e) {
        failure = e.what();
      }
    }
    if (!failure.empty())
      throw std::runtime_error("could not start " + std::to_string(n) + " threads (" + failure + "); the pool keeps its " +
                               std::to_string(get_num_threads()) + " threads");
  });
  m.def("default_num_threads", &default_num_threads);
  m.def("max_num_threads", [] { return kMaxThreads; });
  m.def("set_spin_time", [](std::int64_t us) {
    if (us < 0 || us > kMaxSpinMicroseconds)
      throw py::value_error("spin time must be 0 to " + std::to_string(kMaxSpinMicroseconds) + " microseconds, got " +
                            std::to_string(us));
    set_spin_microseconds(static_cast<int>(us));
  });
  m.def("get_spin_time", &get_spin_microseconds);
  m.def("release_memory", [] { return pool_clear(); });
  m.def("set_buffer_pool_limit", [](std::int64_t bytes) {
    if (bytes < 0) throw py::value_error("the buffer pool limit must be >= 0 bytes, got " + std::to_string(bytes));
    pool_set_limit(static_cast<std::size_t>(bytes));
  });
  m.def("get_buffer_pool_limit", [] { return pool_limit(); });
  m.def("buffer_pool_cached_bytes", [] { return pool_cached_bytes(); });
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
