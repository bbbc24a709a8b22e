// Gathering hash keys from Python objects (see keys.hpp for the safety contract).
//
// Lists of plain str / bytes, the common case, are read on the pool threads while the calling
// thread holds the GIL and waits, so no Python code runs and no object can change or go away
// meanwhile. Short strings are copied (cheaper than a reference each); long immutable ones are
// kept alive by a reference; bytearray and memoryview contents are always copied, since another
// thread may resize or rewrite them once the GIL is released.
#include "bindings/keys.hpp"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "bindings/validate.hpp"
#include "kernels/parallel.hpp"

namespace embtab {
namespace bind {

namespace {

// dst[0:len] = src[0:len] for short strings with few branches and no call: fixed-size moves
// that overlap rather than a loop over the remainder.
inline void copy_short(char* dst, const char* src, std::size_t len) {
  if (len >= 8) {
    for (std::size_t k = 0; k + 8 < len; k += 8) std::memcpy(dst + k, src + k, 8);
    std::memcpy(dst + len - 8, src + len - 8, 8);
  } else if (len >= 4) {
    std::memcpy(dst, src, 4);
    std::memcpy(dst + len - 4, src + len - 4, 4);
  } else if (len > 0) {
    dst[0] = src[0];
    dst[len / 2] = src[len / 2];
    dst[len - 1] = src[len - 1];
  }
}

// Copies of short strings, in fixed-size blocks that never move (so spans into them stay valid),
// each followed by at least kSlack readable bytes. reset() keeps the blocks for the next call.
class Arena {
 public:
  static constexpr std::size_t kBlockBytes = std::size_t(1) << 20;
  static constexpr std::size_t kSlack = static_cast<std::size_t>(kSpanPadding);

  // A write position with at least `room` free bytes (room <= kBlockBytes): the caller copies
  // strings there and hands back the position it reached with release().
  struct Cursor {
    char* next;
    std::size_t left;
  };
  Cursor acquire(std::size_t room) {
    if (left_ < room || next_ == nullptr) {
      if (used_ == blocks_.size()) blocks_.emplace_back(new char[kBlockBytes + kSlack]());
      next_ = blocks_[used_++].get();
      left_ = kBlockBytes;
    }
    return Cursor{next_, left_};
  }
  void release(const Cursor& c) {
    next_ = c.next;
    left_ = c.left;
  }
  void reset() {
    used_ = 0;
    next_ = nullptr;
    left_ = 0;
  }
  std::size_t bytes() const { return blocks_.size() * kBlockBytes; }

 private:
  std::vector<std::unique_ptr<char[]>> blocks_;
  std::size_t used_ = 0;
  char* next_ = nullptr;
  std::size_t left_ = 0;
};

// A growable array of spans. Unlike std::vector it leaves new room uninitialised and takes
// field-by-field writes (a StrSpan built on the stack and copied whole stalls on store forwarding).
class SpanBuffer {
 public:
  std::size_t size() const { return size_; }
  std::size_t capacity() const { return cap_; }
  const StrSpan* data() const { return data_.get(); }
  void clear() { size_ = 0; }
  // Room for `more` spans after the current ones; returns where the next one goes.
  StrSpan* reserve_more(std::size_t more) {
    if (size_ + more > cap_) {
      const std::size_t cap = std::max(size_ + more, 2 * cap_);
      std::unique_ptr<StrSpan[]> grown(new StrSpan[cap]);
      if (size_) std::memcpy(grown.get(), data_.get(), size_ * sizeof(StrSpan));
      data_ = std::move(grown);
      cap_ = cap;
    }
    return data_.get() + size_;
  }
  void commit(std::size_t added) { size_ += added; }

 private:
  std::unique_ptr<StrSpan[]> data_;
  std::size_t size_ = 0, cap_ = 0;
};

}  // namespace

// Where string keys are gathered. The buffers of the last call are kept for the next one on the
// same thread (up to kKeepBytes): freshly allocated memory of this size comes from the OS, and
// faulting its pages in costs more than hashing short keys.
struct StringBuffers {
  static constexpr std::size_t kKeepBytes = std::size_t(64) << 20;
  SpanBuffer spans;
  std::vector<Arena> arenas;    // one per chunk of the parallel gathering
  std::vector<PyObject*> flat;  // the tokens of documents, in order

