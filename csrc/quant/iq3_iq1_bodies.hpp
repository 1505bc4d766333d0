// vec_dot / vec_dot_n bodies shared by IQ3_XXS, IQ3_S, IQ1_S and IQ1_M (all against Q8_K).
//
// Each format sums a super-block's products exactly in integers (isum, int32) and its value
// is kFactor * d * dy * isum, with d the super-block's fp16 scale and kFactor a power of two
// the integer sums leave out (IQ3_XXS 1/4, IQ1 1/8). Every body adds the per-super-block
// terms (d * dy) * isum in the scalar body's order and multiplies by kFactor once at the end,
// with no FMA: the levels and vec_dot_n give the scalar result bit for bit.
//
// A format F provides:
//   F::block, F::kFactor, F::d_bits(x) (the fp16 bits of d), F::isum(x, y) (scalar, exact);
//   F::avx2 / F::avx512, unpackers: `U u(x)` does the weight block's work once (grid
//   look-ups, signs, scale words) and u.dot(y) returns int32 lanes that sum to isum for one
//   Q8_K block y, so several activations share one unpacking (vec_dot_n).
#pragma once

#include "iq3_iq1_tables.hpp"
#include "quant.hpp"
#include "simd.hpp"

namespace numoe::quant::iq {

template <typename F>
float vec_dot_scalar(int n, const void *w, const void *act) {
  const typename F::block *x = static_cast<const typename F::block *>(w);
  const block_q8_K *y = static_cast<const block_q8_K *>(act);
  float s = 0.f;
  for (int i = 0; i < n / QK_K; ++i)
    s += fp16_to_fp32(F::d_bits(x[i])) * y[i].d * static_cast<float>(F::isum(x[i], y[i]));
  return F::kFactor * s;
}

#ifdef NUMOE_X86
// s += (d_k * dy_k) * isum_k for four consecutive super-blocks, in the scalar order.
template <typename F>
NUMOE_TARGET_AVX2 inline float combine4(float s, const typename F::block *x, const block_q8_K *y,
                                        __m128i isum) {
  const __m128i h = _mm_setr_epi16(
      static_cast<int16_t>(F::d_bits(x[0])), static_cast<int16_t>(F::d_bits(x[1])),
      static_cast<int16_t>(F::d_bits(x[2])), static_cast<int16_t>(F::d_bits(x[3])), 0, 0, 0, 0);
  const __m128 dy = _mm_setr_ps(y[0].d, y[1].d, y[2].d, y[3].d);
  alignas(16) float t[4];
  _mm_store_ps(t, _mm_mul_ps(_mm_mul_ps(_mm_cvtph_ps(h), dy), _mm_cvtepi32_ps(isum)));
  s += t[0];
  s += t[1];
  s += t[2];
  s += t[3];
  return s;
}

// The AVX2 forms of the two below: u[g], sg[g], sc[g] per 32 values (sg: +1 / -1 bytes).
NUMOE_TARGET_AVX2 inline __m256i iq3_dot_avx2(const __m256i u[8], const __m256i sg[8],
                                              const __m256i sc[8], const block_q8_K &y) {
  __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
  for (int g = 0; g < 8; g += 2) {
    const __m256i p0 =
        _mm256_maddubs_epi16(u[g], _mm256_sign_epi8(simd::load32(y.qs + 32 * g), sg[g]));
    const __m256i p1 = _mm256_maddubs_epi16(
        u[g + 1], _mm256_sign_epi8(simd::load32(y.qs + 32 * g + 32), sg[g + 1]));
    acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(p0, sc[g]));
    acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(p1, sc[g + 1]));
  }
  return _mm256_add_epi32(acc0, acc1);
}

