// Q4_K: super-blocks of 256 = 8 sub-blocks of 32 4-bit values, each with a 6-bit scale and
// a 6-bit min (x = d*sc*q - dmin*m); dot against Q8_K.
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
    const int8_t *a = y[i].qs;
    int32_t isum = 0;
    for (int j = 0; j < 4; ++j, q += 32, a += 64) {
      int32_t s0 = 0, s1 = 0;
      for (int l = 0; l < 32; ++l) {
        s0 += (q[l] & 0xF) * a[l];
        s1 += (q[l] >> 4) * a[l + 32];
      }
      isum += sc[2 * j] * s0 + sc[2 * j + 1] * s1;
    }
    s += k4_block_sum(x[i].d, x[i].dmin, y[i].d, isum, k4_min_sum(m, y[i].bsums));
  }
  return s;
}

#ifdef NUMOE_X86
// The SIMD bodies compute, per super-block, isum = sum_j sc[j] * (q . a over sub-block j)
// as int32 lanes and the min term msum as int32 lanes, both exact; four super-blocks are then
// reduced together and combined in the scalar order (simd::k4_combine4), so every ISA gives
// the scalar result bit for bit.

// int16 word k of a 128-bit lane, repeated (pshufb index).
constexpr int16_t word_idx(int k) { return static_cast<int16_t>(((2 * k + 1) << 8) | (2 * k)); }

NUMOE_TARGET_AVX2 inline void q4_K_block_avx2(const block_q4_K &x, const block_q8_K &y,
                                              __m256i &isum, __m128i &msum) {
  const __m128i sm = simd::k4_scales_mins(x.scales);
  msum = simd::k4_min_terms(sm, y.bsums);
  const __m256i sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
  for (int j = 0; j < 4; ++j) {
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.qs + 32 * j));
    const __m256i p0 =
        _mm256_maddubs_epi16(_mm256_and_si256(bits, m4),
                             _mm256_loadu_si256(reinterpret_cast<const __m256i *>(y.qs + 64 * j)));
    const __m256i p1 = _mm256_maddubs_epi16(
        _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4),
        _mm256_loadu_si256(reinterpret_cast<const __m256i *>(y.qs + 64 * j + 32)));
    acc0 = _mm256_add_epi32(
        acc0, _mm256_madd_epi16(p0, _mm256_shuffle_epi8(sc, _mm256_set1_epi16(word_idx(2 * j)))));
    acc1 = _mm256_add_epi32(
        acc1,
        _mm256_madd_epi16(p1, _mm256_shuffle_epi8(sc, _mm256_set1_epi16(word_idx(2 * j + 1)))));
  }
  isum = _mm256_add_epi32(acc0, acc1);
}

NUMOE_TARGET_AVX2 float vec_dot_q4_K_avx2(int n, const void *w, const void *act) {
  const block_q4_K *x = static_cast<const block_q4_K *>(w);
  const block_q8_K *y = static_cast<const block_q8_K *>(act);
  const int nb = n / QK_K;
  float s = 0.f;
  int i = 0;
  for (; i + 4 <= nb; i += 4) {
    __m256i is[4];
    __m128i ms[4];
    for (int k = 0; k < 4; ++k) q4_K_block_avx2(x[i + k], y[i + k], is[k], ms[k]);
    s = simd::k4_combine4(s, reinterpret_cast<const uint8_t *>(x + i), sizeof(block_q4_K), y + i,
                          simd::hsum4_i32(is[0], is[1], is[2], is[3]),
                          simd::hsum4_i32(ms[0], ms[1], ms[2], ms[3]));
  }
  for (; i < nb; ++i) {
    __m256i is;
    __m128i ms;
    q4_K_block_avx2(x[i], y[i], is, ms);
    s += k4_block_sum(x[i].d, x[i].dmin, y[i].d, simd::hsum_i32(is), simd::hsum_i32(ms));
  }
  return s;
}