  void clear() {
    spans.clear();
    for (Arena& a : arenas) a.reset();
    flat.clear();
  }
  std::size_t bytes() const {
    std::size_t total = spans.capacity() * sizeof(StrSpan) + flat.capacity() * sizeof(PyObject*);
    for (const Arena& a : arenas) total += a.bytes();
    return total;
  }
};

namespace {

thread_local std::unique_ptr<StringBuffers> t_spare_buffers;

// Every span of up to kCopyBytes (>= kPaddedSpanMax) bytes is a copy in an arena, so the kernels
// may read kSpanPadding bytes past its end.
constexpr std::size_t kCopy = 64;
static_assert(kCopy >= static_cast<std::size_t>(kPaddedSpanMax), "short spans must all be padded copies");

StringBuffers& buffers(Keys& keys) {
  if (!keys.strings)
    keys.strings = t_spare_buffers ? std::move(t_spare_buffers) : std::make_unique<StringBuffers>();
  return *keys.strings;
}

void finish_spans(Keys& keys) {
  const SpanBuffer& s = buffers(keys).spans;
  keys.source = KeySource{KeyKind::spans, static_cast<std::int64_t>(s.size()), 0, nullptr, s.data(), true};
}

// The name of an object's type, read from the type object itself: no attribute lookup, which a
// metaclass could turn into Python code.
std::string type_name(PyObject* obj) {
  const char* name = Py_TYPE(obj)->tp_name;
  const char* dot = std::strrchr(name, '.');
  return dot ? dot + 1 : name;
}

// Replaces the pending UnicodeEncodeError by the same error whose reason names the key's position
// (`where`, e.g. "keys[3]"); other errors pass through unchanged.
[[noreturn]] void rethrow_with_position(const std::string& where) {
  py::error_already_set err;
  if (!err.matches(PyExc_UnicodeEncodeError)) throw err;
  const py::object e = err.value();
  const std::string reason = py::str(e.attr("reason")).cast<std::string>() + " (in " + where + ")";
  const py::object replacement = py::reinterpret_borrow<py::object>(PyExc_UnicodeEncodeError)(
      e.attr("encoding"), e.attr("object"), e.attr("start"), e.attr("end"), reason);
  PyErr_SetObject(PyExc_UnicodeEncodeError, replacement.ptr());
  throw py::error_already_set();
}

// Compact ASCII text is its own UTF-8 (PyUnicode_AsUTF8AndSize returns the same bytes).
inline bool is_compact_ascii(PyObject* item) {
  if (!PyUnicode_CheckExact(item)) return false;
#if PY_VERSION_HEX < 0x030C0000
  if (!PyUnicode_IS_READY(item)) return false;
#endif
  return PyUnicode_IS_COMPACT_ASCII(item);
}

// The bytes of one key. `stable` says they live in an immutable object (str / bytes) that a
// reference keeps valid; otherwise (bytearray, memoryview) they must be copied before the GIL is
// released. A memoryview's buffer is held until the copy is made.
struct KeyBytes {
  StrSpan span{nullptr, 0};
  bool stable = true;
  Py_buffer view{};
  bool has_view = false;

