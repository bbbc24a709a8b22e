// Releasing the GIL around a kernel in a way that survives interpreter exit.
//
// pybind11's gil_scoped_release takes the GIL back in its destructor. A daemon thread that comes back
// from a kernel after the interpreter has started to finalize is ended by CPython inside that call
// (take_gil -> PyThread_exit_thread -> pthread_exit, which unwinds the stack with
// abi::__forced_unwind). An unwind leaving a destructor (noexcept) calls std::terminate: the process
// aborts ("terminate called without an active exception", exit 134) where numpy's threads just end.
// Letting the unwind run on would not be better: the destructors of the binding's locals would drop
// Python references without the GIL while the main thread tears the interpreter down.
//
// GilRelease catches that unwind and parks the thread for good instead, as CPython 3.14 itself does
// with such threads (PyThread_hang_thread): the thread then holds no lock (CPython released the GIL's
// mutex before exiting it), touches no Python object, and the process exits around it.
//
// Use it exactly like py::gil_scoped_release: `GilRelease release;` with the GIL held.
#pragma once

#include <pybind11/pybind11.h>

#include <csignal>

#if defined(__GLIBCXX__)
#include <cxxabi.h>
#endif
#if defined(__unix__)
#include <pthread.h>
#include <unistd.h>
#endif

namespace embtab {
namespace bind {

// Blocks this thread until the process ends; signals go to the other threads.
[[noreturn]] inline void park_thread_forever() noexcept {
#if defined(__unix__)
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);
  for (;;) pause();
#else
  for (;;) {
  }
#endif
}

class GilRelease {
 public:
  GilRelease() : state_(PyEval_SaveThread()) {}
  ~GilRelease() {
#if defined(__GLIBCXX__)
    try {
      PyEval_RestoreThread(state_);
    } catch (abi::__forced_unwind&) {
      park_thread_forever();  // never returns, so the unwind is never resumed (nor swallowed)
    }
#else
    PyEval_RestoreThread(state_);
#endif
  }
  GilRelease(const GilRelease&) = delete;
  GilRelease& operator=(const GilRelease&) = delete;

 private:
  PyThreadState* state_;
};

}  // namespace bind
}  // namespace embtab
