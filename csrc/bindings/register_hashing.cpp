// murmur3_32 / murmur3_128 / hash_buckets / feature_hash / fasttext_hash / subword_ngrams:
// gathering the keys while holding the GIL (plain str / bytes on the pool threads, everything else
// on the calling thread), then hashing them in parallel without it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bindings/register.hpp"
#include "bindings/validate.hpp"
#include "kernels/hashing.hpp"
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

// Where string keys are gathered. The buffers of the last call are kept for the next one on the
// same thread (up to kKeepBytes): freshly allocated memory of this size comes from the OS, and
// faulting its pages in costs more than hashing short keys.
struct StringBuffers {
  static constexpr std::size_t kKeepBytes = std::size_t(64) << 20;
  SpanBuffer spans;
  std::vector<Arena> arenas;        // one per chunk of the parallel gathering
  std::vector<PyObject*> flat;      // the tokens of documents, in order

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
thread_local std::unique_ptr<StringBuffers> t_spare_buffers;

// The keys of one call. A kernel reads them after the GIL is released, when another thread may
// change the caller's list and free its strings; so everything it reads is owned here: array data,
// copies of short strings (cheaper than holding a reference to each), and references to the
// str / bytes objects of longer ones.
struct Keys {
  static constexpr std::int64_t kCopyBytes = 64;

  KeySource source{KeyKind::spans, 0, 0, nullptr, nullptr, false};
  std::vector<py::ssize_t> shape;  // of the hashed keys (the result's shape)
  py::array array;                 // for array keys: a C-contiguous, native-order view or copy
  std::unique_ptr<StringBuffers> strings;
  std::vector<py::object> alive;

  Keys() = default;
  Keys(Keys&&) = default;
  Keys& operator=(Keys&&) = delete;
  ~Keys() {
    if (!strings) return;
    strings->clear();
    if (strings->bytes() <= StringBuffers::kKeepBytes) t_spare_buffers = std::move(strings);
  }

  SpanBuffer& spans() {
    if (!strings) strings = t_spare_buffers ? std::move(t_spare_buffers) : std::make_unique<StringBuffers>();
    return strings->spans;
  }
  static_assert(kCopyBytes >= kPaddedSpanMax, "short spans must all be padded copies");
  void finish_spans() {
    const SpanBuffer& s = spans();
    // Every span of up to kCopyBytes (>= kPaddedSpanMax) bytes is a copy in the arena.
    source = KeySource{KeyKind::spans, static_cast<std::int64_t>(s.size()), 0, nullptr, s.data(), true};
  }
};

std::string type_name(const py::handle& obj) { return py::str(py::type::of(obj).attr("__name__")).cast<std::string>(); }

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

// The UTF-8 bytes of a str or the bytes of a bytes object; TypeError for anything else.
// `where` is only built on error.
template <class Where>
StrSpan string_span(PyObject* item, const Where& where) {
  if (PyUnicode_Check(item)) {
    Py_ssize_t len = 0;
    const char* p = PyUnicode_AsUTF8AndSize(item, &len);  // cached in the str object
    if (!p) rethrow_with_position(where());
    return StrSpan{p, static_cast<std::int64_t>(len)};
  }
  if (PyBytes_Check(item)) return StrSpan{PyBytes_AS_STRING(item), static_cast<std::int64_t>(PyBytes_GET_SIZE(item))};
  throw py::type_error(where() + " must be str or bytes, got " + type_name(item) +
                       (PyLong_Check(item) ? " (hash integers as a numpy integer array)" : ""));
}

// The items of a list or tuple (itself) or of another iterable (a new list); nothing here runs
// Python code while the items are read, so they stay as they are.
py::object as_fast_sequence(const py::handle& seq) {
  PyObject* s = PySequence_Fast(seq.ptr(), "expected a sequence");
  if (!s) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(s);
}

constexpr std::size_t kCopy = static_cast<std::size_t>(Keys::kCopyBytes);

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
// GIL and waits, so no Python code runs and no object can change or go away meanwhile; the chunk
// only reads the immutable fields of exact str (compact ASCII) and bytes objects and copies short
// ones. Anything else (other types, non-ASCII text, which may need its UTF-8 created, and long
// strings, which need a reference) is left to the calling thread, in order.
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

// Adds items[0:n] (the GIL held); position(i) names item i in an error message.
template <class Position>
void add_items(Keys& keys, PyObject* const* items, std::size_t n, const Position& position) {
  constexpr std::size_t kGrain = 1 << 13;
  SpanBuffer& spans = keys.spans();
  StrSpan* out = spans.reserve_more(n);
  std::vector<Arena>& arenas = keys.strings->arenas;
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
      arena.release(cursor);  // string_span may throw
      const StrSpan span = string_span(items[i], [&] { return position(i); });
      const std::size_t len = static_cast<std::size_t>(span.len);
      if (len <= kCopy) {
        out[i].ptr = copy_to(arena, cursor, span.ptr, len);
      } else {
        keys.alive.push_back(py::reinterpret_borrow<py::object>(items[i]));
        out[i].ptr = span.ptr;
      }
      out[i].len = span.len;
    }
  }
  arena.release(cursor);
  spans.commit(n);
}

