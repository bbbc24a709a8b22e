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
#include "kernels/lookup.hpp"
#include "kernels/tuner.hpp"

namespace embtab {
namespace bind {

namespace py = pybind11;

namespace {

Isa isa_from_name(const std::string& name) {
  Isa isa;
  if (!parse_isa(name, isa))
    throw py::value_error("unknown SIMD path '" + name + "'; expected 'scalar', 'avx2' or 'avx512'");
  if (!isa_available(isa))
    throw py::value_error("SIMD path '" + name + "' is not available on this CPU or in this build (available: " +
                          [] {
                            std::string s;
                            for (Isa a : available_isas()) s += (s.empty() ? "" : ", ") + std::string(isa_name(a));
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
    for (Isa isa : available_isas()) names.emplace_back(isa_name(isa));
    return names;
  });
  m.def("best_simd_path", [] { return std::string(isa_name(best_isa())); });
  // How pooled lookups prefetch the rows ahead: "auto" (timed, the faster of the two), "row"
  // (every cache line of a row) or "line" (its first line only); EMBTAB_PREFETCH sets it at start-up.
  m.def("set_prefetch_policy", [](const std::string& name) {
    if (name == "auto") set_tune_override(-1);
    else if (name == "row") set_tune_override(0);
    else if (name == "line") set_tune_override(1);
    else throw py::value_error("prefetch policy must be 'auto', 'row' or 'line', got '" + name + "'");
  });
  m.def("get_prefetch_policy", [] {
    const int forced = get_tune_override();
    return std::string(forced == 0 ? "row" : forced == 1 ? "line" : "auto");
  });
  m.def("bags_prefetch_counts", [](std::int64_t row_bytes, std::int64_t chunks, int kind) {
    std::int64_t counts[2];
    tune_counts(TuneSite::bags_prefetch, bags_tune_detail(row_bytes, chunks, kind), counts);
    return py::make_tuple(counts[0], counts[1]);
  }, py::arg("row_bytes"), py::arg("chunks"), py::arg("kind") = 0,
     "Calls of multi-threaded bags (kind 0 sum / mean, 1 weighted, 2 max, 3 max with argmax; plus 4 for "
     "float16 / bfloat16 tables, plus 8 for 8-bit ones) over rows of row_bytes in `chunks` chunks timed so "
     "far with whole-row and lead-line prefetching (for tests).");
}

}  // namespace bind
}  // namespace embtab
