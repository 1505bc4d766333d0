// Q6_K: super-blocks of 256 6-bit values (offset 32) in 16 groups of 16 with int8 scales:
// x = d*sc*(q - 32); dot against Q8_K.
//
// Layout per half (128 elements; ql += 64, qh += 32, scales += 8 per half), l in 0..31:
//   element l      = ql[l] low nibble      | qh[l] bits 0-1 << 4
//   element l + 32 = ql[l + 32] low nibble | qh[l] bits 2-3 << 4
//   element l + 64 = ql[l] high nibble     | qh[l] bits 4-5 << 4
//   element l + 96 = ql[l + 32] high nibble| qh[l] bits 6-7 << 4
// The SIMD bodies use the unsigned values q and subtract 32 * sum(sc * bsums) at the end.
#include "quant.hpp"
#include "simd.hpp"

namespace numoe::quant {
namespace {

inline int q6(const uint8_t *ql, const uint8_t *qh, int e) {  // e in 0..127 within a half
  const int l = e & 31, part = e >> 5;
  const int lo = part & 1 ? ql[l + 32] : ql[l];
  return ((part & 2 ? lo >> 4 : lo & 0xF) | (((qh[l] >> (2 * part)) & 3) << 4)) - 32;
}

void dequantize_q6_K(const void *src, float *dst, int64_t n) {
  const block_q6_K *b = static_cast<const block_q6_K *>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = fp16_to_fp32(b[i].d);
    for (int h = 0; h < 2; ++h, dst += 128) {
      const uint8_t *ql = b[i].ql + 64 * h, *qh = b[i].qh + 32 * h;
      const int8_t *sc = b[i].scales + 8 * h;
      for (int e = 0; e < 128; ++e)
        dst[e] = d * static_cast<float>(sc[e / 16]) * static_cast<float>(q6(ql, qh, e));
    }
  }
}

float vec_dot_q6_K_scalar(int n, const void *w, const void *act) {
  const block_q6_K *x = static_cast<const block_q6_K *>(w);
  const block_q8_K *y = static_cast<const block_q8_K *>(act);
  float s = 0.f;
  for (int i = 0; i < n / QK_K; ++i) {
    int32_t isum = 0;
    for (int h = 0; h < 2; ++h) {
      const uint8_t *ql = x[i].ql + 64 * h, *qh = x[i].qh + 32 * h;
      const int8_t *sc = x[i].scales + 8 * h, *a = y[i].qs + 128 * h;
      for (int g = 0; g < 8; ++g) {
        int32_t sg = 0;
        for (int e = 16 * g; e < 16 * g + 16; ++e) sg += q6(ql, qh, e) * a[e];
        isum += sc[g] * sg;
      }
    }
    s += fp16_to_fp32(x[i].d) * y[i].d * static_cast<float>(isum);
  }
  return s;
}

#ifdef NUMOE_X86
// 32 * sum_g sc[g] * bsums[g], as 8 int32 lanes.
NUMOE_TARGET_AVX2 inline __m256i offset_term(const int8_t *scales, const int16_t *bsums) {
  const __m256i sc16 =
      _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i *>(scales)));
  return _mm256_slli_epi32(
      _mm256_madd_epi16(sc16, _mm256_loadu_si256(reinterpret_cast<const __m256i *>(bsums))), 5);
}

// s += d * dy * isum for four consecutive super-blocks, in the scalar order (no FMA).
NUMOE_TARGET_AVX2 inline float q6_K_combine4(float s, const block_q6_K *x, const block_q8_K *y,
                                             __m128i isum) {
  const __m128i h =
      _mm_setr_epi16(static_cast<int16_t>(x[0].d), static_cast<int16_t>(x[1].d),
                     static_cast<int16_t>(x[2].d), static_cast<int16_t>(x[3].d), 0, 0, 0, 0);
  const __m128 dy = _mm_setr_ps(y[0].d, y[1].d, y[2].d, y[3].d);
  alignas(16) float t[4];
  _mm_store_ps(t, _mm_mul_ps(_mm_mul_ps(_mm_cvtph_ps(h), dy), _mm_cvtepi32_ps(isum)));
  s += t[0];
  s += t[1];
  s += t[2];
  s += t[3];
  return s;
}