void add_strings(Keys& keys, const py::object& seq, const char* name, const std::vector<py::ssize_t>& shape) {
  add_items(keys, PySequence_Fast_ITEMS(seq.ptr()), static_cast<std::size_t>(PySequence_Fast_GET_SIZE(seq.ptr())),
            [&](std::size_t i) { return position_str(name, shape, static_cast<std::int64_t>(i)); });
}

bool is_sequence_of_keys(const py::handle& obj) { return PyList_Check(obj.ptr()) || PyTuple_Check(obj.ptr()); }

// The flat position of the first code point of a 'U' element that UTF-8 cannot encode.
[[noreturn]] void throw_bad_ucs4(const Keys& keys, std::int64_t pos, const char* name) {
  const auto* p = static_cast<const unsigned char*>(keys.source.data) + 4 * pos * keys.source.width;
  std::int64_t at = 0;
  std::uint32_t c = 0;
  for (; at < keys.source.width; ++at) {
    std::memcpy(&c, p + 4 * at, 4);
    if ((c >= 0xD800 && c <= 0xDFFF) || c > 0x10FFFF) break;
  }
  const std::string where = position_str(name, keys.shape, pos);
  if (c > 0x10FFFF)
    throw py::value_error(where + " holds the value " + std::to_string(c) + " at character " + std::to_string(at) +
                          ", which is not a Unicode code point");
  const py::object item = keys.array.attr("reshape")(-1)[py::int_(pos)].attr("item")();
  const py::object error = py::reinterpret_borrow<py::object>(PyExc_UnicodeEncodeError)(
      "utf-8", item, at, at + 1, "surrogates not allowed (in " + where + ")");
  PyErr_SetObject(PyExc_UnicodeEncodeError, error.ptr());
  throw py::error_already_set();
}