// 64 elements per step: one 512-bit load of qs gives two 32-byte chunks; regroup the nibbles
// so each register holds two consecutive sub-blocks, matching a contiguous 64-byte q8 load.
NUMOE_TARGET_AVX512VNNI inline void q4_K_block_avx512(const block_q4_K &x, const block_q8_K &y,
                                                      __m256i &isum, __m128i &msum) {
  const __m128i sm = simd::k4_scales_mins(x.scales);
  msum = simd::k4_min_terms(sm, y.bsums);
  const __m512i sc = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(sm));
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
  for (int c = 0; c < 2; ++c) {
    const __m512i bits = _mm512_loadu_si512(x.qs + 64 * c);
    const __m512i lo = _mm512_and_si512(bits, m4);
    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(bits, 4), m4);
    const __m512i qa = _mm512_shuffle_i64x2(lo, hi, 0x44);  // sub-blocks 4c, 4c+1
    const __m512i qb = _mm512_shuffle_i64x2(lo, hi, 0xEE);  // sub-blocks 4c+2, 4c+3
    // int16 scales: 16 lanes of sub-block 2p, then 16 of 2p+1
    const __m512i ia =
        simd::concat(_mm256_set1_epi16(word_idx(4 * c)), _mm256_set1_epi16(word_idx(4 * c + 1)));
    const __m512i ib = simd::concat(_mm256_set1_epi16(word_idx(4 * c + 2)),
                                    _mm256_set1_epi16(word_idx(4 * c + 3)));
    acc0 = _mm512_dpwssd_epi32(acc0, _mm512_maddubs_epi16(qa, _mm512_loadu_si512(y.qs + 128 * c)),
                               _mm512_shuffle_epi8(sc, ia));
    acc1 =
        _mm512_dpwssd_epi32(acc1, _mm512_maddubs_epi16(qb, _mm512_loadu_si512(y.qs + 128 * c + 64)),
                            _mm512_shuffle_epi8(sc, ib));
  }
  const __m512i acc = _mm512_add_epi32(acc0, acc1);
  isum = _mm256_add_epi32(_mm512_castsi512_si256(acc), _mm512_extracti64x4_epi64(acc, 1));
}

NUMOE_TARGET_AVX512VNNI float vec_dot_q4_K_avx512(int n, const void *w, const void *act) {
  const block_q4_K *x = static_cast<const block_q4_K *>(w);
  const block_q8_K *y = static_cast<const block_q8_K *>(act);
  const int nb = n / QK_K;
  float s = 0.f;
  int i = 0;
  for (; i + 4 <= nb; i += 4) {
    __m256i is[4];
    __m128i ms[4];
    for (int k = 0; k < 4; ++k) q4_K_block_avx512(x[i + k], y[i + k], is[k], ms[k]);
    s = simd::k4_combine4(s, reinterpret_cast<const uint8_t *>(x + i), sizeof(block_q4_K), y + i,
                          simd::hsum4_i32(is[0], is[1], is[2], is[3]),
                          simd::hsum4_i32(ms[0], ms[1], ms[2], ms[3]));
  }
  for (; i < nb; ++i) {
    __m256i is;
    __m128i ms;
    q4_K_block_avx512(x[i], y[i], is, ms);
    s += k4_block_sum(x[i].d, x[i].dmin, y[i].d, simd::hsum_i32(is), simd::hsum_i32(ms));
  }
  return s;
}
#endif

}  // namespace

const TypeInfo &info_q4_K() {
  static const TypeInfo t = {
      Q4_K,
      "Q4_K",
      QK_K,
      sizeof(block_q4_K),
      Q8_K,
      dequantize_q4_K,
#ifdef NUMOE_X86
      {vec_dot_q4_K_scalar, vec_dot_q4_K_avx2, vec_dot_q4_K_avx512},
#else
      {vec_dot_q4_K_scalar, nullptr, nullptr},
#endif
      true,
      {nullptr, nullptr, nullptr},
      {vec_dot_n_loop<vec_dot_q4_K_scalar>, nullptr, nullptr},
  };
  return t;
}

}  // namespace numoe::quant