using simd::word_idx;

// Values k = 0..3 of a half (elements 32k..32k+31) as unsigned 6-bit bytes, from its 64 ql
// bytes (l0, l1) and 32 qh bytes (hb).
NUMOE_TARGET_AVX2 inline __m256i q6_K_values_avx2(__m256i l0, __m256i l1, __m256i hb, int k) {
  const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
  switch (k) {
    case 0:
      return _mm256_or_si256(_mm256_and_si256(l0, m4),
                             _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30));
    case 1:
      return _mm256_or_si256(_mm256_and_si256(l1, m4),
                             _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30));
    case 2:
      return _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                             _mm256_and_si256(hb, m30));
    default:
      return _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                             _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30));
  }
}

// int16 scales of groups 2k (low 128-bit lane) and 2k+1 (high lane) of a half, from sc (the
// half's 8 int16 scales in both lanes).
NUMOE_TARGET_AVX2 inline __m256i q6_K_scale_words_avx2(__m256i sc, int k) {
  return _mm256_shuffle_epi8(
      sc, _mm256_setr_m128i(_mm_set1_epi16(word_idx(2 * k)), _mm_set1_epi16(word_idx(2 * k + 1))));
}

// The half's 8 int16 scales in both 128-bit lanes.
NUMOE_TARGET_AVX2 inline __m256i q6_K_half_scales_avx2(const block_q6_K &x, int h) {
  return _mm256_broadcastsi128_si256(
      _mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(x.scales + 8 * h))));
}

// isum of one super-block as 8 int32 lanes (offset term included), exact.
NUMOE_TARGET_AVX2 inline __m256i q6_K_block_avx2(const block_q6_K &x, const block_q8_K &y) {
  __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
  for (int h = 0; h < 2; ++h) {
    const __m256i sc = q6_K_half_scales_avx2(x, h);
    const uint8_t *ql = x.ql + 64 * h;
    const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(ql));
    const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(ql + 32));
    const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.qh + 32 * h));
    const int8_t *a = y.qs + 128 * h;
    for (int k = 0; k < 4; ++k) {
      const __m256i p =
          _mm256_madd_epi16(_mm256_maddubs_epi16(q6_K_values_avx2(l0, l1, hb, k),
                                                 _mm256_loadu_si256((const __m256i *)(a + 32 * k))),
                            q6_K_scale_words_avx2(sc, k));
      if (k & 1)
        acc1 = _mm256_add_epi32(acc1, p);
      else
        acc0 = _mm256_add_epi32(acc0, p);
    }
  }
  return _mm256_sub_epi32(_mm256_add_epi32(acc0, acc1), offset_term(x.scales, y.bsums));
}

struct q6_K_avx2 {  // the kernel of simd::k_vec_dot_avx2
  using block = block_q6_K;
  NUMOE_K_STEP(NUMOE_TARGET_AVX2)
  float four(float s, const block_q6_K *x, const block_q8_K *y, int i) {
    __m256i is[4];
    for (int k = 0; k < 4; ++k) is[k] = q6_K_block_avx2(x[i + k], y[i + k]);
    return q6_K_combine4(s, x + i, y + i, simd::hsum4_i32(is[0], is[1], is[2], is[3]));
  }
  NUMOE_K_STEP(NUMOE_TARGET_AVX2) float one(const block_q6_K &x, const block_q8_K &y) {
    return fp16_to_fp32(x.d) * y.d * static_cast<float>(simd::hsum_i32(q6_K_block_avx2(x, y)));
  }
};
constexpr vec_dot_fn vec_dot_q6_K_avx2 = simd::k_vec_dot_avx2<q6_K_avx2>;

// The 16 int16 scales of a Q6_K block.
NUMOE_TARGET_AVX2 inline __m256i q6_K_scales16(const block_q6_K &x) {
  return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i *>(x.scales)));
}

