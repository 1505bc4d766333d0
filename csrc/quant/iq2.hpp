// IQ2_XXS, IQ2_XS, IQ2_S: super-blocks of 256 values in 32 groups of 8. A group is one row
// of a lattice grid (8 unsigned values from {8, 25, 43}, iq2_tables.hpp), a sign byte (bit j:
// value j negative) and a 4-bit scale s shared by 16 or 32 values:
//   x = d * (0.5 + s) / 4 * grid[j] * sign[j] = d/8 * (2s + 1) * grid[j] * sign[j].
// Dot against Q8_K (ggml's pairing): each super-block's sum of (2s + 1) * grid * sign * q8 is
// exact in int32, combined as s += (d * dy) * isum in the scalar order on every ISA, and the
// row's sum times 1/8 at the end (as ggml), so every ISA gives the scalar result bit for bit.
//
// Grid and sign indices come from the file: each is a bit field as wide as its table (8, 9
// or 10 bits for the grids, 7 for the signs), so no value can index outside a table.
//
// This header: the block layouts, the per-group decoding the scalar bodies share, and the
// SIMD drivers the three formats' unpackers plug into (one per ISA level; see each .cpp).
#pragma once

#include "iq2_tables.hpp"
#include "iq_signs.hpp"
#include "quant.hpp"
#include "simd.hpp"

namespace numoe::quant {

// GGML type ids.
enum IQ2Type : int { IQ2_XXS = 16, IQ2_XS = 17, IQ2_S = 22 };

struct block_iq2_xxs {
  half d;
  // per 32 values (8 bytes): 4 grid index bytes, then a uint32 holding 4 7-bit sign fields
  // (bits 0-27) and the 4-bit scale (bits 28-31)
  uint16_t qs[QK_K / 8];
};
struct block_iq2_xs {
  half d;
  uint16_t qs[QK_K / 8];      // per group: grid index (bits 0-8) | sign field << 9
  uint8_t scales[QK_K / 32];  // per 32 values: first 16's scale (low nibble), last 16's (high)
};
struct block_iq2_s {
  half d;
  uint8_t qs[QK_K / 4];       // [0, 32): grid index bits 0-7 per group; [32, 64): sign bytes
  uint8_t qh[QK_K / 32];      // per 32 values: index bits 8-9 of its 4 groups, 2 bits each
  uint8_t scales[QK_K / 32];  // as IQ2_XS
};
static_assert(sizeof(block_iq2_xxs) == 66, "block_iq2_xxs size");
static_assert(sizeof(block_iq2_xs) == 74, "block_iq2_xs size");
static_assert(sizeof(block_iq2_s) == 82, "block_iq2_s size");

// One group of 8 values as the scalar bodies read it.
struct iq2_group {
  uint64_t grid;  // value j in byte j (unsigned)
  uint8_t signs;  // bit j set: value j negative
  uint8_t s;      // the 4-bit scale
};

// Group g (values 8g .. 8g + 7) of each format.
inline iq2_group iq2_xxs_group(const block_iq2_xxs &b, int g) {
  uint32_t a[2];
  std::memcpy(a, b.qs + 4 * (g / 4), 8);
  const int l = g % 4;
  return {iq2xxs_grid[(a[0] >> 8 * l) & 0xFF], ksigns_iq2xs[(a[1] >> 7 * l) & 127],
          static_cast<uint8_t>(a[1] >> 28)};
}
inline iq2_group iq2_xs_group(const block_iq2_xs &b, int g) {
  const uint16_t q = b.qs[g];
  return {iq2xs_grid[q & 511], ksigns_iq2xs[q >> 9],
          static_cast<uint8_t>((b.scales[g / 4] >> 4 * ((g / 2) % 2)) & 15)};
}
inline iq2_group iq2_s_group(const block_iq2_s &b, int g) {
  const int c = g / 4, l = g % 4;
  return {iq2s_grid[b.qs[g] | ((b.qh[c] >> 2 * l) & 3) << 8], b.qs[QK_K / 8 + g],
          static_cast<uint8_t>((b.scales[c] >> 4 * (l / 2)) & 15)};
}

template <typename B>
using iq2_group_fn = iq2_group (*)(const B &b, int g);

// As gguf's dequantize: db = d * (0.5 + s) * 0.25, then db * grid * sign, in that order.
template <typename B, iq2_group_fn<B> G>
void iq2_dequantize(const void *src, float *dst, int64_t n) {
  const B *b = static_cast<const B *>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = fp16_to_fp32(b[i].d);
    for (int g = 0; g < QK_K / 8; ++g, dst += 8) {
      const iq2_group q = G(b[i], g);
      const float db = d * (0.5f + static_cast<float>(q.s)) * 0.25f;
      for (int j = 0; j < 8; ++j) {
        const float v = db * static_cast<float>((q.grid >> 8 * j) & 0xFF);
        dst[j] = (q.signs >> j) & 1 ? -v : v;
      }
    }
  }
}

