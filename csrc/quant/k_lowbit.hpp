// The low-bit K-quants Q2_K and Q3_K and the non-linear IQ4_XS: block layouts (as in
// ggml-common.h), their GGML ids, the IQ4 value table and the scale unpacking shared by the
// scalar and SIMD bodies (q2_k.cpp, q3_k.cpp, iq4_xs.cpp). All three pair with the Q8_K
// activation (ggml's vec_dot_type): the SIMD bodies unpack their values in element order, so
// a plain Q8_K load meets them, and Q8_K's 16-value sums (bsums) give the min / offset
// terms. Each super-block's products are summed exactly in int32 and its float term added
// to the row's sum in one order shared by every body: all ISAs give the same bits.
#pragma once

#include "iq4_values.hpp"
#include "quant.hpp"

namespace numoe::quant {

// GGML type ids (not in quant.hpp's Type: each format group keeps its own).
enum : int { Q2_K = 10, Q3_K = 11, IQ4_XS = 23 };

// Q2_K: 16 groups of 16 2-bit values q, x = d * sc * q - dmin * m with 4-bit sc (low
// nibble of scales[g]) and m (high nibble). Element 128h + 32k + l is bits 2k..2k+1 of
// qs[32h + l] (h < 2, k < 4, l < 32).
struct block_q2_K {
  uint8_t scales[QK_K / 16];
  uint8_t qs[QK_K / 4];
  half d, dmin;
};
// Q3_K: 16 groups of 16 3-bit values, x = d * (sc - 32) * (q - 4) with 6-bit sc. The low 2
// bits of q as Q2_K's qs; the third bit of element 32K + l is bit K of hmask[l] (K < 8). The
// 16 scales: low 4 bits in the nibbles of scales[0..7] (group j < 8: low nibble of byte j,
// j >= 8: high nibble of byte j - 8), high 2 bits in scales[8 + j % 4] at bit 2 * (j / 4).
struct block_q3_K {
  uint8_t hmask[QK_K / 8];
  uint8_t qs[QK_K / 4];
  uint8_t scales[12];
  half d;
};
// IQ4_XS: 8 sub-blocks of 32 4-bit indices into kvalues_iq4nl, x = d * (ls - 32) * kv[q]
// with a 6-bit ls: low 4 bits in nibble j of scales_l (low nibble of byte j / 2 first), high
// 2 bits at bit 2j of scales_h. Sub-block j: qs[16j + l] holds element l (low nibble) and
// 16 + l (high nibble).
struct block_iq4_xs {
  half d;
  uint16_t scales_h;
  uint8_t scales_l[QK_K / 64];
  uint8_t qs[QK_K / 2];
};
static_assert(sizeof(block_q2_K) == 84, "block_q2_K size");
static_assert(sizeof(block_q3_K) == 110, "block_q3_K size");
static_assert(sizeof(block_iq4_xs) == 136, "block_iq4_xs size");

// The 16 signed scales (sc - 32, in -32..31) of a Q3_K block.
inline void unpack_scales_q3_K(const uint8_t *s, int8_t out[16]) {
  for (int j = 0; j < 16; ++j) {
    const int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
    const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    out[j] = static_cast<int8_t>((lo | (hi << 4)) - 32);
  }
}

// Signed scale (ls - 32, in -32..31) of IQ4_XS sub-block j.
inline int scale_iq4_xs(const block_iq4_xs &b, int j) {
  const int lo = (b.scales_l[j / 2] >> (4 * (j % 2))) & 0xF;
  const int hi = (b.scales_h >> (2 * j)) & 3;
  return (lo | (hi << 4)) - 32;
}

// The per-super-block float term of a format with one fp16 scale d and an exact integer
// sum (Q3_K, IQ4_XS, as Q6_K): d * dy * isum, rounded in this order by every ISA body.
inline float d_block_sum(half d, float dy, int32_t isum) {
  return fp16_to_fp32(d) * dy * static_cast<float>(isum);
}

}  // namespace numoe::quant

#ifdef NUMOE_X86
#include "simd.hpp"

