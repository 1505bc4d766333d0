// Q5_K: as Q4_K with a fifth bit per value in qh: element 32*s + l (sub-block s) takes bit s
// of qh[l]. x = d*sc*q - dmin*m; dot against Q8_K.
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
    const int8_t *a = y[i].qs;
    int32_t isum = 0;
    for (int j = 0; j < 4; ++j, q += 32, a += 64) {
      int32_t s0 = 0, s1 = 0;
      for (int l = 0; l < 32; ++l) {
        s0 += ((q[l] & 0xF) | (((qh[l] >> (2 * j)) & 1) << 4)) * a[l];
        s1 += ((q[l] >> 4) | (((qh[l] >> (2 * j + 1)) & 1) << 4)) * a[l + 32];
      }
      isum += sc[2 * j] * s0 + sc[2 * j + 1] * s1;
    }
    s += k4_block_sum(x[i].d, x[i].dmin, y[i].d, isum, k4_min_sum(m, y[i].bsums));
  }
  return s;
}

#ifdef NUMOE_X86
// As Q4_K's SIMD bodies (exact int32 isum / msum per super-block, four super-blocks combined
// in the scalar order by simd::k4_combine4), with the fifth bit OR-ed in from qh.

constexpr int16_t word_idx(int k) { return static_cast<int16_t>(((2 * k + 1) << 8) | (2 * k)); }

NUMOE_TARGET_AVX2 inline void q5_K_block_avx2(const block_q5_K &x, const block_q8_K &y,
                                              __m256i &isum, __m128i &msum) {
  const __m128i sm = simd::k4_scales_mins(x.scales);
  msum = simd::k4_min_terms(sm, y.bsums);
  const __m256i sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
  const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1), two = _mm256_set1_epi8(2);
  // 16-bit shifts are safe: each byte only ever reads its own bits 0..7
  __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.qh));
  __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
  for (int j = 0; j < 4; ++j) {
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.qs + 32 * j));
    const __m256i lo = _mm256_or_si256(_mm256_and_si256(bits, m4),
                                       _mm256_slli_epi16(_mm256_and_si256(hb, one), 4));
    const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits, 4), m4),
                                       _mm256_slli_epi16(_mm256_and_si256(hb, two), 3));
    hb = _mm256_srli_epi16(hb, 2);
    const __m256i p0 = _mm256_maddubs_epi16(
        lo, _mm256_loadu_si256(reinterpret_cast<const __m256i *>(y.qs + 64 * j)));
    const __m256i p1 = _mm256_maddubs_epi16(
        hi, _mm256_loadu_si256(reinterpret_cast<const __m256i *>(y.qs + 64 * j + 32)));
    acc0 = _mm256_add_epi32(
        acc0, _mm256_madd_epi16(p0, _mm256_shuffle_epi8(sc, _mm256_set1_epi16(word_idx(2 * j)))));
    acc1 = _mm256_add_epi32(
        acc1,
        _mm256_madd_epi16(p1, _mm256_shuffle_epi8(sc, _mm256_set1_epi16(word_idx(2 * j + 1)))));
  }
  isum = _mm256_add_epi32(acc0, acc1);
}

NUMOE_TARGET_AVX2 float vec_dot_q5_K_avx2(int n, const void *w, const void *act) {
  const block_q5_K *x = static_cast<const block_q5_K *>(w);
  const block_q8_K *y = static_cast<const block_q8_K *>(act);
  const int nb = n / QK_K;
  float s = 0.f;
  int i = 0;
  for (; i + 4 <= nb; i += 4) {
    __m256i is[4];
    __m128i ms[4];
    for (int k = 0; k < 4; ++k) q5_K_block_avx2(x[i + k], y[i + k], is[k], ms[k]);
    s = simd::k4_combine4(s, reinterpret_cast<const uint8_t *>(x + i), sizeof(block_q5_K), y + i,
                          simd::hsum4_i32(is[0], is[1], is[2], is[3]),
                          simd::hsum4_i32(ms[0], ms[1], ms[2], ms[3]));
  }
  for (; i < nb; ++i) {
    __m256i is;
    __m128i ms;
    q5_K_block_avx2(x[i], y[i], is, ms);
    s += k4_block_sum(x[i].d, x[i].dmin, y[i].d, simd::hsum_i32(is), simd::hsum_i32(ms));
  }
  return s;
}