// The scalar reference vec_dot against Q8_K.
template <typename B, iq2_group_fn<B> G>
float iq2_vec_dot_scalar(int n, const void *w, const void *act) {
  const B *x = static_cast<const B *>(w);
  const block_q8_K *y = static_cast<const block_q8_K *>(act);
  float s = 0.f;
  for (int i = 0; i < n / QK_K; ++i) {
    int32_t isum = 0;
    for (int g = 0; g < QK_K / 8; ++g) {
      const iq2_group q = G(x[i], g);
      const int8_t *a = y[i].qs + 8 * g;
      int32_t sg = 0;
      for (int j = 0; j < 8; ++j) {
        const int v = static_cast<int>((q.grid >> 8 * j) & 0xFF) * a[j];
        sg += (q.signs >> j) & 1 ? -v : v;
      }
      isum += (2 * q.s + 1) * sg;
    }
    s += fp16_to_fp32(x[i].d) * y[i].d * static_cast<float>(isum);
  }
  return 0.125f * s;
}

#ifdef NUMOE_X86
namespace simd {

// The rows t[i0..i3] of a table of 8-byte rows as one register: four broadcast loads and
// three blends (no shuffle-port inserts, no gather).
NUMOE_TARGET_AVX2 inline __m256i rows4(const uint64_t *t, uint32_t i0, uint32_t i1, uint32_t i2,
                                       uint32_t i3) {
  auto b = [t](uint32_t i) NUMOE_TARGET_AVX2 {
    return _mm256_castpd_si256(_mm256_broadcast_sd(reinterpret_cast<const double *>(t + i)));
  };
  return _mm256_blend_epi32(_mm256_blend_epi32(b(i0), b(i1), 0x0C),
                            _mm256_blend_epi32(b(i2), b(i3), 0xC0), 0xF0);
}

// The signs of a sub-block as +1 / -1 bytes (_mm256_sign_epi8's operand) from a register
// whose every dword is its 4 sign bytes (bit j of byte l: value 8l + j negative).
NUMOE_TARGET_AVX2 inline __m256i iq2_spread_signs(__m256i s4) {
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ULL));
  const __m256i b = _mm256_and_si256(
      _mm256_shuffle_epi8(s4, _mm256_setr_epi64x(0, 0x0101010101010101LL, 0x0202020202020202LL,
                                                 0x0303030303030303LL)),
      bit);
  return _mm256_or_si256(_mm256_cmpeq_epi8(b, bit), _mm256_set1_epi8(1));
}

// 0x80 where the 4-bit index has odd parity: a sign field's eighth sign bit (pshufb table).
NUMOE_TARGET_AVX2 inline __m256i parity_bits() {
  return _mm256_broadcastsi128_si256(
      _mm_setr_epi8(0, -128, -128, 0, -128, 0, 0, -128, -128, 0, 0, -128, 0, -128, -128, 0));
}

// The 16 int16 scale words 2s + 1 of an IQ2_XS / IQ2_S block, from its 8 scale bytes: words
// 2c and 2c + 1 are the first and the last 16 values of sub-block c.
NUMOE_TARGET_AVX2 inline __m256i iq2_scale_words(const uint8_t *scales) {
  const __m128i m4 = _mm_set1_epi8(0x0F);
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i *>(scales));
  const __m128i s =
      _mm_unpacklo_epi8(_mm_and_si128(b, m4), _mm_and_si128(_mm_srli_epi16(b, 4), m4));
  return _mm256_cvtepu8_epi16(_mm_or_si128(_mm_add_epi8(s, s), _mm_set1_epi8(1)));
}

// s += (d * dy) * isum for four consecutive super-blocks (d: the half at the start of each
// block, `stride` bytes apart), in the scalar order (no FMA).
NUMOE_TARGET_AVX2 inline float iq2_combine4(float s, const uint8_t *x, size_t stride,
                                            const block_q8_K *y, __m128i isum) {
  half h[4];
  for (int k = 0; k < 4; ++k) std::memcpy(&h[k], x + k * stride, 2);
  const __m128 d = _mm_cvtph_ps(
      _mm_setr_epi16(static_cast<int16_t>(h[0]), static_cast<int16_t>(h[1]),
                     static_cast<int16_t>(h[2]), static_cast<int16_t>(h[3]), 0, 0, 0, 0));
  const __m128 dy = _mm_setr_ps(y[0].d, y[1].d, y[2].d, y[3].d);
  alignas(16) float t[4];
  _mm_store_ps(t, _mm_mul_ps(_mm_mul_ps(d, dy), _mm_cvtepi32_ps(isum)));
  s += t[0];
  s += t[1];
  s += t[2];
  s += t[3];
  return s;
}