// Gathers the keys of `obj`: an integer array (when allow_ints), a numpy 'S' / 'U' / object array,
// or a list / tuple of str and bytes.
Keys collect_keys(const py::handle& obj, const char* name, bool allow_ints) {
  Keys keys;
  if (py::isinstance<py::array>(obj)) {
    py::array a = py::reinterpret_borrow<py::array>(obj);
    keys.shape.assign(a.shape(), a.shape() + a.ndim());
    const char kind = a.dtype().kind();
    const std::int64_t n = a.size();
    if (kind == 'O') {
      add_strings(keys, as_fast_sequence(a.attr("ravel")()), name, keys.shape);
      keys.finish_spans();
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
                         type_name(obj));
  const std::int64_t n = static_cast<std::int64_t>(PySequence_Fast_GET_SIZE(obj.ptr()));
  keys.shape = {static_cast<py::ssize_t>(n)};
  add_strings(keys, py::reinterpret_borrow<py::object>(obj), name, keys.shape);
  keys.finish_spans();
  return keys;
}

void check_strings(const Keys& keys, const char* name) {
  if (keys.source.kind == KeyKind::ints)
    throw py::type_error(std::string(name) + " must hold strings (str / bytes, or a 'U' / 'S' array), got an array of dtype " +
                         dtype_str(keys.array));
}

void check_done(const Keys& keys, std::int64_t bad, const char* name) {
  if (bad >= 0) throw_bad_ucs4(keys, bad, name);
}

std::uint32_t check_seed(std::int64_t seed) {
  if (seed < 0 || seed > 0xFFFFFFFFll)
    throw py::value_error("seed must be in [0, 2**32), got " + std::to_string(seed));
  return static_cast<std::uint32_t>(seed);
}

std::uint64_t check_positive(std::int64_t value, const char* name) {
  if (value < 1) throw py::value_error(std::string(name) + " must be >= 1, got " + std::to_string(value));
  return static_cast<std::uint64_t>(value);
}

py::array murmur3_32(const py::handle& keys_obj, std::int64_t seed_value) {
  const std::uint32_t seed = check_seed(seed_value);
  const Keys keys = collect_keys(keys_obj, "keys", true);
  py::array_t<std::uint32_t> out(keys.shape);
  std::uint32_t* out_ptr = out.mutable_data();
  std::int64_t bad;
  {
    py::gil_scoped_release release;  // only raw pointers from here on
    bad = hash_kernels().murmur3_32(keys.source, seed, out_ptr);
  }
  check_done(keys, bad, "keys");
  return std::move(out);
}

py::array murmur3_128(const py::handle& keys_obj, std::int64_t seed_value) {
  const std::uint32_t seed = check_seed(seed_value);
  const Keys keys = collect_keys(keys_obj, "keys", true);
  std::vector<py::ssize_t> shape = keys.shape;
  shape.push_back(2);
  py::array_t<std::uint64_t> out(shape);
  std::uint64_t* out_ptr = out.mutable_data();
  std::int64_t bad;
  {
    py::gil_scoped_release release;
    bad = hash_kernels().murmur3_128(keys.source, seed, out_ptr);
  }
  check_done(keys, bad, "keys");
  return std::move(out);
}

py::array hash_buckets(const py::handle& keys_obj, std::int64_t num_buckets_value, std::int64_t seed_value) {
  const std::uint64_t num_buckets = check_positive(num_buckets_value, "num_buckets");
  const std::uint32_t seed = check_seed(seed_value);
  const Keys keys = collect_keys(keys_obj, "keys", true);
  py::array_t<std::int64_t> out(keys.shape);
  std::int64_t* out_ptr = out.mutable_data();
  std::int64_t bad;
  {
    py::gil_scoped_release release;
    bad = hash_kernels().buckets(keys.source, seed, num_buckets, out_ptr);
  }
  check_done(keys, bad, "keys");
  return std::move(out);
}

// Documents (an outer list of inner sequences of str / bytes): the flat spans and CSR offsets.
Keys collect_documents(const py::handle& docs_obj, std::vector<std::int64_t>& offsets) {
  Keys keys;
  keys.spans();
  std::vector<PyObject*>& flat = keys.strings->flat;
  const py::object docs = as_fast_sequence(docs_obj);
  const Py_ssize_t num_docs = PySequence_Fast_GET_SIZE(docs.ptr());
  std::vector<py::object> doc_items;  // holds what PySequence_Fast made until the tokens are gathered
  offsets.assign(1, 0);
  offsets.reserve(static_cast<std::size_t>(num_docs) + 1);
  for (Py_ssize_t d = 0; d < num_docs; ++d) {
    PyObject* doc = PySequence_Fast_ITEMS(docs.ptr())[d];
    PyObject* fast = doc;  // a list or tuple is read in place (`docs` keeps it alive)
    if (!PyList_CheckExact(doc) && !PyTuple_CheckExact(doc)) {
      const auto doc_name = [d] { return "tokens[" + std::to_string(d) + "]"; };
      if (PyUnicode_Check(doc) || PyBytes_Check(doc))
        throw py::type_error(doc_name() + " is a " + type_name(doc) +
                             ", but tokens is a list of documents (each a list of str / bytes)");
      fast = PySequence_Fast(doc, "");
      if (!fast) {
        PyErr_Clear();
        throw py::type_error(doc_name() + " must be a list of str / bytes (a document), got " + type_name(doc));
      }
      doc_items.push_back(py::reinterpret_steal<py::object>(fast));
    }
    PyObject** tokens = PySequence_Fast_ITEMS(fast);
    flat.insert(flat.end(), tokens, tokens + PySequence_Fast_GET_SIZE(fast));
    offsets.push_back(static_cast<std::int64_t>(flat.size()));
  }
  add_items(keys, flat.data(), flat.size(), [&](std::size_t i) {
    const std::size_t d = static_cast<std::size_t>(
        std::upper_bound(offsets.begin(), offsets.end(), static_cast<std::int64_t>(i)) - offsets.begin() - 1);
    return "tokens[" + std::to_string(d) + "][" + std::to_string(static_cast<std::int64_t>(i) - offsets[d]) + "]";
  });
  keys.shape = {static_cast<py::ssize_t>(flat.size())};
  keys.finish_spans();
  return keys;
}

py::tuple feature_hash(const py::handle& tokens_obj, std::int64_t n_features_value, bool alternate_sign,
                       bool documents) {
  const std::uint64_t n_features = check_positive(n_features_value, "n_features");
  std::vector<std::int64_t> offsets;
  const Keys keys = documents ? collect_documents(tokens_obj, offsets) : collect_keys(tokens_obj, "tokens", false);
  check_strings(keys, "tokens");
  py::array_t<std::int64_t> indices(keys.shape);
  py::array_t<float> signs(keys.shape);
  std::int64_t* indices_ptr = indices.mutable_data();
  float* signs_ptr = signs.mutable_data();
  std::int64_t bad;
  {
    py::gil_scoped_release release;
    bad = hash_kernels().feature_hash(keys.source, n_features, alternate_sign, indices_ptr, signs_ptr);
  }
  check_done(keys, bad, "tokens");
  if (!documents) return py::make_tuple(indices, signs);
  py::array_t<std::int64_t> offsets_array(static_cast<py::ssize_t>(offsets.size()));
  std::copy(offsets.begin(), offsets.end(), offsets_array.mutable_data());
  return py::make_tuple(indices, signs, offsets_array);
}

py::array fasttext_hash(const py::handle& keys_obj) {
  const Keys keys = collect_keys(keys_obj, "strings", false);
  check_strings(keys, "strings");
  py::array_t<std::uint32_t> out(keys.shape);
  std::uint32_t* out_ptr = out.mutable_data();
  std::int64_t bad;
  {
    py::gil_scoped_release release;
    bad = hash_kernels().fasttext_hash(keys.source, out_ptr);
  }
  check_done(keys, bad, "strings");
  return std::move(out);
}

py::tuple subword_ngrams(const py::handle& words_obj, int minn, int maxn, std::int64_t bucket_value,
                         std::int64_t offset) {
  if (minn < 1) throw py::value_error("minn must be >= 1, got " + std::to_string(minn));
  if (maxn < minn)
    throw py::value_error("maxn must be >= minn, got minn=" + std::to_string(minn) + ", maxn=" + std::to_string(maxn));
  const std::uint64_t bucket = check_positive(bucket_value, "bucket");
  if (offset < 0) throw py::value_error("offset must be >= 0, got " + std::to_string(offset));
  if (offset > INT64_MAX - bucket_value)
    throw py::value_error("offset + bucket must fit in int64, got offset=" + std::to_string(offset));
  const Keys keys = collect_keys(words_obj, "words", false);
  check_strings(keys, "words");
  const std::int64_t n = keys.source.n;
  py::array_t<std::int64_t> offsets(static_cast<py::ssize_t>(n + 1));
  std::int64_t* offsets_ptr = offsets.mutable_data();
  offsets_ptr[0] = 0;
  std::int64_t bad;
  {
    py::gil_scoped_release release;
    bad = hash_kernels().subword_counts(keys.source, minn, maxn, offsets_ptr + 1);
    if (bad < 0)
      for (std::int64_t i = 0; i < n; ++i) offsets_ptr[i + 1] += offsets_ptr[i];
  }
  check_done(keys, bad, "words");
  py::array_t<std::int64_t> ids(static_cast<py::ssize_t>(offsets_ptr[n]));
  std::int64_t* ids_ptr = ids.mutable_data();
  {
    py::gil_scoped_release release;
    bad = hash_kernels().subword_ids(keys.source, minn, maxn, bucket, offset, offsets_ptr, ids_ptr);
  }
  check_done(keys, bad, "words");
  return py::make_tuple(ids, offsets);
}

}  // namespace

