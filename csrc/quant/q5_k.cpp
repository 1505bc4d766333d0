// Q5_K: as Q4_K with a fifth bit per value in qh: element 32*s + l (sub-block s) takes bit s
// of qh[l]. x = d*sc*q - dmin*m; dot against Q8_K4 (as Q4_K).
#include "quant.hpp"
#include "simd.hpp"

namespace numoe::quant {
namespace {

void dequantize_q5_K(const void *src, float *dst, int64_t n) {
  const block_q5_K *b = static_cast<const block_q5_K *>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
    uint8_t sc[8], m[8];
    unpack_scales_mins_k4(b[i].scales, sc, m);
    const uint8_t *q = b[i].qs, *qh = b[i].qh;
    for (int j = 0; j < 4; ++j, q += 32, dst += 64) {
      const float d1 = d * sc[2 * j], m1 = dmin * m[2 * j];
      const float d2 = d * sc[2 * j + 1], m2 = dmin * m[2 * j + 1];
      for (int l = 0; l < 32; ++l) {
        const int h1 = (qh[l] >> (2 * j)) & 1, h2 = (qh[l] >> (2 * j + 1)) & 1;
        dst[l] = d1 * static_cast<float>((q[l] & 0xF) | (h1 << 4)) - m1;
        dst[l + 32] = d2 * static_cast<float>((q[l] >> 4) | (h2 << 4)) - m2;
      }
    }
  }
}

float vec_dot_q5_K_scalar(int n, const void *w, const void *act) {
  const block_q5_K *x = static_cast<const block_q5_K *>(w);
  const block_q8_K *y = static_cast<const block_q8_K *>(act);
  float s = 0.f;
  for (int i = 0; i < n / QK_K; ++i) {
    uint8_t sc[8], m[8];
    unpack_scales_mins_k4(x[i].scales, sc, m);
    const uint8_t *q = x[i].qs, *qh = x[i].qh;
    int32_t isum = 0;
    for (int j = 0; j < 4; ++j, q += 32) {
      // sub-blocks 2j, 2j + 1 of the activation (Q8_K4 order)
      const int8_t *a0 = y[i].qs + 32 * k4_pos(2 * j), *a1 = y[i].qs + 32 * k4_pos(2 * j + 1);
      int32_t s0 = 0, s1 = 0;
      for (int l = 0; l < 32; ++l) {
        s0 += ((q[l] & 0xF) | (((qh[l] >> (2 * j)) & 1) << 4)) * a0[l];
        s1 += ((q[l] >> 4) | (((qh[l] >> (2 * j + 1)) & 1) << 4)) * a1[l];
      }
      isum += sc[2 * j] * s0 + sc[2 * j + 1] * s1;
    }
    s += k4_block_sum(x[i].d, x[i].dmin, y[i].d, isum, k4_min_sum(m, y[i]));
  }
  return s;
}

#ifdef NUMOE_X86
// As Q4_K's SIMD bodies (simd::k4_*), with the fifth bit OR-ed in from qh.

// Sub-blocks 2c, 2c + 1: Q4_K's nibbles with bits 2c, 2c + 1 of qh (consumed 2 per step).
struct q5_K_avx2 {
  using block = block_q5_K;
  const uint8_t *qs;
  __m256i hb;
  NUMOE_TARGET_AVX2 explicit q5_K_avx2(const block_q5_K &x)
      : qs(x.qs), hb(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.qh))) {}
  NUMOE_TARGET_AVX2 void next(int c, __m256i &lo, __m256i &hi) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1), two = _mm256_set1_epi8(2);
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(qs + 32 * c));
    // 16-bit shifts are safe: each byte only ever reads its own bits 0..7
    lo = _mm256_or_si256(_mm256_and_si256(bits, m4),
                         _mm256_slli_epi16(_mm256_and_si256(hb, one), 4));
    hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits, 4), m4),
                         _mm256_slli_epi16(_mm256_and_si256(hb, two), 3));
    hb = _mm256_srli_epi16(hb, 2);
  }
};

// As Q4_K's AVX-512 unpack (q[2c]: sub-blocks 4c, 4c + 2; q[2c + 1]: 4c + 1, 4c + 3); the
// fifth bits come from [qh | qh >> 2]: bits 0 and 1 of each byte, then 4 and 5.
struct q5_K_avx512 {
  using block = block_q5_K;
  NUMOE_TARGET_AVX512VNNI static void unpack(const block_q5_K &x, __m256i w16, __m512i q[4],
                                             __m512i sc[4]) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), one = _mm512_set1_epi8(1), two = _mm512_set1_epi8(2);
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.qh));
    // 16-bit shifts are safe: each byte only ever reads its own bits
    __m512i hb = simd::concat(qh, _mm256_srli_epi16(qh, 2));
    for (int c = 0; c < 2; ++c) {
      const __m512i bits = _mm512_loadu_si512(x.qs + 64 * c);
      q[2 * c] = _mm512_or_si512(_mm512_and_si512(bits, m4),
                                 _mm512_slli_epi16(_mm512_and_si512(hb, one), 4));
      q[2 * c + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(bits, 4), m4),
                                     _mm512_slli_epi16(_mm512_and_si512(hb, two), 3));
      hb = _mm512_srli_epi16(hb, 4);
    }
    simd::k4_scale_words(w16, sc);
  }
};

constexpr vec_dot_fn vec_dot_q5_K_avx2 = simd::k_vec_dot_avx2<simd::k4_avx2<q5_K_avx2>>;
constexpr vec_dot_fn vec_dot_q5_K_avx512 = simd::k_vec_dot_avx512<simd::k4_avx512<q5_K_avx512>>;
template <int N>
constexpr simd::q8_K_row_fn q5_K_n_avx2 = simd::k4_n_avx2<q5_K_avx2, N>;
template <int N>
constexpr simd::q8_K_row_fn q5_K_n_avx512 = simd::k4_n_avx512<q5_K_avx512, N>;

NUMOE_VEC_DOT_N(q5_K, avx2, NUMOE_ROW_BODIES)
NUMOE_VEC_DOT_N(q5_K, avx512, NUMOE_ROW_BODIES)
#endif

}  // namespace

const TypeInfo &info_q5_K() {
  static const TypeInfo t = {
      Q5_K,
      "Q5_K",
      QK_K,
      sizeof(block_q5_K),
      Q8_K4,
      dequantize_q5_K,
#ifdef NUMOE_X86
      {vec_dot_q5_K_scalar, vec_dot_q5_K_avx2, vec_dot_q5_K_avx512},
#else
      {vec_dot_q5_K_scalar, nullptr, nullptr},
#endif
      true,
      {nullptr, nullptr, nullptr},
#ifdef NUMOE_X86
      {vec_dot_n_loop<vec_dot_q5_K_scalar>, vec_dot_n_q5_K_avx2, vec_dot_n_q5_K_avx512},
#else
      {vec_dot_n_loop<vec_dot_q5_K_scalar>, nullptr, nullptr},
#endif
  };
  return t;
}

}  // namespace numoe::quant