// 64 elements per register: the low nibbles of ql[0..63] are elements 0..63 of a half and the
// high nibbles 64..127, so the high bits come from [qh | qh >> 2] (and >> 4 for the upper).
// q[2h] / q[2h+1]: elements 0..63 / 64..127 of half h; sc[.]: their int16 scale words (128-bit
// lane k of q[2h] holds group 8h + k, of q[2h+1] group 8h + 4 + k), one permute of the
// block's 16 scale words w16 each.
NUMOE_TARGET_AVX512VNNI inline void q6_K_unpack_avx512(const block_q6_K &x, __m256i w16,
                                                       __m512i q[4], __m512i sc[4]) {
  const __m512i m4 = _mm512_set1_epi8(0x0F), m2 = _mm512_set1_epi8(3);
  const __m512i w = _mm512_castsi256_si512(w16);
  for (int h = 0; h < 2; ++h) {
    const __m512i l = _mm512_loadu_si512(x.ql + 64 * h);
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.qh + 32 * h));
    const __m512i hb = simd::concat(qh, _mm256_srli_epi16(qh, 2));
    q[2 * h] =
        _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_slli_epi16(_mm512_and_si512(hb, m2), 4));
    q[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                                   _mm512_and_si512(hb, _mm512_set1_epi8(0x30)));
    for (int u = 0; u < 2; ++u) {
      const int g = 8 * h + 4 * u;  // groups g .. g + 3 in 128-bit lanes 0..3
      sc[2 * h + u] = _mm512_permutexvar_epi16(
          _mm512_setr_epi64(g * 0x0001000100010001LL, g * 0x0001000100010001LL,
                            (g + 1) * 0x0001000100010001LL, (g + 1) * 0x0001000100010001LL,
                            (g + 2) * 0x0001000100010001LL, (g + 2) * 0x0001000100010001LL,
                            (g + 3) * 0x0001000100010001LL, (g + 3) * 0x0001000100010001LL),
          w);
    }
  }
}

// isum of one super-block as 16 int32 lanes, exact: the values' sum plus the offset term
// (bsums . -32 * scales) in lanes 0..7.
NUMOE_TARGET_AVX512VNNI inline __m512i q6_K_block_avx512(const block_q6_K &x, const block_q8_K &y) {
  const __m256i w16 = q6_K_scales16(x);
  __m512i q[4], sc[4];
  q6_K_unpack_avx512(x, w16, q, sc);
  return _mm512_dpwssd_epi32(
      simd::k_isum_avx512(q, sc, y.qs),
      _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(y.bsums))),
      _mm512_zextsi256_si512(_mm256_mullo_epi16(w16, _mm256_set1_epi16(-32))));
}

struct q6_K_avx512 {  // the kernel of simd::k_vec_dot_avx512
  using block = block_q6_K;
  NUMOE_K_STEP(NUMOE_TARGET_AVX512VNNI)
  float four(float s, const block_q6_K *x, const block_q8_K *y, int i) {
    __m512i is[4];
    for (int k = 0; k < 4; ++k) is[k] = q6_K_block_avx512(x[i + k], y[i + k]);
    return q6_K_combine4(s, x + i, y + i, simd::hsum4_i32(is));
  }
  NUMOE_K_STEP(NUMOE_TARGET_AVX512VNNI) float one(const block_q6_K &x, const block_q8_K &y) {
    return fp16_to_fp32(x.d) * y.d *
           static_cast<float>(_mm512_reduce_add_epi32(q6_K_block_avx512(x, y)));
  }
};
constexpr vec_dot_fn vec_dot_q6_K_avx512 = simd::k_vec_dot_avx512<q6_K_avx512>;