// As Q4_K's AVX-512 body; the high bits come from [qh | qh >> 1], shifted 2 per sub-block pair.
// q[k] holds sub-blocks 2k, 2k+1 (matching a 64-byte q8 load), sc[k] their int16 scale words.
NUMOE_TARGET_AVX512VNNI inline void q5_K_unpack_avx512(const block_q5_K &x, __m128i sm,
                                                       __m512i q[4], __m512i sc[4]) {
  const __m512i s16 = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(sm));
  const __m512i m4 = _mm512_set1_epi8(0x0F), one = _mm512_set1_epi8(1);
  const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.qh));
  __m512i hb = simd::concat(qh, _mm256_srli_epi16(qh, 1));
  for (int c = 0; c < 2; ++c) {
    const __m512i bits = _mm512_loadu_si512(x.qs + 64 * c);
    const __m512i lo = _mm512_and_si512(bits, m4);
    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(bits, 4), m4);
    q[2 * c] = _mm512_or_si512(_mm512_shuffle_i64x2(lo, hi, 0x44),  // sub-blocks 4c, 4c+1
                               _mm512_slli_epi16(_mm512_and_si512(hb, one), 4));
    hb = _mm512_srli_epi16(hb, 2);
    q[2 * c + 1] = _mm512_or_si512(_mm512_shuffle_i64x2(lo, hi, 0xEE),  // 4c+2, 4c+3
                                   _mm512_slli_epi16(_mm512_and_si512(hb, one), 4));
    hb = _mm512_srli_epi16(hb, 2);
    for (int h = 0; h < 2; ++h)
      sc[2 * c + h] =
          _mm512_shuffle_epi8(s16, simd::concat(_mm256_set1_epi16(word_idx(4 * c + 2 * h)),
                                                _mm256_set1_epi16(word_idx(4 * c + 2 * h + 1))));
  }
}

// sum_j sc[j] * (q . a over sub-block j) as 16 int32 lanes.
NUMOE_TARGET_AVX512VNNI inline __m512i q5_K_isum_avx512(const __m512i q[4], const __m512i sc[4],
                                                        const int8_t *a) {
  __m512i acc0 = _mm512_dpwssd_epi32(_mm512_setzero_si512(),
                                     _mm512_maddubs_epi16(q[0], _mm512_loadu_si512(a)), sc[0]);
  __m512i acc1 = _mm512_dpwssd_epi32(_mm512_setzero_si512(),
                                     _mm512_maddubs_epi16(q[1], _mm512_loadu_si512(a + 64)), sc[1]);
  acc0 = _mm512_dpwssd_epi32(acc0, _mm512_maddubs_epi16(q[2], _mm512_loadu_si512(a + 128)), sc[2]);
  acc1 = _mm512_dpwssd_epi32(acc1, _mm512_maddubs_epi16(q[3], _mm512_loadu_si512(a + 192)), sc[3]);
  return _mm512_add_epi32(acc0, acc1);
}

NUMOE_TARGET_AVX512VNNI inline void q5_K_block_avx512(const block_q5_K &x, const block_q8_K &y,
                                                      __m256i &isum, __m128i &msum) {
  const __m128i sm = simd::k4_scales_mins(x.scales);
  msum = simd::k4_min_terms(sm, y.bsums);
  __m512i q[4], sc[4];
  q5_K_unpack_avx512(x, sm, q, sc);
  const __m512i acc = q5_K_isum_avx512(q, sc, y.qs);
  isum = _mm256_add_epi32(_mm512_castsi512_si256(acc), _mm512_extracti64x4_epi64(acc, 1));
}

NUMOE_TARGET_AVX512VNNI float vec_dot_q5_K_avx512(int n, const void *w, const void *act) {
  const block_q5_K *x = static_cast<const block_q5_K *>(w);
  const block_q8_K *y = static_cast<const block_q8_K *>(act);
  const int nb = n / QK_K;
  float s = 0.f;
  int i = 0;
  for (; i + 4 <= nb; i += 4) {
    __m256i is[4];
    __m128i ms[4];
    for (int k = 0; k < 4; ++k) q5_K_block_avx512(x[i + k], y[i + k], is[k], ms[k]);
    s = simd::k4_combine4(s, reinterpret_cast<const uint8_t *>(x + i), sizeof(block_q5_K), y + i,
                          simd::hsum4_i32(is[0], is[1], is[2], is[3]),
                          simd::hsum4_i32(ms[0], ms[1], ms[2], ms[3]));
  }
  for (; i < nb; ++i) {
    __m256i is;
    __m128i ms;
    q5_K_block_avx512(x[i], y[i], is, ms);
    s += k4_block_sum(x[i].d, x[i].dmin, y[i].d, simd::hsum_i32(is), simd::hsum_i32(ms));
  }
  return s;
}

