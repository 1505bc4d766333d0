// Q4_K: super-blocks of 256 = 8 sub-blocks of 32 4-bit values, each with a 6-bit scale and
// a 6-bit min (x = d*sc*q - dmin*m); dot against Q8_K4 (Q8_K in the order of these nibbles).
//
// Layout: qs[32*j + l] holds element 64*j + l (low nibble) and 64*j + 32 + l (high nibble).
#include "quant.hpp"
#include "simd.hpp"

namespace numoe::quant {
namespace {

void dequantize_q4_K(const void *src, float *dst, int64_t n) {
  const block_q4_K *b = static_cast<const block_q4_K *>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
    uint8_t sc[8], m[8];
    unpack_scales_mins_k4(b[i].scales, sc, m);
    const uint8_t *q = b[i].qs;
    for (int j = 0; j < 4; ++j, q += 32, dst += 64) {
      const float d1 = d * sc[2 * j], m1 = dmin * m[2 * j];
      const float d2 = d * sc[2 * j + 1], m2 = dmin * m[2 * j + 1];
      for (int l = 0; l < 32; ++l) dst[l] = d1 * static_cast<float>(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) dst[l + 32] = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

float vec_dot_q4_K_scalar(int n, const void *w, const void *act) {
  const block_q4_K *x = static_cast<const block_q4_K *>(w);
  const block_q8_K *y = static_cast<const block_q8_K *>(act);
  float s = 0.f;
  for (int i = 0; i < n / QK_K; ++i) {
    uint8_t sc[8], m[8];
    unpack_scales_mins_k4(x[i].scales, sc, m);
    const uint8_t *q = x[i].qs;
    int32_t isum = 0;
    for (int j = 0; j < 4; ++j, q += 32) {
      // sub-blocks 2j, 2j + 1 of the activation (Q8_K4 order)
      const int8_t *a0 = y[i].qs + 32 * k4_pos(2 * j), *a1 = y[i].qs + 32 * k4_pos(2 * j + 1);
      int32_t s0 = 0, s1 = 0;
      for (int l = 0; l < 32; ++l) {
        s0 += (q[l] & 0xF) * a0[l];
        s1 += (q[l] >> 4) * a1[l];
      }
      isum += sc[2 * j] * s0 + sc[2 * j + 1] * s1;
    }
    s += k4_block_sum(x[i].d, x[i].dmin, y[i].d, isum, k4_min_sum(m, y[i]));
  }
  return s;
}

#ifdef NUMOE_X86
// The SIMD bodies are simd::k4_*'s (exact int32 isum / msum per super-block, combined in the
// scalar order, so every ISA gives the scalar result bit for bit) with this unpacking.

// Sub-blocks 2c, 2c + 1: the low and the high nibbles of qs[32c .. 32c + 31].
struct q4_K_avx2 {
  using block = block_q4_K;
  const uint8_t *qs;
  NUMOE_TARGET_AVX2 explicit q4_K_avx2(const block_q4_K &x) : qs(x.qs) {}
  NUMOE_TARGET_AVX2 void next(int c, __m256i &lo, __m256i &hi) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(qs + 32 * c));
    lo = _mm256_and_si256(bits, m4);
    hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
  }
};

// 128 elements per 512-bit load of qs: its low nibbles are sub-blocks 4c, 4c + 2 and its
// high nibbles 4c + 1, 4c + 3, as the Q8_K4 activation at 128c and 128c + 64 holds them.
struct q4_K_avx512 {
  using block = block_q4_K;
  NUMOE_TARGET_AVX512VNNI static void unpack(const block_q4_K &x, __m256i w16, __m512i q[4],
                                             __m512i sc[4]) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    for (int c = 0; c < 2; ++c) {
      const __m512i bits = _mm512_loadu_si512(x.qs + 64 * c);
      q[2 * c] = _mm512_and_si512(bits, m4);
      q[2 * c + 1] = _mm512_and_si512(_mm512_srli_epi16(bits, 4), m4);
    }
    simd::k4_scale_words(w16, sc);
  }
};

constexpr vec_dot_fn vec_dot_q4_K_avx2 = simd::k_vec_dot_avx2<simd::k4_avx2<q4_K_avx2>>;
constexpr vec_dot_fn vec_dot_q4_K_avx512 = simd::k_vec_dot_avx512<simd::k4_avx512<q4_K_avx512>>;
template <int N>
constexpr simd::q8_K_row_fn q4_K_n_avx2 = simd::k4_n_avx2<q4_K_avx2, N>;
template <int N>
constexpr simd::q8_K_row_fn q4_K_n_avx512 = simd::k4_n_avx512<q4_K_avx512, N>;

NUMOE_VEC_DOT_N(q4_K, avx2, NUMOE_ROW_BODIES)
NUMOE_VEC_DOT_N(q4_K, avx512, NUMOE_ROW_BODIES)
#endif

}  // namespace

const TypeInfo &info_q4_K() {
  static const TypeInfo t = {
      Q4_K,
      "Q4_K",
      QK_K,
      sizeof(block_q4_K),
      Q8_K4,
      dequantize_q4_K,
#ifdef NUMOE_X86
      {vec_dot_q4_K_scalar, vec_dot_q4_K_avx2, vec_dot_q4_K_avx512},
#else
      {vec_dot_q4_K_scalar, nullptr, nullptr},
#endif
      true,
      {nullptr, nullptr, nullptr},
#ifdef NUMOE_X86
      {vec_dot_n_loop<vec_dot_q4_K_scalar>, vec_dot_n_q4_K_avx2, vec_dot_n_q4_K_avx512},
#else
      {vec_dot_n_loop<vec_dot_q4_K_scalar>, nullptr, nullptr},
#endif
  };
  return t;
}

}  // namespace numoe::quant
