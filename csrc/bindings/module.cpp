#include <pybind11/pybind11.h>

#include "bindings/register.hpp"

PYBIND11_MODULE(_core, m) {
  m.doc() = "embtab's compiled kernels. Use the public API in the embtab package.";
#ifdef EMBTAB_VERSION
  m.attr("__version__") = EMBTAB_VERSION;
#endif
  embtab::bind::register_runtime(m);
  embtab::bind::register_lookup(m);
  embtab::bind::register_sparse(m);
  embtab::bind::register_hashing(m);
  embtab::bind::register_lowp(m);
  embtab::bind::register_multi(m);
  embtab::bind::register_validate(m);
  embtab::bind::register_dynamic(m);
}
