// Hash keys gathered from Python objects into flat buffers that the hashing kernels read without
// the GIL: numpy integer / 'S' / 'U' / object arrays, lists and tuples of str / bytes / bytearray /
// memoryview, and documents (a sequence of such lists).
//
// Safety contract: once a collect_* function returns, everything the KeySource points to is owned
// by the Keys object (array data, copies of short or mutable strings, references to long immutable
// ones), so another thread may rewrite or free the caller's containers while a kernel runs. While
// the keys are gathered, either no Python code runs at all (so nothing can change) or every object
// that is read afterwards is held by a reference of our own.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/hashing.hpp"

namespace embtab {
namespace bind {

namespace py = pybind11;

struct StringBuffers;  // the reusable span and string storage (keys.cpp)

struct Keys {
  KeySource source{KeyKind::spans, 0, 0, nullptr, nullptr, false};
  std::vector<py::ssize_t> shape;  // of the hashed keys (the result's shape)
  py::array array;                 // for array keys: a C-contiguous, native-order view or copy
  std::unique_ptr<StringBuffers> strings;
  std::vector<py::object> alive;                 // long str / bytes objects whose data spans point into
  std::vector<std::unique_ptr<char[]>> copies;   // long bytearray / memoryview contents

  Keys();
  Keys(Keys&&) noexcept;
  Keys& operator=(Keys&&) = delete;
  ~Keys();
};

// The keys of `obj`: an integer array (when allow_ints), a numpy 'S' / 'U' / object array, or a list
// or tuple of str / bytes / bytearray / memoryview. `name` ("keys", "words") names positions in
// errors: TypeError for other types, ValueError for a memoryview that is not C-contiguous.
Keys collect_keys(const py::handle& obj, const char* name, bool allow_ints);

// Documents: a sequence whose items are sequences of string keys. Returns the flat keys and writes
// the CSR offsets (num_documents + 1) of each document's keys.
Keys collect_documents(const py::handle& docs, std::vector<std::int64_t>& offsets);

// TypeError unless the keys are strings (integer arrays are refused where strings are needed).
void require_string_keys(const Keys& keys, const char* name);

// After a kernel returned `bad` (-1 on success): raises for the 'U' element at position `bad` that
// has no UTF-8 form (UnicodeEncodeError for a surrogate, ValueError for a value above U+10FFFF).
void raise_if_unencodable(const Keys& keys, std::int64_t bad, const char* name);

}  // namespace bind
}  // namespace embtab
