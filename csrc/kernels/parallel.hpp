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

// The most threads a pool may have (set_num_threads refuses more).
constexpr int kMaxThreads = 1024;

// Number of worker threads used by kernels (>= 1).
int get_num_threads();
// Sets it (at most kMaxThreads); n <= 0 restores the default (the CPUs available to this process).
// Throws std::system_error when the threads cannot be started: the pool then keeps its previous
// threads and size.
void set_num_threads(int n);
// The default thread count: CPUs in this process's affinity mask (at most kMaxThreads).
int default_num_threads();

// How long an idle thread of the pool (or a caller waiting for the last chunk) spins, yielding its
// CPU to any other runnable thread between checks, before it blocks (clamped to 0 to
// kMaxSpinMicroseconds; 0: block at once).
constexpr int kMaxSpinMicroseconds = 1000000;
void set_spin_microseconds(int us);
int get_spin_microseconds();

using ChunkFn = void (*)(void* ctx, std::size_t chunk, std::size_t num_chunks);

// Runs fn(ctx, c, n) for c in [0, n) where n = min(max_chunks, get_num_threads()) and returns when
// all are done; an exception thrown by a chunk is rethrown here. The caller and up to n - 1 workers
// each take the next chunk nobody has taken yet, so a worker that is slow to start (its CPU busy
// with another process, or torch's threads) delays nothing: the caller runs its chunks instead.
// If the pool is busy (another Python thread is inside a kernel) or this is a nested call, all
// chunks run on the calling thread. The chunks are the same either way, so are the results.
void run_chunks(std::size_t max_chunks, ChunkFn fn, void* ctx);

}  // namespace embtab

// parallel_for and chunk_range: in per-path translation units, isa_common.hpp includes them inside
// the path's namespace instead (so that no copy compiled with one path's flags can serve another).
#if !defined(EMBTAB_ISA_NS)
namespace embtab {
#include "kernels/parallel_for.hpp"
}  // namespace embtab
#endif
