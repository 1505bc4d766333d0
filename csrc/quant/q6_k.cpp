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

NUMOE_TARGET_AVX2 float vec_dot_q6_K_avx2(int n, const void *w, const void *act) {
  const block_q6_K *x = static_cast<const block_q6_K *>(w);
  const block_q8_K *y = static_cast<const block_q8_K *>(act);
  const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3);
  float s = 0.f;
  for (int i = 0; i < n / QK_K; ++i) {
    const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i *>(x[i].scales));
    __m256i acc = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const uint8_t *ql = x[i].ql + 64 * h, *qh = x[i].qh + 32 * h;
      const int8_t *a = y[i].qs + 128 * h;
      const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(ql));
      const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(ql + 32));
      const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(qh));
      __m256i q[4];
      q[0] =
          _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(hb, m2), 4));
      q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                             _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m2), 4));
      q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                             _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m2), 4));
      q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                             _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m2), 4));
      for (int k = 0; k < 4; ++k) {
        // int16 scales: 8 lanes of group g, 8 of group g+1 (g = 8h + 2k)
        const long long g = 8 * h + 2 * k;
        const __m128i idx =
            _mm_set_epi64x((g + 1) * 0x0101010101010101LL, g * 0x0101010101010101LL);
        const __m256i scv = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, idx));
        const __m256i p = _mm256_maddubs_epi16(
            q[k], _mm256_loadu_si256(reinterpret_cast<const __m256i *>(a + 32 * k)));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, scv));
      }
    }
    acc = _mm256_sub_epi32(acc, offset_term(x[i].scales, y[i].bsums));
    s += fp16_to_fp32(x[i].d) * y[i].d * static_cast<float>(simd::hsum_i32(acc));
  }
  return s;
}

// 64 elements per register: the low nibbles of ql[0..63] are elements 0..63 of a half and the
// high nibbles 64..127, so the high bits come from [qh | qh >> 2] (and >> 4 for the upper).
NUMOE_TARGET_AVX512VNNI float vec_dot_q6_K_avx512(int n, const void *w, const void *act) {
  const block_q6_K *x = static_cast<const block_q6_K *>(w);
  const block_q8_K *y = static_cast<const block_q8_K *>(act);
  const __m512i m4 = _mm512_set1_epi8(0x0F), m2 = _mm512_set1_epi8(3);
  __m512i quad_idx[4];  // int16 lanes: 8 x group 4k, 8 x 4k+1, 8 x 4k+2, 8 x 4k+3
  for (int k = 0; k < 4; ++k) {
    const int16_t g = static_cast<int16_t>(4 * k);
    quad_idx[k] = simd::concat(_mm256_set_m128i(_mm_set1_epi16(g + 1), _mm_set1_epi16(g)),
                               _mm256_set_m128i(_mm_set1_epi16(g + 3), _mm_set1_epi16(g + 2)));
  }
  float s = 0.f;
  for (int i = 0; i < n / QK_K; ++i) {
    const __m512i sc16 = _mm512_castsi256_si512(
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i *>(x[i].scales))));
    __m512i acc = _mm512_setzero_si512();
    for (int h = 0; h < 2; ++h) {
      const __m512i l = _mm512_loadu_si512(x[i].ql + 64 * h);
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x[i].qh + 32 * h));
      const __m512i hb = simd::concat(qh, _mm256_srli_epi16(qh, 2));
      const __m512i lo =
          _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_slli_epi16(_mm512_and_si512(hb, m2), 4));
      const __m512i hi =
          _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                          _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(hb, 4), m2), 4));
      const int8_t *a = y[i].qs + 128 * h;
      const __m512i plo = _mm512_maddubs_epi16(lo, _mm512_loadu_si512(a));
      const __m512i phi = _mm512_maddubs_epi16(hi, _mm512_loadu_si512(a + 64));
      acc = _mm512_dpwssd_epi32(acc, plo, _mm512_permutexvar_epi16(quad_idx[2 * h], sc16));
      acc = _mm512_dpwssd_epi32(acc, phi, _mm512_permutexvar_epi16(quad_idx[2 * h + 1], sc16));
    }
    const int32_t isum =
        _mm512_reduce_add_epi32(acc) - simd::hsum_i32(offset_term(x[i].scales, y[i].bsums));
    s += fp16_to_fp32(x[i].d) * y[i].d * static_cast<float>(isum);
  }
  return s;
}
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
  };
  return t;
}

}  // namespace numoe::quant
