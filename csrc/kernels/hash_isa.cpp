// MurmurHash3, FeatureHasher and fastText hashing kernels, compiled once per instruction set (see
// CMakeLists.txt). The algorithms follow the published references (aappleby/smhasher MurmurHash3.cpp,
// scikit-learn's _hashing_fast, fastText's Dictionary::hash and computeSubwords); the code is our own.
#include <cstddef>
#include <cstdint>

#include "kernels/hashing.hpp"
#include "kernels/parallel.hpp"

namespace embtab {
namespace EMBTAB_ISA_NS {

#include "kernels/isa_common.hpp"

namespace {

using std::int64_t;
using std::uint32_t;
using std::uint64_t;
using std::uint8_t;

// Integer keys: whole-array loops the compiler vectorises (8 / 16 lanes with AVX2 / AVX-512).
constexpr std::size_t kIntGrain = 1 << 16;
// String keys: a few microseconds of work per chunk at least.
constexpr std::size_t kStrGrain = 1 << 12;

// ---------------------------------------------------------------------------------------------
// MurmurHash3 building blocks.

EMBTAB_INLINE uint32_t rotl32(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }
EMBTAB_INLINE uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

constexpr uint32_t kC1 = 0xcc9e2d51u, kC2 = 0x1b873593u;

EMBTAB_INLINE uint32_t mm32_k(uint32_t k) {
  k *= kC1;
  k = rotl32(k, 15);
  return k * kC2;
}
EMBTAB_INLINE uint32_t mm32_block(uint32_t h, uint32_t k) {
  h ^= mm32_k(k);
  h = rotl32(h, 13);
  return h * 5u + 0xe6546b64u;
}
EMBTAB_INLINE uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  return h ^ (h >> 16);
}
EMBTAB_INLINE uint64_t fmix64(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdull;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ull;
  return k ^ (k >> 33);
}

// Little-endian loads: the reference reads blocks in native order on little-endian machines.
EMBTAB_INLINE uint32_t load_le32(const unsigned char* p) {
  uint32_t v;
  __builtin_memcpy(&v, p, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap32(v);
#endif
  return v;
}
EMBTAB_INLINE uint64_t load_le64(const unsigned char* p) {
  uint64_t v;
  __builtin_memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap64(v);
#endif
  return v;
}

EMBTAB_INLINE uint32_t murmur3_x86_32(const char* key, int64_t len, uint32_t seed) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(key);
  const int64_t nblocks = len / 4;
  uint32_t h = seed;
  for (int64_t b = 0; b < nblocks; ++b) h = mm32_block(h, load_le32(p + 4 * b));
  const unsigned char* tail = p + 4 * nblocks;
  uint32_t k = 0;
  switch (len & 3) {
    case 3: k ^= uint32_t(tail[2]) << 16; [[fallthrough]];
    case 2: k ^= uint32_t(tail[1]) << 8; [[fallthrough]];
    case 1: k ^= uint32_t(tail[0]); h ^= mm32_k(k);
  }
  return fmix32(h ^ static_cast<uint32_t>(len));
}

// The same hash when kSpanPadding (16) bytes past the end may be read. Keys of up to 12 bytes (most
// words) take no branch on their length, which mispredicts on keys of mixed lengths: all four
// blocks are loaded and mixed and the state after len / 4 of them is selected; the tail is one
// masked load (mm32_k(0) == 0, so an empty tail changes nothing).
EMBTAB_INLINE uint32_t murmur3_x86_32_padded(const char* key, int64_t len, uint32_t seed) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(key);
  const int64_t nblocks = len / 4;
  const uint32_t mask = static_cast<uint32_t>((uint64_t(1) << (8 * (len & 3))) - 1);
  uint32_t h = seed, tail;
  if (len <= 12) {
    const uint32_t b0 = load_le32(p), b1 = load_le32(p + 4), b2 = load_le32(p + 8), b3 = load_le32(p + 12);
    const uint32_t h1 = mm32_block(seed, b0), h2 = mm32_block(h1, b1), h3 = mm32_block(h2, b2);
    h = nblocks == 0 ? seed : nblocks == 1 ? h1 : nblocks == 2 ? h2 : h3;
    tail = nblocks == 0 ? b0 : nblocks == 1 ? b1 : nblocks == 2 ? b2 : b3;
  } else {
    for (int64_t b = 0; b < nblocks; ++b) h = mm32_block(h, load_le32(p + 4 * b));
    tail = load_le32(p + 4 * nblocks);
  }
  h ^= mm32_k(tail & mask);
  return fmix32(h ^ static_cast<uint32_t>(len));
}

EMBTAB_INLINE uint32_t murmur3_x86_32_key(const char* key, int64_t len, uint32_t seed, bool padded) {
  return padded ? murmur3_x86_32_padded(key, len, seed) : murmur3_x86_32(key, len, seed);
}

constexpr uint64_t kC1_64 = 0x87c37b91114253d5ull, kC2_64 = 0x4cf5ad432745937full;

EMBTAB_INLINE void murmur3_x64_128(const unsigned char* p, int64_t len, uint32_t seed, uint64_t* out) {
  const int64_t nblocks = len / 16;
  uint64_t h1 = seed, h2 = seed;
  for (int64_t b = 0; b < nblocks; ++b) {
    uint64_t k1 = load_le64(p + 16 * b), k2 = load_le64(p + 16 * b + 8);
    k1 *= kC1_64; k1 = rotl64(k1, 31); k1 *= kC2_64; h1 ^= k1;
    h1 = rotl64(h1, 27); h1 += h2; h1 = h1 * 5 + 0x52dce729;
    k2 *= kC2_64; k2 = rotl64(k2, 33); k2 *= kC1_64; h2 ^= k2;
    h2 = rotl64(h2, 31); h2 += h1; h2 = h2 * 5 + 0x38495ab5;
  }
  const unsigned char* tail = p + 16 * nblocks;
  const int64_t rest = len & 15;
  uint64_t k1 = 0, k2 = 0;
  for (int64_t i = 0; i < rest; ++i) {
    if (i < 8)
      k1 ^= uint64_t(tail[i]) << (8 * i);
    else
      k2 ^= uint64_t(tail[i]) << (8 * (i - 8));
  }
  if (rest > 8) { k2 *= kC2_64; k2 = rotl64(k2, 33); k2 *= kC1_64; h2 ^= k2; }
  if (rest > 0) { k1 *= kC1_64; k1 = rotl64(k1, 31); k1 *= kC2_64; h1 ^= k1; }
  h1 ^= static_cast<uint64_t>(len);
  h2 ^= static_cast<uint64_t>(len);
  h1 += h2;
  h2 += h1;
  h1 = fmix64(h1);
  h2 = fmix64(h2);
  h1 += h2;
  h2 += h1;
  out[0] = h1;
  out[1] = h2;
}

// MurmurHash3_x86_128: four 32-bit lanes, each mixing its own 4-byte word of every 16-byte block.
constexpr uint32_t kC128[4] = {0x239b961bu, 0xab0e9789u, 0x38b34ae5u, 0xa1e38b93u};
constexpr int kRotK[4] = {15, 16, 17, 18};   // rotation of lane i's key word
constexpr int kRotH[4] = {19, 17, 15, 13};   // rotation of lane i's state
constexpr uint32_t kAdd128[4] = {0x561ccd1bu, 0x0bcaa747u, 0x96cd1c35u, 0x32ac3b17u};

// Lane i's key word k, mixed: multiplied by its constant, rotated, multiplied by the next lane's.
EMBTAB_INLINE uint32_t mix_x86_128_k(uint32_t k, int i) {
  k *= kC128[i];
  k = rotl32(k, kRotK[i]);
  return k * kC128[(i + 1) & 3];
}

EMBTAB_INLINE void murmur3_x86_128(const unsigned char* p, int64_t len, uint32_t seed, uint64_t* out) {
  const int64_t nblocks = len / 16;
  uint32_t h[4] = {seed, seed, seed, seed};
  for (int64_t b = 0; b < nblocks; ++b) {
    for (int i = 0; i < 4; ++i) {
      h[i] ^= mix_x86_128_k(load_le32(p + 16 * b + 4 * i), i);
      h[i] = rotl32(h[i], kRotH[i]);
      h[i] += h[(i + 1) & 3];
      h[i] = h[i] * 5 + kAdd128[i];
    }
  }
  const unsigned char* tail = p + 16 * nblocks;
  const int64_t rest = len & 15;
  uint32_t k[4] = {0, 0, 0, 0};
  for (int64_t j = 0; j < rest; ++j) k[j / 4] ^= uint32_t(tail[j]) << (8 * (j % 4));
  for (int i = 3; i >= 0; --i)
    if (rest > 4 * i) h[i] ^= mix_x86_128_k(k[i], i);
  for (int i = 0; i < 4; ++i) h[i] ^= static_cast<uint32_t>(len);
  h[0] += h[1] + h[2] + h[3];
  for (int i = 1; i < 4; ++i) h[i] += h[0];
  for (int i = 0; i < 4; ++i) h[i] = fmix32(h[i]);
  h[0] += h[1] + h[2] + h[3];
  for (int i = 1; i < 4; ++i) h[i] += h[0];
  out[0] = uint64_t(h[0]) | (uint64_t(h[1]) << 32);
  out[1] = uint64_t(h[2]) | (uint64_t(h[3]) << 32);
}

EMBTAB_INLINE void murmur3_128_key(const unsigned char* p, int64_t len, uint32_t seed, bool x64arch, uint64_t* out) {
  if (x64arch)
    murmur3_x64_128(p, len, seed, out);
  else
    murmur3_x86_128(p, len, seed, out);
}

// fastText's Dictionary::hash: FNV-1a 32 where each byte is first sign-extended (uint32_t(int8_t(c))).
constexpr uint32_t kFnvOffset = 2166136261u, kFnvPrime = 16777619u;
EMBTAB_INLINE uint32_t fnv_step(uint32_t h, char c) {
  return (h ^ static_cast<uint32_t>(static_cast<int32_t>(static_cast<signed char>(c)))) * kFnvPrime;
}
EMBTAB_INLINE uint32_t fasttext_fnv(const char* s, int64_t len) {
  uint32_t h = kFnvOffset;
  for (int64_t i = 0; i < len; ++i) h = fnv_step(h, s[i]);
  return h;
}

// a % d for 32-bit a without a division (Lemire, Kaser & Kurz, "Faster remainder by direct
// computation", 2019: exact for every 32-bit a and 1 <= d < 2^32). Divisors >= 2^32 leave a as is.
struct FastMod {
  uint64_t m, d;
  bool identity;
};
EMBTAB_INLINE FastMod make_fastmod(uint64_t d) {
  FastMod f{0, d, d > 0xFFFFFFFFull};
  if (!f.identity) f.m = ~uint64_t(0) / d + 1;
  return f;
}
EMBTAB_INLINE uint64_t apply_fastmod(const FastMod& f, uint32_t a) {
  if (f.identity) return a;
  const uint64_t low = f.m * a;
  return static_cast<uint64_t>((static_cast<unsigned __int128>(low) * f.d) >> 64);
}

// ---------------------------------------------------------------------------------------------
// Key access.

// Bytes that may be read past the end of a string held in a Scratch buffer.
constexpr int64_t kScratchSlack = kSpanPadding;

// A growable byte buffer owned by one chunk (operator new[], not a standard container: see
// isa_common.hpp). kScratchSlack readable bytes follow the n requested.
struct Scratch {
  char* p = nullptr;
  int64_t cap = 0;
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { delete[] p; }
  char* get(int64_t n) {
    if (n > cap) {
      delete[] p;
      cap = max_of<int64_t>(n, 2 * cap);
      p = new char[static_cast<std::size_t>(cap + kScratchSlack)]();
    }
    return p;
  }
};

// UTF-8 of `count` UCS-4 code points into out (room for 4 * count bytes); -1 when one of them is a
// surrogate or above U+10FFFF (Python's UTF-8 codec refuses both).
EMBTAB_INLINE int64_t ucs4_to_utf8(const unsigned char* src, int64_t count, char* out) {
  unsigned char* o = reinterpret_cast<unsigned char*>(out);
  for (int64_t i = 0; i < count; ++i) {
    uint32_t c;
    __builtin_memcpy(&c, src + 4 * i, 4);
    if (c < 0x80) {
      *o++ = static_cast<unsigned char>(c);
    } else if (c < 0x800) {
      *o++ = static_cast<unsigned char>(0xC0 | (c >> 6));
      *o++ = static_cast<unsigned char>(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
      if (c >= 0xD800 && c <= 0xDFFF) return -1;
      *o++ = static_cast<unsigned char>(0xE0 | (c >> 12));
      *o++ = static_cast<unsigned char>(0x80 | ((c >> 6) & 0x3F));
      *o++ = static_cast<unsigned char>(0x80 | (c & 0x3F));
    } else if (c <= 0x10FFFF) {
      *o++ = static_cast<unsigned char>(0xF0 | (c >> 18));
      *o++ = static_cast<unsigned char>(0x80 | ((c >> 12) & 0x3F));
      *o++ = static_cast<unsigned char>(0x80 | ((c >> 6) & 0x3F));
      *o++ = static_cast<unsigned char>(0x80 | (c & 0x3F));
    } else {
      return -1;
    }
  }
  return reinterpret_cast<char*>(o) - out;
}

// Bytes of a numpy 'S' element (or 'U' element's UCS-4 data) without its trailing NULs, skipping
// them 8 at a time (fixed-width elements are often mostly padding).
EMBTAB_INLINE int64_t value_bytes(const char* p, int64_t width) {
  int64_t len = width;
  for (;;) {
    if (len < 8) break;
    uint64_t last;
    __builtin_memcpy(&last, p + len - 8, 8);
    if (last != 0) break;
    len -= 8;
  }
  while (len > 0 && p[len - 1] == 0) --len;
  return len;
}

// dst[0:len] = src[0:len] for short strings, without a call to memcpy (constant-size copies are
// single moves).
EMBTAB_INLINE void copy_bytes(char* EMBTAB_RESTRICT dst, const char* EMBTAB_RESTRICT src, int64_t len) {
  for (; len >= 8; len -= 8, dst += 8, src += 8) __builtin_memcpy(dst, src, 8);
  if (len & 4) { __builtin_memcpy(dst, src, 4); dst += 4; src += 4; }
  if (len & 2) { __builtin_memcpy(dst, src, 2); dst += 2; src += 2; }
  if (len & 1) *dst = *src;
}

// Calls op(i, bytes, len, padded) for each string key i in [begin, end); `padded` says that
// kSpanPadding bytes past the end may be read. With Wrap, the bytes are the key between fastText's word
// delimiters, "<" + key + ">". A 'U' key that cannot be encoded is recorded in first_bad and skipped.
template <bool Wrap, class Op>
void for_each_string(const KeySource& keys, int64_t begin, int64_t end, Scratch& scratch, int64_t* first_bad,
                     Op& op) {
  const int64_t pad = Wrap ? 2 : 0;
  switch (keys.kind) {
    case KeyKind::spans:
      for (int64_t i = begin; i < end; ++i) {
        const StrSpan s = keys.spans[i];
        if (Wrap) {
          char* buf = scratch.get(s.len + 2);
          buf[0] = '<';
          copy_bytes(buf + 1, s.ptr, s.len);
          buf[s.len + 1] = '>';
          op(i, static_cast<const char*>(buf), s.len + 2, true);
        } else {
          op(i, s.ptr, s.len, keys.short_spans_padded && s.len <= kPaddedSpanMax);
        }
      }
      break;
    case KeyKind::fixed_bytes: {
      const char* base = static_cast<const char*>(keys.data);
      const char* array_end = base + keys.n * keys.width;
      char* buf = Wrap ? scratch.get(keys.width + 2) : nullptr;
      for (int64_t i = begin; i < end; ++i) {
        const char* p = base + i * keys.width;
        const int64_t len = value_bytes(p, keys.width);
        if (Wrap) {
          buf[0] = '<';
          copy_bytes(buf + 1, p, len);
          buf[len + 1] = '>';
          op(i, static_cast<const char*>(buf), len + 2, true);
        } else {
          op(i, p, len, array_end - (p + len) >= kSpanPadding);
        }
      }
      break;
    }
    case KeyKind::fixed_ucs4: {
      const unsigned char* base = static_cast<const unsigned char*>(keys.data);
      char* buf = scratch.get(4 * keys.width + pad);
      for (int64_t i = begin; i < end; ++i) {
        const unsigned char* p = base + 4 * i * keys.width;
        // Code points up to the last one that is not NUL (its other bytes may be 0).
        const int64_t count = (value_bytes(reinterpret_cast<const char*>(p), 4 * keys.width) + 3) / 4;
        const int64_t len = ucs4_to_utf8(p, count, buf + (Wrap ? 1 : 0));
        if (len < 0) {
          atomic_min(first_bad, i);
          continue;
        }
        if (Wrap) {
          buf[0] = '<';
          buf[len + 1] = '>';
        }
        op(i, static_cast<const char*>(buf), len + pad, true);
      }
      break;
    }
    default:
      break;
  }
}

// Runs op over all string keys in parallel; returns the first key that could not be encoded, or -1.
template <bool Wrap, class Op>
int64_t parallel_strings(const KeySource& keys, Op& op) {
  int64_t first_bad = -1;
  parallel_for(static_cast<std::size_t>(keys.n), kStrGrain, [&](std::size_t b, std::size_t e) {
    Scratch scratch;
    for_each_string<Wrap>(keys, int64_t(b), int64_t(e), scratch, &first_bad, op);
  });
  return first_bad;
}

// Native-order integer of `Width` bytes, zero-extended (its little-endian bytes are the key).
template <int Width>
EMBTAB_INLINE uint64_t int_key(const void* data, int64_t i) {
  if (Width == 1) return static_cast<const uint8_t*>(data)[i];
  if (Width == 2) return static_cast<const std::uint16_t*>(data)[i];
  if (Width == 4) return static_cast<const uint32_t*>(data)[i];
  return static_cast<const uint64_t*>(data)[i];
}

// murmur3_x86_32 of an integer's little-endian bytes, as straight-line code (no loads of bytes).
template <int Width>
EMBTAB_INLINE uint32_t murmur3_int(uint64_t v, uint32_t seed) {
  uint32_t h = seed;
  if (Width == 8) {
    h = mm32_block(h, static_cast<uint32_t>(v));
    h = mm32_block(h, static_cast<uint32_t>(v >> 32));
  } else if (Width == 4) {
    h = mm32_block(h, static_cast<uint32_t>(v));
  } else {
    h ^= mm32_k(static_cast<uint32_t>(v));  // 1 or 2 bytes: the tail block only
  }
  return fmix32(h ^ static_cast<uint32_t>(Width));
}

template <int Width>
void murmur3_32_ints_range(const void* EMBTAB_RESTRICT data, int64_t begin, int64_t end, uint32_t seed,
                           uint32_t* EMBTAB_RESTRICT out) {
  for (int64_t i = begin; i < end; ++i) out[i] = murmur3_int<Width>(int_key<Width>(data, i), seed);
}

#define EMBTAB_VISIT_WIDTH(width, ...)                          \
  do {                                                          \
    switch (width) {                                            \
      case 1: { constexpr int W = 1; __VA_ARGS__; } break;      \
      case 2: { constexpr int W = 2; __VA_ARGS__; } break;      \
      case 4: { constexpr int W = 4; __VA_ARGS__; } break;      \
      default: { constexpr int W = 8; __VA_ARGS__; } break;     \
    }                                                           \
  } while (0)

// ---------------------------------------------------------------------------------------------
// Kernels.

int64_t murmur3_32(const KeySource& keys, uint32_t seed, uint32_t* out) {
  if (keys.n <= 0) return -1;
  if (keys.kind == KeyKind::ints) {
    parallel_for(static_cast<std::size_t>(keys.n), kIntGrain, [&](std::size_t b, std::size_t e) {
      EMBTAB_VISIT_WIDTH(keys.width, murmur3_32_ints_range<W>(keys.data, int64_t(b), int64_t(e), seed, out));
    });
    return -1;
  }
  auto op = [=](int64_t i, const char* s, int64_t len, bool padded) {
    out[i] = murmur3_x86_32_key(s, len, seed, padded);
  };
  return parallel_strings<false>(keys, op);
}

int64_t murmur3_128(const KeySource& keys, uint32_t seed, bool x64arch, uint64_t* out) {
  if (keys.n <= 0) return -1;
  if (keys.kind == KeyKind::ints) {
    parallel_for(static_cast<std::size_t>(keys.n), kIntGrain, [&](std::size_t b, std::size_t e) {
      EMBTAB_VISIT_WIDTH(keys.width, {
        for (int64_t i = int64_t(b); i < int64_t(e); ++i) {
          const uint64_t v = int_key<W>(keys.data, i);
          unsigned char bytes[8];
          for (int k = 0; k < 8; ++k) bytes[k] = static_cast<unsigned char>(v >> (8 * k));
          murmur3_128_key(bytes, W, seed, x64arch, out + 2 * i);
        }
      });
    });
    return -1;
  }
  auto op = [=](int64_t i, const char* s, int64_t len, bool) {
    murmur3_128_key(reinterpret_cast<const unsigned char*>(s), len, seed, x64arch, out + 2 * i);
  };
  return parallel_strings<false>(keys, op);
}

int64_t buckets(const KeySource& keys, uint32_t seed, uint64_t num_buckets, int64_t* out) {
  if (keys.n <= 0) return -1;
  const FastMod mod = make_fastmod(num_buckets);
  if (keys.kind == KeyKind::ints) {
    parallel_for(static_cast<std::size_t>(keys.n), kIntGrain, [&](std::size_t b, std::size_t e) {
      // Hash a block with the vectorised loop, then reduce it (the 128-bit product is scalar).
      constexpr int64_t kBlock = 1024;
      uint32_t hashes[kBlock];
      for (int64_t s = int64_t(b); s < int64_t(e); s += kBlock) {
        const int64_t m = min_of<int64_t>(kBlock, int64_t(e) - s);
        EMBTAB_VISIT_WIDTH(keys.width, {
          const void* data = static_cast<const char*>(keys.data) + s * W;
          murmur3_32_ints_range<W>(data, 0, m, seed, hashes);
        });
        for (int64_t j = 0; j < m; ++j) out[s + j] = static_cast<int64_t>(apply_fastmod(mod, hashes[j]));
      }
    });
    return -1;
  }
  auto op = [=](int64_t i, const char* s, int64_t len, bool padded) {
    out[i] = static_cast<int64_t>(apply_fastmod(mod, murmur3_x86_32_key(s, len, seed, padded)));
  };
  return parallel_strings<false>(keys, op);
}

int64_t feature_hash(const KeySource& keys, uint32_t seed, uint64_t n_features, bool alternate_sign,
                     int64_t* indices, float* signs) {
  if (keys.n <= 0) return -1;
  const FastMod mod = make_fastmod(n_features);
  const uint32_t sign_mask = alternate_sign ? 0x80000000u : 0u;
  auto op = [=](int64_t i, const char* s, int64_t len, bool padded) {
    const uint32_t h = murmur3_x86_32_key(s, len, seed, padded);
    // |h| of the signed value, computed unsigned so that |-2^31| = 2^31 (scikit-learn's result);
    // branch-free, as the sign of a hash is a coin flip.
    const uint32_t negative = h >> 31;
    const uint32_t magnitude = (h ^ (0u - negative)) + negative;
    indices[i] = static_cast<int64_t>(apply_fastmod(mod, magnitude));
    const uint32_t sign_bits = 0x3f800000u | (h & sign_mask);  // +1.0f or -1.0f
    __builtin_memcpy(signs + i, &sign_bits, 4);
  };
  return parallel_strings<false>(keys, op);
}

int64_t fasttext_hash(const KeySource& keys, uint32_t* out) {
  if (keys.n <= 0) return -1;
  auto op = [=](int64_t i, const char* s, int64_t len, bool) { out[i] = fasttext_fnv(s, len); };
  return parallel_strings<false>(keys, op);
}

EMBTAB_INLINE bool utf8_continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// Number of n-grams computeSubwords emits for a wrapped word of `chars` characters (a character is
// a byte that is not a UTF-8 continuation byte, with the continuation bytes after it): for each
// start, lengths minn..min(maxn, chars left), less the lone "<" and ">" when minn == 1.
EMBTAB_INLINE int64_t subword_count(int64_t chars, int64_t minn, int64_t maxn) {
  int64_t count = 0;
  const int64_t top = min_of<int64_t>(chars, maxn);
  if (top >= minn) {
    const int64_t t = top - minn + 1;
    count += t * (t + 1) / 2;
  }
  if (chars > maxn) count += (chars - maxn) * (maxn - minn + 1);
  if (minn <= 1) count -= 2;
  return count;
}

// fastText's end-of-sentence token, which gets no n-grams.
EMBTAB_INLINE bool is_eos(const char* s, int64_t len) { return len == 4 && __builtin_memcmp(s, "</s>", 4) == 0; }

int64_t subword_counts(const KeySource& words, int minn, int maxn, int64_t* counts) {
  if (words.n <= 0) return -1;
  auto op = [=](int64_t i, const char* s, int64_t len, bool) {
    if (maxn <= 0 || is_eos(s, len)) {
      counts[i] = 0;
      return;
    }
    int64_t chars = 2;  // "<" and ">"
    for (int64_t k = 0; k < len; ++k) chars += utf8_continuation(s[k]) ? 0 : 1;
    counts[i] = subword_count(chars, minn, maxn);
  };
  return parallel_strings<false>(words, op);
}

// The ids of one wrapped word `s` (len bytes) into o, in fastText's order: by start character,
// then by length. Scalars are passed by value so that they stay in registers across the stores.
EMBTAB_INLINE void word_subword_ids(const char* EMBTAB_RESTRICT s, int64_t len, int64_t minn, int64_t maxn,
                                    FastMod mod, int64_t offset, int64_t* EMBTAB_RESTRICT o) {
  bool any_continuation = false;
  for (int64_t k = 0; k < len; ++k) any_continuation |= utf8_continuation(s[k]);
  if (!any_continuation) {
    // Every byte is a character (ASCII, the common case): fixed trip counts, few branches.
    for (int64_t i = 0; i < len; ++i) {
      const int64_t top = min_of<int64_t>(maxn, len - i);
      uint32_t h = kFnvOffset;
      int64_t n = 1;
      for (; n < minn && n <= top; ++n) h = fnv_step(h, s[i + n - 1]);
      if (n == 1 && n <= top) {  // minn == 1: a lone "<" or ">" is skipped
        h = fnv_step(h, s[i]);
        if (i != 0 && i != len - 1) *o++ = offset + static_cast<int64_t>(apply_fastmod(mod, h));
        ++n;
      }
      for (; n <= top; ++n) {
        h = fnv_step(h, s[i + n - 1]);
        *o++ = offset + static_cast<int64_t>(apply_fastmod(mod, h));
      }
    }
    return;
  }
  // Same walk as fastText's computeSubwords, with the hash extended one character at a time.
  for (int64_t i = 0; i < len; ++i) {
    if (utf8_continuation(s[i])) continue;
    uint32_t h = kFnvOffset;
    int64_t j = i;
    for (int64_t n = 1; j < len && n <= maxn; ++n) {
      h = fnv_step(h, s[j++]);
      while (j < len && utf8_continuation(s[j])) h = fnv_step(h, s[j++]);
      if (n >= minn && !(n == 1 && (i == 0 || j == len))) *o++ = offset + static_cast<int64_t>(apply_fastmod(mod, h));
    }
  }
}

int64_t subword_ids(const KeySource& words, int minn, int maxn, uint64_t bucket, int64_t offset,
                    const int64_t* offsets, int64_t* ids) {
  if (words.n <= 0) return -1;
  const FastMod mod = make_fastmod(bucket);
  auto op = [=](int64_t w, const char* s, int64_t len, bool) {
    // Words without n-grams (maxn = 0, "</s>") were counted as 0: nothing to write.
    if (offsets[w + 1] > offsets[w]) word_subword_ids(s, len, minn, maxn, mod, offset, ids + offsets[w]);
  };
  return parallel_strings<true>(words, op);
}

const HashKernels kTable{&murmur3_32, &murmur3_128, &buckets, &feature_hash, &fasttext_hash, &subword_counts,
                         &subword_ids};

}  // namespace

const HashKernels& hash_kernels() { return kTable; }

}  // namespace EMBTAB_ISA_NS
}  // namespace embtab