  KeyBytes() = default;
  KeyBytes(const KeyBytes&) = delete;
  KeyBytes& operator=(const KeyBytes&) = delete;
  ~KeyBytes() {
    if (has_view) PyBuffer_Release(&view);
  }
};

// Reads one key: str (as UTF-8), bytes, bytearray or a C-contiguous memoryview. None of these runs
// Python code. `where` is only built on error.
template <class Where>
void key_bytes(PyObject* item, const Where& where, KeyBytes& out) {
  if (PyUnicode_Check(item)) {
    Py_ssize_t len = 0;
    const char* p = PyUnicode_AsUTF8AndSize(item, &len);  // cached in the str object
    if (!p) rethrow_with_position(where());
    out.span = StrSpan{p, static_cast<std::int64_t>(len)};
    return;
  }
  if (PyBytes_Check(item)) {
    out.span = StrSpan{PyBytes_AS_STRING(item), static_cast<std::int64_t>(PyBytes_GET_SIZE(item))};
    return;
  }
  if (PyByteArray_Check(item)) {
    out.span = StrSpan{PyByteArray_AS_STRING(item), static_cast<std::int64_t>(PyByteArray_GET_SIZE(item))};
    out.stable = false;
    return;
  }
  if (PyMemoryView_Check(item)) {
    if (PyObject_GetBuffer(item, &out.view, PyBUF_SIMPLE) != 0) {
      const py::error_already_set err;  // a released view, or one that is not C-contiguous
      throw py::value_error(where() + " is a memoryview that cannot be read as contiguous bytes (" +
                            std::string(py::str(err.value())) + ")");
    }
    out.has_view = true;
    out.span = StrSpan{static_cast<const char*>(out.view.buf), static_cast<std::int64_t>(out.view.len)};
    out.stable = false;
    return;
  }
  throw py::type_error(where() + " must be str, bytes, bytearray or memoryview, got " + type_name(item) +
                       (PyLong_Check(item) ? " (hash integers as a numpy integer array)" : ""));
}

// The items of a list or tuple (itself) or of another iterable (a new list).
py::object as_fast_sequence(const py::handle& seq) {
  PyObject* s = PySequence_Fast(seq.ptr(), "expected a sequence");
  if (!s) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(s);
}

// Copies a short string to the cursor's block (refilled from `arena` when low) and returns where.
inline const char* copy_to(Arena& arena, Arena::Cursor& cursor, const char* ptr, std::size_t len) {
  if (cursor.left < kCopy) {
    arena.release(cursor);
    cursor = arena.acquire(kCopy);
  }
  copy_short(cursor.next, ptr, len);
  const char* at = cursor.next;
  cursor.next += len;
  cursor.left -= len;
  return at;
}

// One chunk of the parallel gathering. It runs on pool threads while the calling thread holds the
// GIL and waits; it only reads the immutable fields of exact str (compact ASCII) and bytes objects
// and copies short ones. Anything else (other types, non-ASCII text, which may need its UTF-8
// created, and long strings, which need a reference) is left to the calling thread, in order.
struct GatherJob {
  PyObject* const* items;
  std::size_t n;
  StrSpan* out;
  std::vector<Arena>* arenas;
  std::vector<std::vector<std::size_t>>* deferred;
};

void gather_chunk(void* ctx, std::size_t chunk, std::size_t num_chunks) {
  GatherJob& job = *static_cast<GatherJob*>(ctx);
  std::size_t begin, end;
  chunk_range(job.n, chunk, num_chunks, begin, end);
  Arena& arena = (*job.arenas)[chunk];
  std::vector<std::size_t>& deferred = (*job.deferred)[chunk];
  Arena::Cursor cursor = arena.acquire(kCopy);
  PyObject* const* items = job.items;
  StrSpan* out = job.out;
  // The objects are scattered in memory: fetch them ahead, header and text (which can start on
  // the next cache line).
  constexpr std::size_t kAhead = 12;
  for (std::size_t i = begin; i < end; ++i) {
    if (i + kAhead < end) {
      const char* ahead = reinterpret_cast<const char*>(items[i + kAhead]);
      __builtin_prefetch(ahead);
      __builtin_prefetch(ahead + 63);
    }
    PyObject* item = items[i];
    const char* ptr;  // plain scalars rather than a StrSpan: they stay in registers
    std::size_t len;
    if (is_compact_ascii(item)) {
      ptr = static_cast<const char*>(PyUnicode_DATA(item));
      len = static_cast<std::size_t>(PyUnicode_GET_LENGTH(item));
    } else if (PyBytes_CheckExact(item)) {
      ptr = PyBytes_AS_STRING(item);
      len = static_cast<std::size_t>(PyBytes_GET_SIZE(item));
    } else {
      deferred.push_back(i);
      continue;
    }
    if (len > kCopy) {
      deferred.push_back(i);
      continue;
    }
    out[i].ptr = copy_to(arena, cursor, ptr, len);
    out[i].len = static_cast<std::int64_t>(len);
  }
  arena.release(cursor);
}

// Adds items[0:n] (the GIL held; nothing here runs Python code, so the items cannot change while
// they are read); position(i) names item i in an error message.
template <class Position>
void add_items(Keys& keys, PyObject* const* items, std::size_t n, const Position& position) {
  constexpr std::size_t kGrain = 1 << 13;
  StringBuffers& bufs = buffers(keys);
  StrSpan* out = bufs.spans.reserve_more(n);
  std::vector<Arena>& arenas = bufs.arenas;
  const std::size_t max_chunks = std::max<std::size_t>(
      1, std::min<std::size_t>(static_cast<std::size_t>(get_num_threads()), (n + kGrain - 1) / kGrain));
  if (arenas.size() < max_chunks) arenas.resize(max_chunks);
  std::vector<std::vector<std::size_t>> deferred(max_chunks);
  GatherJob job{items, n, out, &arenas, &deferred};
  if (n > 0) run_chunks(max_chunks, &gather_chunk, &job);

  Arena& arena = arenas[0];
  Arena::Cursor cursor = arena.acquire(kCopy);
  for (const std::vector<std::size_t>& chunk : deferred) {
    for (std::size_t i : chunk) {
      arena.release(cursor);  // key_bytes may throw
      KeyBytes key;
      key_bytes(items[i], [&] { return position(i); }, key);
      const std::size_t len = static_cast<std::size_t>(key.span.len);
      if (len <= kCopy) {
        out[i].ptr = copy_to(arena, cursor, key.span.ptr, len);
      } else if (key.stable) {
        keys.alive.push_back(py::reinterpret_borrow<py::object>(items[i]));
        out[i].ptr = key.span.ptr;
      } else {
        keys.copies.emplace_back(new char[len]);
        std::memcpy(keys.copies.back().get(), key.span.ptr, len);
        out[i].ptr = keys.copies.back().get();
      }
      out[i].len = key.span.len;
    }
  }
  arena.release(cursor);
  bufs.spans.commit(n);
}

void add_strings(Keys& keys, const py::object& seq, const char* name, const std::vector<py::ssize_t>& shape) {
  add_items(keys, PySequence_Fast_ITEMS(seq.ptr()), static_cast<std::size_t>(PySequence_Fast_GET_SIZE(seq.ptr())),
            [&](std::size_t i) { return position_str(name, shape, static_cast<std::int64_t>(i)); });
}

bool is_sequence_of_keys(const py::handle& obj) { return PyList_Check(obj.ptr()) || PyTuple_Check(obj.ptr()); }

bool is_list_or_tuple(PyObject* obj) { return PyList_CheckExact(obj) || PyTuple_CheckExact(obj); }

}  // namespace

Keys::Keys() = default;
Keys::Keys(Keys&&) noexcept = default;
Keys::~Keys() {
  if (!strings) return;
  strings->clear();
  if (strings->bytes() <= StringBuffers::kKeepBytes) t_spare_buffers = std::move(strings);
}

Keys collect_keys(const py::handle& obj, const char* name, bool allow_ints) {
  Keys keys;
  if (py::isinstance<py::array>(obj)) {
    py::array a = py::reinterpret_borrow<py::array>(obj);
    keys.shape.assign(a.shape(), a.shape() + a.ndim());
    const char kind = a.dtype().kind();
    const std::int64_t n = a.size();
    if (kind == 'O') {
      // A new list holding its own references to the items.
      add_strings(keys, as_fast_sequence(a.attr("ravel")()), name, keys.shape);
      finish_spans(keys);
      return keys;
    }
    const bool ints = kind == 'i' || kind == 'u';
    if (!(kind == 'S' || kind == 'U' || (ints && allow_ints)))
      throw py::type_error(std::string(name) + " must be " +
                           (allow_ints ? "an integer, bytes ('S') or str ('U') array" : "a bytes ('S') or str ('U') array") +
                           " or a list of str / bytes, got an array of dtype " + dtype_str(a));
    // Native byte order, C order and aligned (the kernels load whole integers); no copy when the
    // array already is.
    const py::dtype native = a.dtype().attr("newbyteorder")("=").cast<py::dtype>();
    keys.array = py::module_::import("numpy")
                     .attr("require")(a, native, py::make_tuple("C_CONTIGUOUS", "ALIGNED"))
                     .cast<py::array>();
    const std::int64_t itemsize = keys.array.itemsize();
    if (kind == 'U')
      keys.source = KeySource{KeyKind::fixed_ucs4, n, itemsize / 4, keys.array.data(), nullptr, false};
    else if (kind == 'S')
      keys.source = KeySource{KeyKind::fixed_bytes, n, itemsize, keys.array.data(), nullptr, false};
    else
      keys.source = KeySource{KeyKind::ints, n, itemsize, keys.array.data(), nullptr, false};
    return keys;
  }
  if (!is_sequence_of_keys(obj))
    throw py::type_error(std::string(name) + " must be a list or tuple of str / bytes or a numpy array, got " +
                         type_name(obj.ptr()));
  const std::int64_t n = static_cast<std::int64_t>(PySequence_Fast_GET_SIZE(obj.ptr()));
  keys.shape = {static_cast<py::ssize_t>(n)};
  add_strings(keys, py::reinterpret_borrow<py::object>(obj), name, keys.shape);
  finish_spans(keys);
  return keys;
}

Keys collect_documents(const py::handle& docs_obj, std::vector<std::int64_t>& offsets) {
  Keys keys;
  std::vector<PyObject*>& flat = buffers(keys).flat;
  py::object docs = as_fast_sequence(docs_obj);
  const Py_ssize_t num_docs = PySequence_Fast_GET_SIZE(docs.ptr());
  // Documents that are lists or tuples are read in place. Any other document is turned into a list
  // by running its __iter__, which may change the outer list or other documents: then every
  // document is first held by a reference of ours (lists as tuple copies, taken in order, so each
  // one is read as it was when its turn came, as a Python loop over the documents would see it).
  bool all_in_place = true;
  for (Py_ssize_t d = 0; d < num_docs && all_in_place; ++d)
    all_in_place = is_list_or_tuple(PySequence_Fast_ITEMS(docs.ptr())[d]);
  std::vector<py::object> held;
  if (!all_in_place) {
    docs = py::reinterpret_steal<py::object>(PySequence_Tuple(docs.ptr()));
    if (!docs) throw py::error_already_set();
    held.reserve(static_cast<std::size_t>(num_docs));
  }
  offsets.assign(1, 0);
  offsets.reserve(static_cast<std::size_t>(num_docs) + 1);
  for (Py_ssize_t d = 0; d < num_docs; ++d) {
    PyObject* doc = PySequence_Fast_ITEMS(docs.ptr())[d];
    PyObject* fast = doc;
    if (!all_in_place) {
      const auto doc_name = [d] { return "tokens[" + std::to_string(d) + "]"; };
      if (PyUnicode_Check(doc) || PyBytes_Check(doc))
        throw py::type_error(doc_name() + " is a " + type_name(doc) +
                             ", but tokens is a list of documents (each a list of str / bytes)");
      fast = PyList_Check(doc) ? PyList_AsTuple(doc) : PySequence_Fast(doc, "");
      if (!fast) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
          PyErr_Clear();
          throw py::type_error(doc_name() + " must be a list of str / bytes (a document), got " + type_name(doc));
        }
        throw py::error_already_set();  // raised by the document's own __iter__
      }
      held.push_back(py::reinterpret_steal<py::object>(fast));
    }
    offsets.push_back(offsets.back() + static_cast<std::int64_t>(PySequence_Fast_GET_SIZE(fast)));
  }
  // From here on no Python code runs: the documents read in place cannot change.
  flat.reserve(static_cast<std::size_t>(offsets.back()));
  for (Py_ssize_t d = 0; d < num_docs; ++d) {
    PyObject* fast = all_in_place ? PySequence_Fast_ITEMS(docs.ptr())[d] : held[static_cast<std::size_t>(d)].ptr();
    PyObject** tokens = PySequence_Fast_ITEMS(fast);
    flat.insert(flat.end(), tokens, tokens + PySequence_Fast_GET_SIZE(fast));
  }
  add_items(keys, flat.data(), flat.size(), [&](std::size_t i) {
    const std::size_t d = static_cast<std::size_t>(
        std::upper_bound(offsets.begin(), offsets.end(), static_cast<std::int64_t>(i)) - offsets.begin() - 1);
    return "tokens[" + std::to_string(d) + "][" + std::to_string(static_cast<std::int64_t>(i) - offsets[d]) + "]";
  });
  keys.shape = {static_cast<py::ssize_t>(flat.size())};
  finish_spans(keys);
  return keys;
}

