// The hashing trick: MurmurHash3 (x86_32, x86_128, x64_128), scikit-learn's FeatureHasher mapping and
// fastText's dictionary hash and subword n-grams, over whole arrays of keys. Pure C++; no Python.
//
// Contract shared by every kernel here:
// - Keys come from a KeySource (integers, (pointer, length) spans, or fixed-width numpy 'S' / 'U'
//   elements). Strings are hashed as their bytes; 'U' elements are encoded to UTF-8 on the fly.
// - A kernel returns -1 on success, else the smallest position whose key cannot be encoded as
//   UTF-8 (a 'U' element holding a surrogate or a value above U+10FFFF); the output is then
//   unspecified.
// - Each output element is written by one thread from one key, so results do not depend on the
//   thread count or on the SIMD path.
#pragma once

#include <cstdint>

#include "kernels/dispatch.hpp"

namespace embtab {

struct StrSpan {
  const char* ptr;
  std::int64_t len;
};

enum class KeyKind : int {
  ints = 0,         // `data` holds n integers of `width` bytes (1, 2, 4 or 8), native byte order
  spans = 1,        // `spans` holds n (pointer, length) byte strings
  fixed_bytes = 2,  // numpy 'S': n elements of `width` bytes; trailing NUL bytes are not part of the value
  fixed_ucs4 = 3,   // numpy 'U': n elements of `width` UCS-4 code points; trailing NULs are dropped
};

// Spans of at most kPaddedSpanMax bytes may promise kSpanPadding readable bytes after their end
// (see KeySource).
constexpr std::int64_t kPaddedSpanMax = 64;
constexpr std::int64_t kSpanPadding = 16;

struct KeySource {
  KeyKind kind;
  std::int64_t n;
  std::int64_t width;
  const void* data;
  const StrSpan* spans;
  // spans only: every span of at most kPaddedSpanMax bytes is followed by at least kSpanPadding
  // readable bytes (which lets a hash of a short key load whole blocks instead of branching).
  bool short_spans_padded;
};

struct HashKernels {
  // MurmurHash3_x86_32 of each key (integers as their little-endian bytes).
  std::int64_t (*murmur3_32)(const KeySource& keys, std::uint32_t seed, std::uint32_t* out);
  // MurmurHash3_x64_128 (x64arch) or MurmurHash3_x86_128: the 16-byte digest of key i as two
  // little-endian 64-bit words, out[2 i] (bytes 0-7) and out[2 i + 1] (bytes 8-15).
  std::int64_t (*murmur3_128)(const KeySource& keys, std::uint32_t seed, bool x64arch, std::uint64_t* out);
  // murmur3_32(key, seed) % num_buckets (unsigned), num_buckets >= 1.
  std::int64_t (*buckets)(const KeySource& keys, std::uint32_t seed, std::uint64_t num_buckets, std::int64_t* out);
  // scikit-learn's FeatureHasher: h = signed murmur3_32(key, seed) (seed 0 in scikit-learn);
  // index = |h| % n_features (|-2^31| = 2^31); sign = -1 where h < 0 if alternate_sign, else +1.
  std::int64_t (*feature_hash)(const KeySource& keys, std::uint32_t seed, std::uint64_t n_features,
                               bool alternate_sign, std::int64_t* indices, float* signs);
  // fastText's dictionary hash (FNV-1a 32 over bytes sign-extended as int8). String keys only.
  std::int64_t (*fasttext_hash)(const KeySource& keys, std::uint32_t* out);
  // counts[i] = number of subword n-grams of word i (fastText's computeSubwords), 1 <= minn <= maxn,
  // or maxn = 0 for none. fastText's end-of-sentence word "</s>" has none (as in its Dictionary).
  std::int64_t (*subword_counts)(const KeySource& words, int minn, int maxn, std::int64_t* counts);
  // Writes the n-gram ids of word i, offset + fasttext_hash(ngram) % bucket, to
  // ids[offsets[i] : offsets[i + 1]] (offsets from the prefix sum of subword_counts).
  std::int64_t (*subword_ids)(const KeySource& words, int minn, int maxn, std::uint64_t bucket, std::int64_t offset,
                              const std::int64_t* offsets, std::int64_t* ids);
};

}  // namespace embtab

EMBTAB_ISA_TABLE(HashKernels, hash_kernels)