namespace numoe::quant::simd {

// s += d_block_sum(...) for four consecutive super-blocks (their fp16 d at d0 + k * stride
// bytes) against y[0..3], lane k of isum block k's exact sum: bit-identical to the scalar
// combine (products rounded as (d * dy) * isum, no FMA, added one by one).
NUMOE_TARGET_AVX2 inline float d_combine4(float s, const uint8_t *d0, size_t stride,
                                          const block_q8_K *y, __m128i isum) {
  int16_t h[4];
  for (int k = 0; k < 4; ++k) std::memcpy(&h[k], d0 + k * stride, 2);
  const __m128 d = _mm_cvtph_ps(_mm_setr_epi16(h[0], h[1], h[2], h[3], 0, 0, 0, 0));
  const __m128 dy = _mm_setr_ps(y[0].d, y[1].d, y[2].d, y[3].d);
  alignas(16) float t[4];
  _mm_store_ps(t, _mm_mul_ps(_mm_mul_ps(d, dy), _mm_cvtepi32_ps(isum)));
  s += t[0];
  s += t[1];
  s += t[2];
  s += t[3];
  return s;
}

// s + d_block_sum(d, dy[j], isum[j]) in lane j: one super-block for 8 activations.
NUMOE_TARGET_AVX2 inline __m256 d_combine8(__m256 s, half d, __m256 dy, __m256i isum) {
  return _mm256_add_ps(
      s, _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(fp16(d)), dy), _mm256_cvtepi32_ps(isum)));
}

// int16 scale words of 16-value groups 2k (low 128-bit lane) and 2k + 1 (high lane), from
// sc8: 8 groups' words in both lanes (pshufb, no lane crossing).
NUMOE_TARGET_AVX2 inline __m256i pair_scale_words(__m256i sc8, int k) {
  return _mm256_shuffle_epi8(
      sc8, _mm256_setr_m128i(_mm_set1_epi16(word_idx(2 * k)), _mm_set1_epi16(word_idx(2 * k + 1))));
}

// The int16 scale words of 16-value groups 4r .. 4r + 3 in the 128-bit lanes 0..3 of sc[r]
// (r < 4), from the block's 16 group words w16: what a 64-value register of elements
// 64r .. 64r + 63 in element order pairs with.
NUMOE_TARGET_AVX512 inline void group_scale_words(__m256i w16, __m512i sc[4]) {
  const __m512i w = _mm512_castsi256_si512(w16);
  for (int r = 0; r < 4; ++r) {
    const long long g = 4 * r;
    constexpr long long rep = 0x0001000100010001LL;  // a word in all 4 words of a qword
    sc[r] = _mm512_permutexvar_epi16(
        _mm512_setr_epi64(g * rep, g * rep, (g + 1) * rep, (g + 1) * rep, (g + 2) * rep,
                          (g + 2) * rep, (g + 3) * rep, (g + 3) * rep),
        w);
  }
}

// The products of one super-block of Q2_K / Q3_K against Q8_K, for an AVX2 unpacker U whose
// half(h) readies values 128h.., values(k) gives 32 of them (chunk k of the half) as bytes and
// words(k) their scale words: 8 int32 lanes, exact (two accumulators, k even / odd).
template <typename U>
NUMOE_TARGET_AVX2 inline __m256i k_lowbit_isum_avx2(U &u, const block_q8_K &y) {
  __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
  for (int h = 0; h < 2; ++h) {
    u.half(h);
    for (int k = 0; k < 4; ++k) {
      const __m256i a =
          _mm256_loadu_si256(reinterpret_cast<const __m256i *>(y.qs + 128 * h + 32 * k));
      const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(u.values(k), a), u.words(k));
      if (k & 1)
        acc1 = _mm256_add_epi32(acc1, p);
      else
        acc0 = _mm256_add_epi32(acc0, p);
    }
  }
  return _mm256_add_epi32(acc0, acc1);
}

// The same for N activations (super-block i of y[j] into acc[j]), the block unpacked once.
template <int N, typename U>
NUMOE_TARGET_AVX2 inline void k_lowbit_isum_n_avx2(U &u, const block_q8_K *const *y, int i,
                                                   __m256i *acc) {
  for (int h = 0; h < 2; ++h) {
    u.half(h);
    for (int k = 0; k < 4; ++k) {
      const __m256i q = u.values(k), sw = u.words(k);
      for (int j = 0; j < N; ++j) {
        const int8_t *a = y[j][i].qs + 128 * h + 32 * k;
        acc[j] = _mm256_add_epi32(
            acc[j],
            _mm256_madd_epi16(_mm256_maddubs_epi16(q, _mm256_loadu_si256((const __m256i *)a)), sw));
        opaque(acc[j]);
      }
    }
  }
}

}  // namespace numoe::quant::simd
#endif