void require_string_keys(const Keys& keys, const char* name) {
  if (keys.source.kind == KeyKind::ints)
    throw py::type_error(std::string(name) + " must hold strings (str / bytes, or a 'U' / 'S' array), got an array of dtype " +
                         dtype_str(keys.array));
}

void raise_if_unencodable(const Keys& keys, std::int64_t bad, const char* name) {
  if (bad < 0) return;
  const auto* p = static_cast<const unsigned char*>(keys.source.data) + 4 * bad * keys.source.width;
  std::int64_t at = 0;
  std::uint32_t c = 0;
  for (; at < keys.source.width; ++at) {
    std::memcpy(&c, p + 4 * at, 4);
    if ((c >= 0xD800 && c <= 0xDFFF) || c > 0x10FFFF) break;
  }
  const std::string where = position_str(name, keys.shape, bad);
  if (c > 0x10FFFF)
    throw py::value_error(where + " holds the value " + std::to_string(c) + " at character " + std::to_string(at) +
                          ", which is not a Unicode code point");
  const py::object item = keys.array.attr("reshape")(-1)[py::int_(bad)].attr("item")();
  const py::object error = py::reinterpret_borrow<py::object>(PyExc_UnicodeEncodeError)(
      "utf-8", item, at, at + 1, "surrogates not allowed (in " + where + ")");
  PyErr_SetObject(PyExc_UnicodeEncodeError, error.ptr());
  throw py::error_already_set();
}

}  // namespace bind
}  // namespace embtab