// ---- AVX2: unpacker U per super-block, U u(x), then u.sub(c, g, sg, sc) for c = 0..7 gives
// sub-block c (values 32c .. 32c + 31): g its grid values (unsigned bytes), sg their signs
// (+1 / -1 bytes, _mm256_sign_epi8's operand), sc its scale words (128-bit lane 0: values
// 0..15, lane 1: 16..31).

template <typename U>
NUMOE_TARGET_AVX2 inline __m256i iq2_block_avx2(const typename U::block &x, const block_q8_K &y) {
  U u(x);
  __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
  for (int c = 0; c < 8; ++c) {
    __m256i g, sg, sc;
    u.sub(c, g, sg, sc);
    const __m256i p =
        _mm256_madd_epi16(_mm256_maddubs_epi16(g, _mm256_sign_epi8(load32(y.qs + 32 * c), sg)), sc);
    if (c & 1)
      acc1 = _mm256_add_epi32(acc1, p);
    else
      acc0 = _mm256_add_epi32(acc0, p);
  }
  return _mm256_add_epi32(acc0, acc1);
}

template <typename U>
struct iq2_avx2 {  // the kernel of k_vec_dot_avx2
  using block = typename U::block;
  NUMOE_K_STEP(NUMOE_TARGET_AVX2)
  float four(float s, const block *x, const block_q8_K *y, int i) {
    __m256i is[4];
    for (int k = 0; k < 4; ++k) is[k] = iq2_block_avx2<U>(x[i + k], y[i + k]);
    return iq2_combine4(s, reinterpret_cast<const uint8_t *>(x + i), sizeof(block), y + i,
                        hsum4_i32(is));
  }
  NUMOE_K_STEP(NUMOE_TARGET_AVX2) float one(const block &x, const block_q8_K &y) {
    return fp16_to_fp32(x.d) * y.d * static_cast<float>(hsum_i32(iq2_block_avx2<U>(x, y)));
  }
};

// N activations: each sub-block unpacked once, every activation's isum formed as the single
// body does, reduced across activations (lane j: activation j) and combined per lane in the
// scalar order; out[j] = lane j / 8, so each equals the single body's result.
template <typename U, int N>
NUMOE_TARGET_AVX2 void iq2_n_avx2(int n, const void *w, const block_q8_K *const *y, const float *dy,
                                  float *out) {
  const typename U::block *x = static_cast<const typename U::block *>(w);
  __m256 s = _mm256_setzero_ps();
  for (int i = 0; i < n / QK_K; ++i) {
    __m256i acc[8];
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_si256();
    U u(x[i]);
    for (int c = 0; c < 8; ++c) {
      __m256i g, sg, sc;
      u.sub(c, g, sg, sc);
      for (int j = 0; j < N; ++j) {
        const __m256i a = _mm256_sign_epi8(load32(y[j][i].qs + 32 * c), sg);
        acc[j] = _mm256_add_epi32(acc[j], _mm256_madd_epi16(_mm256_maddubs_epi16(g, a), sc));
        opaque(acc[j]);
      }
    }
    const __m256 d = _mm256_set1_ps(fp16(x[i].d));
    s = _mm256_add_ps(s, _mm256_mul_ps(_mm256_mul_ps(d, _mm256_load_ps(dy + 8 * i)),
                                       _mm256_cvtepi32_ps(hsum8_i32(acc))));
  }
  store_n(_mm256_mul_ps(s, _mm256_set1_ps(0.125f)), N, out);
}

// ---- AVX-512: unpacker U per super-block, U u(x), then u.chunk(p, g, k, sc) for p = 0..3
// gives values 64p .. 64p + 63 (sub-blocks 2p, 2p + 1): g their grid values (unsigned
// bytes), k their signs (bit j: value 64p + j negative; the 8 sign bytes of the groups read
// as one uint64), sc the scale word of each 128-bit lane (16 values).