// N activations at once, as Q4_K's multi bodies with the fifth bit OR-ed in.
template <int N>
NUMOE_TARGET_AVX2 void q5_K_n_avx2(int n, const void *w, const block_q8_K *const *y,
                                   const float *dy, float *out) {
  const block_q5_K *x = static_cast<const block_q5_K *>(w);
  const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1), two = _mm256_set1_epi8(2);
  __m256 s = _mm256_setzero_ps();
  for (int i = 0; i < n / QK_K; ++i) {
    const __m128i sm = simd::k4_scales_mins(x[i].scales);
    const __m256i sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
    __m256i acc[8], ms[8];
    for (int j = 0; j < 8; ++j) acc[j] = ms[j] = _mm256_setzero_si256();
    __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x[i].qh));
    for (int c = 0; c < 4; ++c) {
      const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x[i].qs + 32 * c));
      const __m256i lo = _mm256_or_si256(_mm256_and_si256(bits, m4),
                                         _mm256_slli_epi16(_mm256_and_si256(hb, one), 4));
      const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits, 4), m4),
                                         _mm256_slli_epi16(_mm256_and_si256(hb, two), 3));
      hb = _mm256_srli_epi16(hb, 2);
      const __m256i s0 = _mm256_shuffle_epi8(sc, _mm256_set1_epi16(word_idx(2 * c)));
      const __m256i s1 = _mm256_shuffle_epi8(sc, _mm256_set1_epi16(word_idx(2 * c + 1)));
      for (int j = 0; j < N; ++j) {
        const int8_t *a = y[j][i].qs + 64 * c;
        const __m256i p0 = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)a));
        const __m256i p1 = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(a + 32)));
        acc[j] = _mm256_add_epi32(
            acc[j], _mm256_add_epi32(_mm256_madd_epi16(p0, s0), _mm256_madd_epi16(p1, s1)));
        simd::opaque(acc[j]);
      }
    }
    const __m256i m16 = simd::k4_min_pairs(sm);
    for (int j = 0; j < N; ++j)
      ms[j] = _mm256_madd_epi16(
          _mm256_loadu_si256(reinterpret_cast<const __m256i *>(y[j][i].bsums)), m16);
    s = simd::k4_combine8(s, x[i].d, x[i].dmin, _mm256_load_ps(dy + 8 * i), simd::hsum8_i32(acc),
                          simd::hsum8_i32(ms));
  }
  simd::store_n(s, N, out);
}

template <int N>
NUMOE_TARGET_AVX512VNNI void q5_K_n_avx512(int n, const void *w, const block_q8_K *const *y,
                                           const float *dy, float *out) {
  const block_q5_K *x = static_cast<const block_q5_K *>(w);
  __m256 s = _mm256_setzero_ps();
  for (int i = 0; i < n / QK_K; ++i) {
    const __m128i sm = simd::k4_scales_mins(x[i].scales);
    const __m256i m16 = simd::k4_min_pairs(sm);
    __m512i q[4], sc[4], is[8];
    __m256i ms[8];
    q5_K_unpack_avx512(x[i], sm, q, sc);
    for (int j = 0; j < 8; ++j) {
      is[j] = j < N ? q5_K_isum_avx512(q, sc, y[j][i].qs) : _mm512_setzero_si512();
      ms[j] = j < N ? _mm256_madd_epi16(
                          _mm256_loadu_si256(reinterpret_cast<const __m256i *>(y[j][i].bsums)), m16)
                    : _mm256_setzero_si256();
    }
    s = simd::k4_combine8(s, x[i].d, x[i].dmin, _mm256_load_ps(dy + 8 * i), simd::hsum8_i32(is),
                          simd::hsum8_i32(ms));
  }
  simd::store_n(s, N, out);
}

void vec_dot_n_q5_K_avx2(int n, const void *w, size_t w_stride, int n_rows, const void *const *act,
                         int n_act, float *out, size_t out_stride) {
  static constexpr simd::body_n_fn bodies[] = NUMOE_ROW_BODIES(vec_dot_q5_K_avx2, q5_K_n_avx2);
  simd::run_n(bodies, 8, n, w, w_stride, n_rows, act, n_act, out, out_stride);
}

void vec_dot_n_q5_K_avx512(int n, const void *w, size_t w_stride, int n_rows,
                           const void *const *act, int n_act, float *out, size_t out_stride) {
  static constexpr simd::body_n_fn bodies[] = NUMOE_ROW_BODIES(vec_dot_q5_K_avx512, q5_K_n_avx512);
  simd::run_n(bodies, 8, n, w, w_stride, n_rows, act, n_act, out, out_stride);
}
#endif

}  // namespace

const TypeInfo &info_q5_K() {
  static const TypeInfo t = {
      Q5_K,
      "Q5_K",
      QK_K,
      sizeof(block_q5_K),
      Q8_K,
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