void register_hashing(py::module_& m) {
  m.def("murmur3_32", &murmur3_32, py::arg("keys"), py::arg("seed") = 0,
        "MurmurHash3_x86_32 of each key as uint32; see embtab.murmur3_32.");
  m.def("murmur3_128", &murmur3_128, py::arg("keys"), py::arg("seed") = 0,
        "MurmurHash3_x64_128 of each key as uint64 (h1, h2); see embtab.murmur3_128.");
  m.def("hash_buckets", &hash_buckets, py::arg("keys"), py::arg("num_buckets"), py::arg("seed") = 0,
        "murmur3_32(keys, seed) % num_buckets as int64; see embtab.hash_buckets.");
  m.def("feature_hash", &feature_hash, py::arg("tokens"), py::arg("n_features"), py::arg("alternate_sign"),
        py::arg("documents"), "scikit-learn FeatureHasher columns and signs; see embtab.feature_hash.");
  m.def("fasttext_hash", &fasttext_hash, py::arg("strings"), "fastText's dictionary hash; see embtab.fasttext_hash.");
  m.def("subword_ngrams", &subword_ngrams, py::arg("words"), py::arg("minn"), py::arg("maxn"), py::arg("bucket"),
        py::arg("offset"), "fastText subword n-gram ids as CSR; see embtab.subword_ngrams.");
}

}  // namespace bind
}  // namespace embtab