// Grid rows in registers (no per-row loads): a grid as 2-bit codes (0, 1, 2 for 8, 25, 43),
// one uint16 per row, looked up 32 rows at a time with vpermt2w over pairs of 64-byte table
// registers (6 index bits) and blends on the higher index bits; a chunk's 8 rows are then
// spread to bytes. Code order in a row's word: element 2k in bits 2k..2k+1 and element 2k + 1
// in bits 2k+8..2k+9 (k < 4), so that word k of the row repeated 4 times, shifted right by 2k,
// holds element 2k in its low byte and 2k + 1 in its high byte (iq2_expand).
template <size_t R>
struct iq2_code_table {
  uint16_t w[R];
};
template <size_t R>
constexpr iq2_code_table<R> make_iq2_codes(const uint64_t (&grid)[R]) {
  iq2_code_table<R> t{};
  for (size_t r = 0; r < R; ++r)
    for (int j = 0; j < 8; ++j) {
      const uint64_t v = (grid[r] >> 8 * j) & 0xFF;
      const int code = v == 0x08 ? 0 : v == 0x19 ? 1 : 2;
      t.w[r] |= static_cast<uint16_t>(code << (j % 2 ? 2 * (j / 2) + 8 : 2 * (j / 2)));
    }
  return t;
}
alignas(64) inline constexpr auto iq2xxs_codes = make_iq2_codes(iq2xxs_grid);
alignas(64) inline constexpr auto iq2xs_codes = make_iq2_codes(iq2xs_grid);
alignas(64) inline constexpr auto iq2s_codes = make_iq2_codes(iq2s_grid);

// The code words t[idx[n]] for the 32 word indices idx (each < R; bits above log2(R) are
// ignored: a register lookup cannot leave its table).
template <size_t R>
NUMOE_TARGET_AVX512 inline __m512i iq2_lookup(const iq2_code_table<R> &t, __m512i idx) {
  constexpr int m = static_cast<int>(R / 64);
  __m512i r[m];
  for (int k = 0; k < m; ++k)
    r[k] = _mm512_permutex2var_epi16(_mm512_load_si512(t.w + 64 * k), idx,
                                     _mm512_load_si512(t.w + 64 * k + 32));
  for (int bit = 6, c = m; c > 1; ++bit, c /= 2) {
    const __mmask32 hi =
        _mm512_test_epi16_mask(idx, _mm512_set1_epi16(static_cast<int16_t>(1 << bit)));
    for (int k = 0; k < c / 2; ++k) r[k] = _mm512_mask_blend_epi16(hi, r[2 * k], r[2 * k + 1]);
  }
  return r[0];
}

// Grid values of rows 8p .. 8p + 7 of the 32 code words w (from iq2_lookup), as 64 bytes.
NUMOE_TARGET_AVX512 inline __m512i iq2_expand(__m512i w, int p) {
  // word n: row 8p + n / 4, shifted right by 2 * (n % 4)
  const __m512i rep = _mm512_permutexvar_epi16(
      _mm512_add_epi16(
          _mm512_set1_epi16(static_cast<int16_t>(8 * p)),
          _mm512_srli_epi16(
              _mm512_setr_epi64(0x0003000200010000LL, 0x0007000600050004LL, 0x000B000A00090008LL,
                                0x000F000E000D000CLL, 0x0013001200110010LL, 0x0017001600150014LL,
                                0x001B001A00190018LL, 0x001F001E001D001CLL),
              2)),
      w);
  const __m512i c = _mm512_and_si512(
      _mm512_srlv_epi16(rep, _mm512_set1_epi64(0x0006000400020000LL)), _mm512_set1_epi16(0x0303));
  return _mm512_shuffle_epi8(
      _mm512_broadcast_i32x4(_mm_setr_epi8(8, 25, 43, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)), c);
}

// The sign mask of chunk p from the block's 32 sign bytes s (byte g: group g): each of the
// chunk's 8 bytes spread over its 8 values and tested against the value's bit, without a
// round trip through a general register.
NUMOE_TARGET_AVX512 inline __mmask64 iq2_sign_mask(__m256i s, int p) {
  const __m512i b =
      _mm512_shuffle_i32x4(_mm512_castsi256_si512(s), _mm512_castsi256_si512(s), (p / 2) * 0x55);
  const char o = static_cast<char>(8 * (p % 2));
  const __m512i idx = _mm512_add_epi8(
      _mm512_set1_epi8(o),
      _mm512_setr_epi64(0, 0x0101010101010101LL, 0x0202020202020202LL, 0x0303030303030303LL,
                        0x0404040404040404LL, 0x0505050505050505LL, 0x0606060606060606LL,
                        0x0707070707070707LL));
  return _mm512_test_epi8_mask(_mm512_shuffle_epi8(b, idx),
                               _mm512_set1_epi64(static_cast<int64_t>(0x8040201008040201ULL)));
}

