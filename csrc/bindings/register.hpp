// One register_<concern>() per binding source; module.cpp calls them all.
#pragma once

#include <pybind11/pybind11.h>

namespace embtab {
namespace bind {

void register_runtime(pybind11::module_& m);
void register_lookup(pybind11::module_& m);
void register_sparse(pybind11::module_& m);
void register_hashing(pybind11::module_& m);
void register_lowp(pybind11::module_& m);
void register_multi(pybind11::module_& m);
void register_validate(pybind11::module_& m);
void register_dynamic(pybind11::module_& m);

}  // namespace bind
}  // namespace embtab
