// murmur3_32 / murmur3_128 / hash_buckets / feature_hash / fasttext_hash / subword_ngrams: the
// arguments are checked and the keys gathered (keys.cpp) while holding the GIL, then the keys are
// hashed in parallel without it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "bindings/keys.hpp"
#include "bindings/gil.hpp"
#include "bindings/register.hpp"
#include "bindings/validate.hpp"
#include "kernels/hashing.hpp"

namespace embtab {
namespace bind {
namespace {

constexpr std::int64_t kUint32Limit = std::int64_t(1) << 32;

// An integer argument (anything with __index__, as operator.index takes) and its value saturated to
// the int64 range: larger values are only compared with limits that they exceed.
struct IntArg {
  py::object value;
  std::int64_t saturated;
  std::string str() const { return py::str(value).cast<std::string>(); }
};

IntArg int_arg(const py::handle& obj, const char* name) {
  PyObject* index = PyNumber_Index(obj.ptr());
  if (!index) {
    PyErr_Clear();
    throw py::type_error(std::string(name) + " must be an integer, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  }
  IntArg arg{py::reinterpret_steal<py::object>(index), 0};
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(index, &overflow);
  arg.saturated = overflow > 0 ? INT64_MAX : overflow < 0 ? INT64_MIN : static_cast<std::int64_t>(v);
  return arg;
}

std::uint32_t seed_arg(const py::handle& obj) {
  const IntArg seed = int_arg(obj, "seed");
  if (seed.saturated < 0 || seed.saturated >= kUint32Limit)
    throw py::value_error("seed must be in [0, 2**32), got " + seed.str());
  return static_cast<std::uint32_t>(seed.saturated);
}

// A count >= minimum; values above `cap` act like `cap` (e.g. 2**32 buckets for a 32-bit hash).
std::int64_t count_arg(const py::handle& obj, const char* name, std::int64_t minimum, std::int64_t cap) {
  const IntArg count = int_arg(obj, name);
  if (count.saturated < minimum)
    throw py::value_error(std::string(name) + " must be >= " + std::to_string(minimum) + ", got " + count.str());
  return std::min(count.saturated, cap);
}

// Runs `kernel(source)` without the GIL, then raises for a key that has no UTF-8 form.
template <class Kernel>
void run_kernel(const Keys& keys, const char* name, Kernel&& kernel) {
  std::int64_t bad;
  {
    GilRelease release;  // only raw pointers from here on
    bad = kernel(keys.source);
  }
  raise_if_unencodable(keys, bad, name);
}

std::vector<py::ssize_t> with_last(std::vector<py::ssize_t> shape, py::ssize_t last) {
  shape.push_back(last);
  return shape;
}

py::array murmur3_32(const py::handle& keys_obj, const py::handle& seed_obj) {
  const std::uint32_t seed = seed_arg(seed_obj);
  const Keys keys = collect_keys(keys_obj, "keys", true);
  py::array_t<std::uint32_t> out(keys.shape);
  std::uint32_t* out_ptr = out.mutable_data();
  run_kernel(keys, "keys", [&](const KeySource& src) { return hash_kernels().murmur3_32(src, seed, out_ptr); });
  return std::move(out);
}

py::array murmur3_128(const py::handle& keys_obj, const py::handle& seed_obj, bool x64arch) {
  const std::uint32_t seed = seed_arg(seed_obj);
  const Keys keys = collect_keys(keys_obj, "keys", true);
  py::array_t<std::uint64_t> out(with_last(keys.shape, 2));
  std::uint64_t* out_ptr = out.mutable_data();
  run_kernel(keys, "keys",
             [&](const KeySource& src) { return hash_kernels().murmur3_128(src, seed, x64arch, out_ptr); });
  return std::move(out);
}

py::array hash_buckets(const py::handle& keys_obj, const py::handle& num_buckets_obj, const py::handle& seed_obj) {
  const std::uint64_t num_buckets = static_cast<std::uint64_t>(count_arg(num_buckets_obj, "num_buckets", 1, kUint32Limit));
  const std::uint32_t seed = seed_arg(seed_obj);
  const Keys keys = collect_keys(keys_obj, "keys", true);
  py::array_t<std::int64_t> out(keys.shape);
  std::int64_t* out_ptr = out.mutable_data();
  run_kernel(keys, "keys",
             [&](const KeySource& src) { return hash_kernels().buckets(src, seed, num_buckets, out_ptr); });
  return std::move(out);
}

py::tuple feature_hash(const py::handle& tokens_obj, const py::handle& n_features_obj, bool alternate_sign,
                       const py::handle& seed_obj, bool documents) {
  const std::uint64_t n_features = static_cast<std::uint64_t>(count_arg(n_features_obj, "n_features", 1, kUint32Limit));
  const std::uint32_t seed = seed_arg(seed_obj);
  std::vector<std::int64_t> offsets;
  const Keys keys = documents ? collect_documents(tokens_obj, offsets) : collect_keys(tokens_obj, "tokens", false);
  require_string_keys(keys, "tokens");
  py::array_t<std::int64_t> indices(keys.shape);
  py::array_t<float> signs(keys.shape);
  std::int64_t* indices_ptr = indices.mutable_data();
  float* signs_ptr = signs.mutable_data();
  run_kernel(keys, "tokens", [&](const KeySource& src) {
    return hash_kernels().feature_hash(src, seed, n_features, alternate_sign, indices_ptr, signs_ptr);
  });
  if (!documents) return py::make_tuple(indices, signs);
  py::array_t<std::int64_t> offsets_array(static_cast<py::ssize_t>(offsets.size()));
  std::copy(offsets.begin(), offsets.end(), offsets_array.mutable_data());
  return py::make_tuple(indices, signs, offsets_array);
}

py::array fasttext_hash(const py::handle& keys_obj) {
  const Keys keys = collect_keys(keys_obj, "strings", false);
  require_string_keys(keys, "strings");
  py::array_t<std::uint32_t> out(keys.shape);
  std::uint32_t* out_ptr = out.mutable_data();
  run_kernel(keys, "strings", [&](const KeySource& src) { return hash_kernels().fasttext_hash(src, out_ptr); });
  return std::move(out);
}

py::tuple subword_ngrams(const py::handle& words_obj, const py::handle& minn_obj, const py::handle& maxn_obj,
                         const py::handle& bucket_obj, const py::handle& offset_obj) {
  // No word is longer than 2**30 characters: larger n-gram lengths act like it.
  constexpr std::int64_t kMaxLength = std::int64_t(1) << 30;
  std::int64_t minn = count_arg(minn_obj, "minn", 0, kMaxLength);
  std::int64_t maxn = count_arg(maxn_obj, "maxn", 0, kMaxLength);
  std::int64_t bucket = count_arg(bucket_obj, "bucket", 0, kUint32Limit);
  const std::int64_t offset = count_arg(offset_obj, "offset", 0, INT64_MAX);
  // fastText's settings without subwords: maxn = 0 (its supervised default) or bucket = 0. Otherwise
  // minn = 0 acts as 1, as in fastText (n-gram lengths start at 1).
  if (maxn == 0 || bucket == 0) {
    maxn = 0;
    bucket = 1;
  } else if (maxn < minn) {
    throw py::value_error("maxn must be >= minn (or 0 for no n-grams), got minn=" + std::to_string(minn) +
                          ", maxn=" + std::to_string(maxn));
  }
  minn = std::max<std::int64_t>(minn, 1);
  if (offset > INT64_MAX - bucket)
    throw py::value_error("offset + bucket must fit in int64, got offset=" + std::to_string(offset));
  const Keys keys = collect_keys(words_obj, "words", false);
  require_string_keys(keys, "words");
  const std::int64_t n = keys.source.n;
  const int min_len = static_cast<int>(minn), max_len = static_cast<int>(maxn);
  py::array_t<std::int64_t> offsets(static_cast<py::ssize_t>(n + 1));
  std::int64_t* offsets_ptr = offsets.mutable_data();
  offsets_ptr[0] = 0;
  run_kernel(keys, "words", [&](const KeySource& src) {
    const std::int64_t bad = hash_kernels().subword_counts(src, min_len, max_len, offsets_ptr + 1);
    if (bad < 0)
      for (std::int64_t i = 0; i < n; ++i) offsets_ptr[i + 1] += offsets_ptr[i];
    return bad;
  });
  py::array_t<std::int64_t> ids(static_cast<py::ssize_t>(offsets_ptr[n]));
  std::int64_t* ids_ptr = ids.mutable_data();
  const std::uint64_t buckets = static_cast<std::uint64_t>(bucket);
  run_kernel(keys, "words", [&](const KeySource& src) {
    return hash_kernels().subword_ids(src, min_len, max_len, buckets, offset, offsets_ptr, ids_ptr);
  });
  return py::make_tuple(ids, offsets);
}

}  // namespace

void register_hashing(py::module_& m) {
  m.def("murmur3_32", &murmur3_32, py::arg("keys"), py::arg("seed") = 0,
        "MurmurHash3_x86_32 of each key as uint32; see embtab.murmur3_32.");
  m.def("murmur3_128", &murmur3_128, py::arg("keys"), py::arg("seed") = 0, py::arg("x64arch") = true,
        "MurmurHash3_x64_128 (or x86_128) of each key as uint64 (h1, h2); see embtab.murmur3_128.");
  m.def("hash_buckets", &hash_buckets, py::arg("keys"), py::arg("num_buckets"), py::arg("seed") = 0,
        "murmur3_32(keys, seed) % num_buckets as int64; see embtab.hash_buckets.");
  m.def("feature_hash", &feature_hash, py::arg("tokens"), py::arg("n_features"), py::arg("alternate_sign"),
        py::arg("seed"), py::arg("documents"), "scikit-learn FeatureHasher columns and signs; see embtab.feature_hash.");
  m.def("fasttext_hash", &fasttext_hash, py::arg("strings"), "fastText's dictionary hash; see embtab.fasttext_hash.");
  m.def("subword_ngrams", &subword_ngrams, py::arg("words"), py::arg("minn"), py::arg("maxn"), py::arg("bucket"),
        py::arg("offset"), "fastText subword n-gram ids as CSR; see embtab.subword_ngrams.");
}

}  // namespace bind
}  // namespace embtab