NUMOE_TARGET_AVX2 inline __m256i iq1_dot_avx2(const __m256i u[8], const __m256i sc[8], __m256i corr,
                                              const block_q8_K &y) {
  __m256i acc0 = _mm256_madd_epi16(corr,
                                   _mm256_loadu_si256(reinterpret_cast<const __m256i *>(y.bsums))),
          acc1 = _mm256_setzero_si256();
  for (int g = 0; g < 8; g += 2) {
    const __m256i p0 = _mm256_maddubs_epi16(u[g], simd::load32(y.qs + 32 * g));
    const __m256i p1 = _mm256_maddubs_epi16(u[g + 1], simd::load32(y.qs + 32 * g + 32));
    acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(p0, sc[g]));
    acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(p1, sc[g + 1]));
  }
  return _mm256_add_epi32(acc0, acc1);
}

// An IQ3 super-block's AVX-512 sum against Q8_K: u[r] the 64 unsigned grid values of rows
// 64r.., neg[r] their sign masks, sc[r] the words of their (2s+1) scales (IQ3_XXS, IQ3_S).
NUMOE_TARGET_AVX512VNNI inline __m512i iq3_dot_avx512(const __m512i u[4], const __mmask64 neg[4],
                                                      const __m512i sc[4], const block_q8_K &y) {
  __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
  for (int r = 0; r < 4; r += 2) {
    const __m512i a0 = _mm512_loadu_si512(y.qs + 64 * r);
    const __m512i a1 = _mm512_loadu_si512(y.qs + 64 * r + 64);
    const __m512i p0 =
        _mm512_maddubs_epi16(u[r], _mm512_mask_sub_epi8(a0, neg[r], _mm512_setzero_si512(), a0));
    const __m512i p1 = _mm512_maddubs_epi16(
        u[r + 1], _mm512_mask_sub_epi8(a1, neg[r + 1], _mm512_setzero_si512(), a1));
    acc0 = _mm512_dpwssd_epi32(acc0, p0, sc[r]);
    acc1 = _mm512_dpwssd_epi32(acc1, p1, sc[r + 1]);
  }
  return _mm512_add_epi32(acc0, acc1);
}

// An IQ1 super-block's AVX-512 sum against Q8_K: u[r] the 64 unsigned grid values of rows
// 64r.., sc[r] their scale words, corr the per-16 correction words that meet Q8_K's bsums
// (the grid offset and the shift; IQ1_S, IQ1_M).
NUMOE_TARGET_AVX512VNNI inline __m512i iq1_dot_avx512(const __m512i u[4], const __m512i sc[4],
                                                      __m256i corr, const block_q8_K &y) {
  __m512i acc0 = _mm512_dpwssd_epi32(_mm512_setzero_si512(),
                                     _mm512_zextsi256_si512(_mm256_loadu_si256(
                                         reinterpret_cast<const __m256i *>(y.bsums))),
                                     _mm512_zextsi256_si512(corr)),
          acc1 = _mm512_setzero_si512();
  for (int r = 0; r < 4; r += 2) {
    acc0 = _mm512_dpwssd_epi32(acc0, _mm512_maddubs_epi16(u[r], _mm512_loadu_si512(y.qs + 64 * r)),
                               sc[r]);
    acc1 = _mm512_dpwssd_epi32(
        acc1, _mm512_maddubs_epi16(u[r + 1], _mm512_loadu_si512(y.qs + 64 * r + 64)), sc[r + 1]);
  }
  return _mm512_add_epi32(acc0, acc1);
}

// The single-activation body of one level: super-blocks four at a time (their isums reduced
// together), then the tail one by one. U: the level's unpacker, V its lane vector type.
#define NUMOE_IQ_VEC_DOT(SUF, TARGET, REDUCE1)                                                    \
  template <typename F, typename U>                                                               \
  TARGET float vec_dot_##SUF(int n, const void *w, const void *act) {                             \
    const typename F::block *x = static_cast<const typename F::block *>(w);                       \
    const block_q8_K *y = static_cast<const block_q8_K *>(act);                                   \
    const int nb = n / QK_K;                                                                      \
    float s = 0.f;                                                                                \
    int i = 0;                                                                                    \
    for (; i + 4 <= nb; i += 4) {                                                                 \
      decltype(U(x[0]).dot(y[0])) is[4];                                                          \
      for (int k = 0; k < 4; ++k) is[k] = U(x[i + k]).dot(y[i + k]);                              \
      s = combine4<F>(s, x + i, y + i, simd::hsum4_i32(is));                                      \
    }                                                                                             \
    for (; i < nb; ++i)                                                                           \
      s += simd::fp16(F::d_bits(x[i])) * y[i].d * static_cast<float>(REDUCE1(U(x[i]).dot(y[i]))); \
    return F::kFactor * s;                                                                        \
  }