// The scale words of chunk p from 16 words w (word 4p + L for 128-bit lane L): IQ2_XS /
// IQ2_S, whose 16-value halves each have a scale (iq2_scale_words).
NUMOE_TARGET_AVX512 inline __m512i iq2_chunk_scales(__m256i w, int p) {
  const __m512i idx = _mm512_add_epi16(
      _mm512_set1_epi16(static_cast<int16_t>(4 * p)),
      _mm512_setr_epi64(0, 0, 0x0001000100010001LL, 0x0001000100010001LL, 0x0002000200020002LL,
                        0x0002000200020002LL, 0x0003000300030003LL, 0x0003000300030003LL));
  return _mm512_permutexvar_epi16(idx, _mm512_castsi256_si512(w));
}

template <typename U>
NUMOE_TARGET_AVX512VNNI inline __m512i iq2_block_avx512(const typename U::block &x,
                                                        const block_q8_K &y) {
  U u(x);
  __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
  for (int p = 0; p < 4; ++p) {
    __m512i g, sc;
    __mmask64 k;
    u.chunk(p, g, k, sc);
    const __m512i a = _mm512_loadu_si512(y.qs + 64 * p);
    const __m512i q =
        _mm512_maddubs_epi16(g, _mm512_mask_sub_epi8(a, k, _mm512_setzero_si512(), a));
    if (p & 1)
      acc1 = _mm512_dpwssd_epi32(acc1, q, sc);
    else
      acc0 = _mm512_dpwssd_epi32(acc0, q, sc);
  }
  return _mm512_add_epi32(acc0, acc1);
}

template <typename U>
struct iq2_avx512 {  // the kernel of k_vec_dot_avx512
  using block = typename U::block;
  NUMOE_K_STEP(NUMOE_TARGET_AVX512VNNI)
  float four(float s, const block *x, const block_q8_K *y, int i) {
    __m512i is[4];
    for (int k = 0; k < 4; ++k) is[k] = iq2_block_avx512<U>(x[i + k], y[i + k]);
    return iq2_combine4(s, reinterpret_cast<const uint8_t *>(x + i), sizeof(block), y + i,
                        hsum4_i32(is));
  }
  NUMOE_K_STEP(NUMOE_TARGET_AVX512VNNI) float one(const block &x, const block_q8_K &y) {
    return fp16_to_fp32(x.d) * y.d *
           static_cast<float>(_mm512_reduce_add_epi32(iq2_block_avx512<U>(x, y)));
  }
};

template <typename U, int N>
NUMOE_TARGET_AVX512VNNI void iq2_n_avx512(int n, const void *w, const block_q8_K *const *y,
                                          const float *dy, float *out) {
  const typename U::block *x = static_cast<const typename U::block *>(w);
  __m256 s = _mm256_setzero_ps();
  for (int i = 0; i < n / QK_K; ++i) {
    __m512i acc[8];
    for (int j = 0; j < 8; ++j) acc[j] = _mm512_setzero_si512();
    U u(x[i]);
    for (int p = 0; p < 4; ++p) {
      __m512i g, sc;
      __mmask64 k;
      u.chunk(p, g, k, sc);
      for (int j = 0; j < N; ++j) {
        const __m512i a = _mm512_loadu_si512(y[j][i].qs + 64 * p);
        const __m512i q =
            _mm512_maddubs_epi16(g, _mm512_mask_sub_epi8(a, k, _mm512_setzero_si512(), a));
        acc[j] = _mm512_dpwssd_epi32(acc[j], q, sc);
      }
    }
    const __m256 d = _mm256_set1_ps(fp16(x[i].d));
    s = _mm256_add_ps(s, _mm256_mul_ps(_mm256_mul_ps(d, _mm256_load_ps(dy + 8 * i)),
                                       _mm256_cvtepi32_ps(hsum8_i32(acc))));
  }
  store_n(_mm256_mul_ps(s, _mm256_set1_ps(0.125f)), N, out);
}

// The vec_dot of unpacker U at one level: k_vec_dot's scalar-order sum, times 1/8.
template <typename U>
float iq2_vec_dot_avx2(int n, const void *w, const void *act) {
  return 0.125f * k_vec_dot_avx2<iq2_avx2<U>>(n, w, act);
}
template <typename U>
float iq2_vec_dot_avx512(int n, const void *w, const void *act) {
  return 0.125f * k_vec_dot_avx512<iq2_avx512<U>>(n, w, act);
}

}  // namespace simd
#endif

}  // namespace numoe::quant