// N activations at once (as Q4_K's): values and scale words unpacked once per super-block,
// each activation's exact isum (the offset term as one madd of its bsums by -32 * scales)
// reduced across activations and combined per lane as the scalar s += d * dy * isum.
template <int N>
NUMOE_TARGET_AVX2 void q6_K_n_avx2(int n, const void *w, const block_q8_K *const *y,
                                   const float *dy, float *out) {
  const block_q6_K *x = static_cast<const block_q6_K *>(w);
  __m256 s = _mm256_setzero_ps();
  for (int i = 0; i < n / QK_K; ++i) {
    __m256i acc[8];
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const __m256i sc = q6_K_half_scales_avx2(x[i], h);
      const uint8_t *ql = x[i].ql + 64 * h;
      const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(ql));
      const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(ql + 32));
      const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x[i].qh + 32 * h));
      for (int k = 0; k < 4; ++k) {
        const __m256i q = q6_K_values_avx2(l0, l1, hb, k);
        const __m256i scv = q6_K_scale_words_avx2(sc, k);
        for (int j = 0; j < N; ++j) {
          const int8_t *a = y[j][i].qs + 128 * h + 32 * k;
          acc[j] = _mm256_add_epi32(
              acc[j], _mm256_madd_epi16(
                          _mm256_maddubs_epi16(q, _mm256_loadu_si256((const __m256i *)a)), scv));
          simd::opaque(acc[j]);
        }
      }
    }
    const __m256i neg = _mm256_mullo_epi16(
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i *>(x[i].scales))),
        _mm256_set1_epi16(-32));
    for (int j = 0; j < N; ++j)
      acc[j] = _mm256_add_epi32(
          acc[j], _mm256_madd_epi16(
                      _mm256_loadu_si256(reinterpret_cast<const __m256i *>(y[j][i].bsums)), neg));
    const __m256 d = _mm256_set1_ps(simd::fp16(x[i].d));
    s = _mm256_add_ps(s, _mm256_mul_ps(_mm256_mul_ps(d, _mm256_load_ps(dy + 8 * i)),
                                       _mm256_cvtepi32_ps(simd::hsum8_i32(acc))));
  }
  simd::store_n(s, N, out);
}

template <int N>
NUMOE_TARGET_AVX512VNNI void q6_K_n_avx512(int n, const void *w, const block_q8_K *const *y,
                                           const float *dy, float *out) {
  const block_q6_K *x = static_cast<const block_q6_K *>(w);
  __m256 s = _mm256_setzero_ps();
  for (int i = 0; i < n / QK_K; ++i) {
    __m512i q[4], sc[4], is[8];
    const __m256i w16 = q6_K_scales16(x[i]);
    q6_K_unpack_avx512(x[i], w16, q, sc);
    const __m256i neg = _mm256_mullo_epi16(w16, _mm256_set1_epi16(-32));
    for (int j = 0; j < 8; ++j)
      is[j] = j < N ? _mm512_dpwssd_epi32(simd::k_isum_avx512(q, sc, y[j][i].qs),
                                          _mm512_zextsi256_si512(_mm256_loadu_si256(
                                              reinterpret_cast<const __m256i *>(y[j][i].bsums))),
                                          _mm512_zextsi256_si512(neg))
                    : _mm512_setzero_si512();
    const __m256 d = _mm256_set1_ps(simd::fp16(x[i].d));
    s = _mm256_add_ps(s, _mm256_mul_ps(_mm256_mul_ps(d, _mm256_load_ps(dy + 8 * i)),
                                       _mm256_cvtepi32_ps(simd::hsum8_i32(is))));
  }
  simd::store_n(s, N, out);
}

NUMOE_VEC_DOT_N(q6_K, avx2, NUMOE_ROW_BODIES)
NUMOE_VEC_DOT_N(q6_K, avx512, NUMOE_ROW_BODIES)
#endif

}  // namespace

const TypeInfo &info_q6_K() {
  static const TypeInfo t = {
      Q6_K,
      "Q6_K",
      QK_K,
      sizeof(block_q6_K),
      Q8_K,
      dequantize_q6_K,
#ifdef NUMOE_X86
      {vec_dot_q6_K_scalar, vec_dot_q6_K_avx2, vec_dot_q6_K_avx512},
#else
      {vec_dot_q6_K_scalar, nullptr, nullptr},
#endif
      true,
      {nullptr, nullptr, nullptr},
#ifdef NUMOE_X86
      {vec_dot_n_loop<vec_dot_q6_K_scalar>, vec_dot_n_q6_K_avx2, vec_dot_n_q6_K_avx512},
#else
      {vec_dot_n_loop<vec_dot_q6_K_scalar>, nullptr, nullptr},
#endif
  };
  return t;
}

}  // namespace numoe::quant