NUMOE_IQ_VEC_DOT(avx2, NUMOE_TARGET_AVX2, simd::hsum_i32)
NUMOE_IQ_VEC_DOT(avx512, NUMOE_TARGET_AVX512VNNI, _mm512_reduce_add_epi32)
#undef NUMOE_IQ_VEC_DOT

// N activations against one weight row (simd::rows makes the tile body): each super-block
// unpacked once; lane j of s is activation j's running sum, combined as the scalar body does.
#define NUMOE_IQ_ROW_N(SUF, TARGET)                                                          \
  template <typename F, typename U, int N>                                                   \
  TARGET void row_n_##SUF(int n, const void *w, const block_q8_K *const *y, const float *dy, \
                          float *out) {                                                      \
    const typename F::block *x = static_cast<const typename F::block *>(w);                  \
    __m256 s = _mm256_setzero_ps();                                                          \
    for (int i = 0; i < n / QK_K; ++i) {                                                     \
      const U u(x[i]);                                                                       \
      decltype(u.dot(y[0][0])) is[8] = {};                                                   \
      for (int j = 0; j < N; ++j) {                                                          \
        is[j] = u.dot(y[j][i]);                                                              \
        simd::opaque(is[j]);                                                                 \
      }                                                                                      \
      const __m256 d = _mm256_set1_ps(simd::fp16(F::d_bits(x[i])));                          \
      s = _mm256_add_ps(s, _mm256_mul_ps(_mm256_mul_ps(d, _mm256_load_ps(dy + 8 * i)),       \
                                         _mm256_cvtepi32_ps(simd::hsum8_i32(is))));          \
    }                                                                                        \
    simd::store_n(_mm256_mul_ps(_mm256_set1_ps(F::kFactor), s), N, out);                     \
  }

NUMOE_IQ_ROW_N(avx2, NUMOE_TARGET_AVX2)
NUMOE_IQ_ROW_N(avx512, NUMOE_TARGET_AVX512VNNI)
#undef NUMOE_IQ_ROW_N

// ---- IQ1_S / IQ1_M grid look-ups ----
// AVX-512: the 32 row indices of a super-block (< 2048 by construction, masked again here)
// are formed in one register and read back from memory four to a 64-bit word: far fewer
// scalar operations than forming each index from the qs and qh bytes, and the look-ups are
// most of these formats' work.

// ix: the 32 indices as words; u[r]: the iq1s_grid_u8 bytes of rows 8r .. 8r + 7.
NUMOE_TARGET_AVX512VNNI inline void iq1_rows_avx512(__m512i ix, __m512i u[4]) {
  alignas(64) uint64_t w[8];
  _mm512_store_si512(w, ix);
  const uint64_t *t = iq1s_grid_u8.data();
  auto pair = [t](uint64_t a) NUMOE_TARGET_AVX512VNNI {
    return _mm_insert_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(t + (a & 0x7FF))),
                            static_cast<int64_t>(t[(a >> 16) & 0x7FF]), 1);
  };
  for (int r = 0; r < 4; ++r) {
    const uint64_t a = w[2 * r], b = w[2 * r + 1];
    u[r] = simd::concat(_mm256_setr_m128i(pair(a), pair(a >> 32)),
                        _mm256_setr_m128i(pair(b), pair(b >> 32)));
  }
}
#endif

}  // namespace numoe::quant::iq
