// One thread pool for every kernel. Pure C++; no Python.
//
// Work is split into contiguous, statically assigned chunks, so each output element is always
// computed by exactly one thread in one fixed order: results do not depend on the thread count.
//
// The interface takes a plain function pointer plus a context pointer (not std::function) so
// that kernels compiled with -mavx2/-mavx512f never instantiate shared inline library code that
// the linker could then hand to the baseline path; the templates and inline functions over it
// (parallel_for.hpp) are compiled inside each path's namespace.
#pragma once

#include <cstddef>
#include <cstdint>

namespace embtab {

// Number of worker threads used by kernels (>= 1).
int get_num_threads();
// Sets it; n <= 0 restores the default (the CPUs available to this process).
void set_num_threads(int n);
// The default thread count: CPUs in this process's affinity mask.
int default_num_threads();

using ChunkFn = void (*)(void* ctx, std::size_t chunk, std::size_t num_chunks);

// Runs fn(ctx, c, n) for c in [0, n) where n = min(max_chunks, get_num_threads()), one chunk per
// thread, and returns when all are done; an exception thrown by a chunk is rethrown here.
// If the pool is busy (another Python thread is inside a kernel) or this is a nested call, all
// chunks run on the calling thread: same chunks, same results.
void run_chunks(std::size_t max_chunks, ChunkFn fn, void* ctx);

}  // namespace embtab

// parallel_for and chunk_range: in per-path translation units, isa_common.hpp includes them inside
// the path's namespace instead (so that no copy compiled with one path's flags can serve another).
#if !defined(EMBTAB_ISA_NS)
namespace embtab {
#include "kernels/parallel_for.hpp"
}  // namespace embtab
#endif
