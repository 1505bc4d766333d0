// Q2_K: super-blocks of 256 = 16 groups of 16 2-bit values q with a 4-bit scale sc and a
// 4-bit min m each: x = d*sc*q - dmin*m (layout in k_lowbit.hpp); dot against Q8_K.
//
// Per super-block: isum = sum_g sc[g] * (q . a over group g), msum = sum_g m[g] * bsums[g]
// (exact int32), combined as Q4_K's d*dy*isum - dmin*dy*msum (k4_block_sum) in the scalar
// order by every body, so all ISAs give the same bits.
#include "k_lowbit.hpp"
#include "quant.hpp"
#include "simd.hpp"

namespace numoe::quant {
namespace {

// Value e (0..255) of a Q2_K block: bits 2k..2k+1 of qs[32h + l] for e = 128h + 32k + l.
inline int q2(const uint8_t *qs, int e) {
  return (qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
}

void dequantize_q2_K(const void *src, float *dst, int64_t n) {
  const block_q2_K *b = static_cast<const block_q2_K *>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
    for (int g = 0; g < 16; ++g, dst += 16) {
      const float dl = d * static_cast<float>(b[i].scales[g] & 0xF);
      const float ml = dmin * static_cast<float>(b[i].scales[g] >> 4);
      for (int l = 0; l < 16; ++l) dst[l] = dl * static_cast<float>(q2(b[i].qs, 16 * g + l)) - ml;
    }
  }
}

float vec_dot_q2_K_scalar(int n, const void *w, const void *act) {
  const block_q2_K *x = static_cast<const block_q2_K *>(w);
  const block_q8_K *y = static_cast<const block_q8_K *>(act);
  float s = 0.f;
  for (int i = 0; i < n / QK_K; ++i) {
    int32_t isum = 0, msum = 0;
    for (int g = 0; g < 16; ++g) {
      int32_t sg = 0;
      for (int e = 16 * g; e < 16 * g + 16; ++e) sg += q2(x[i].qs, e) * y[i].qs[e];
      isum += (x[i].scales[g] & 0xF) * sg;
      msum += (x[i].scales[g] >> 4) * y[i].bsums[g];
    }
    s += k4_block_sum(x[i].d, x[i].dmin, y[i].d, isum, msum);
  }
  return s;
}

#ifdef NUMOE_X86
// The 16 scale nibbles (sc) and min nibbles (m) of a block as bytes.
NUMOE_TARGET_AVX2 inline void q2_K_scales(const block_q2_K &x, __m128i &sc, __m128i &m) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i *>(x.scales));
  const __m128i m4 = _mm_set1_epi8(0x0F);
  sc = _mm_and_si128(raw, m4);
  m = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
}

// msum as 8 int32 lanes: the 16 min words against the 16 group sums of y.
NUMOE_TARGET_AVX2 inline __m256i q2_K_min_terms(__m128i m, const block_q8_K &y) {
  return _mm256_madd_epi16(_mm256_cvtepu8_epi16(m),
                           _mm256_loadu_si256(reinterpret_cast<const __m256i *>(y.bsums)));
}

// AVX2: one 32-byte load of qs per half h; shifted by 2k and masked it is elements
// 128h + 32k .. + 31, groups 8h + 2k (low lane) and 8h + 2k + 1 (high lane), in Q8_K order.
// u.half(h) then u.values(k) / u.words(k) for k = 0..3.
struct q2_K_unpack_avx2 {
  const block_q2_K &x;
  __m128i sc;
  __m256i bits, sc8;
  NUMOE_TARGET_AVX2 q2_K_unpack_avx2(const block_q2_K &b, __m128i sc_bytes) : x(b), sc(sc_bytes) {}
  NUMOE_TARGET_AVX2 void half(int h) {
    bits = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.qs + 32 * h));
    sc8 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(h ? _mm_srli_si128(sc, 8) : sc));
  }
  NUMOE_TARGET_AVX2 __m256i values(int k) const {
    return _mm256_and_si256(_mm256_srli_epi16(bits, 2 * k), _mm256_set1_epi8(3));
  }
  NUMOE_TARGET_AVX2 __m256i words(int k) const { return simd::pair_scale_words(sc8, k); }
};

NUMOE_TARGET_AVX2 inline void q2_K_block_avx2(const block_q2_K &x, const block_q8_K &y,
                                              __m256i &isum, __m256i &msum) {
  __m128i sc, m;
  q2_K_scales(x, sc, m);
  msum = q2_K_min_terms(m, y);
  q2_K_unpack_avx2 u(x, sc);
  isum = simd::k_lowbit_isum_avx2(u, y);
}

struct q2_K_avx2 {  // the kernel of simd::k_vec_dot_avx2
  using block = block_q2_K;
  NUMOE_K_STEP(NUMOE_TARGET_AVX2)
  float four(float s, const block_q2_K *x, const block_q8_K *y, int i) {
    __m256i is[4], ms[4];
    for (int k = 0; k < 4; ++k) q2_K_block_avx2(x[i + k], y[i + k], is[k], ms[k]);
    return simd::k4_combine4(s, reinterpret_cast<const uint8_t *>(&x[i].d), sizeof(block_q2_K),
                             y + i, simd::hsum4_i32(is), simd::hsum4_i32(ms));
  }
  NUMOE_K_STEP(NUMOE_TARGET_AVX2) float one(const block_q2_K &x, const block_q8_K &y) {
    __m256i is, ms;
    q2_K_block_avx2(x, y, is, ms);
    return k4_block_sum(x.d, x.dmin, y.d, simd::hsum_i32(is), simd::hsum_i32(ms));
  }
};
constexpr vec_dot_fn vec_dot_q2_K_avx2 = simd::k_vec_dot_avx2<q2_K_avx2>;

// N activations at once: each super-block unpacked once, every activation's isum / msum
// formed as in q2_K_block_avx2, reduced across activations (lane j = activation j) and
// combined per lane in the scalar order (k4_combine8).
template <int N>
NUMOE_TARGET_AVX2 void q2_K_n_avx2(int n, const void *w, const block_q8_K *const *y,
                                   const float *dy, float *out) {
  const block_q2_K *x = static_cast<const block_q2_K *>(w);
  __m256 s = _mm256_setzero_ps();
  for (int i = 0; i < n / QK_K; ++i) {
    __m128i sc, m;
    q2_K_scales(x[i], sc, m);
    __m256i acc[8], ms[8];
    for (int j = 0; j < 8; ++j) acc[j] = ms[j] = _mm256_setzero_si256();
    q2_K_unpack_avx2 u(x[i], sc);
    simd::k_lowbit_isum_n_avx2<N>(u, y, i, acc);
    for (int j = 0; j < N; ++j) ms[j] = q2_K_min_terms(m, y[j][i]);
    s = simd::k4_combine8(s, x[i].d, x[i].dmin, _mm256_load_ps(dy + 8 * i), simd::hsum8_i32(acc),
                          simd::hsum8_i32(ms));
  }
  simd::store_n(s, N, out);
}

// AVX-512: 64 values per register in element order. Each half's 32 qs bytes go to both
// 256-bit lanes, shifted by 2k in the low lane and 2k + 2 in the high one (vpsrlvw), so
// q[r] holds elements 64r .. 64r + 63 and meets a plain 64-byte load of the activation; its
// 128-bit lanes are groups 4r .. 4r + 3 (simd::group_scale_words).
NUMOE_TARGET_AVX512VNNI inline void q2_K_unpack_avx512(const block_q2_K &x, __m128i sc,
                                                       __m512i q[4], __m512i sw[4]) {
  const __m512i m3 = _mm512_set1_epi8(3);
  for (int h = 0; h < 2; ++h) {
    const __m512i b = _mm512_broadcast_i64x4(
        _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.qs + 32 * h)));
    for (int k2 = 0; k2 < 2; ++k2) {
      const __m512i shift = simd::concat(_mm256_set1_epi16(static_cast<int16_t>(4 * k2)),
                                         _mm256_set1_epi16(static_cast<int16_t>(4 * k2 + 2)));
      q[2 * h + k2] = _mm512_and_si512(_mm512_srlv_epi16(b, shift), m3);
    }
  }
  simd::group_scale_words(_mm256_cvtepu8_epi16(sc), sw);
}

NUMOE_TARGET_AVX512VNNI inline void q2_K_block_avx512(const block_q2_K &x, const block_q8_K &y,
                                                      __m512i &isum, __m256i &msum) {
  __m128i sc, m;
  q2_K_scales(x, sc, m);
  msum = q2_K_min_terms(m, y);
  __m512i q[4], sw[4];
  q2_K_unpack_avx512(x, sc, q, sw);
  isum = simd::k_isum_avx512(q, sw, y.qs);
}

struct q2_K_avx512 {  // the kernel of simd::k_vec_dot_avx512
  using block = block_q2_K;
  NUMOE_K_STEP(NUMOE_TARGET_AVX512VNNI)
  float four(float s, const block_q2_K *x, const block_q8_K *y, int i) {
    __m512i v[8];  // the four isums, then the four msums
    for (int k = 0; k < 4; ++k) {
      __m256i ms;
      q2_K_block_avx512(x[i + k], y[i + k], v[k], ms);
      v[4 + k] = _mm512_zextsi256_si512(ms);
    }
    const __m256i r = simd::hsum8_i32(v);
    return simd::k4_combine4(s, reinterpret_cast<const uint8_t *>(&x[i].d), sizeof(block_q2_K),
                             y + i, _mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  }
  NUMOE_K_STEP(NUMOE_TARGET_AVX512VNNI) float one(const block_q2_K &x, const block_q8_K &y) {
    __m512i is;
    __m256i ms;
    q2_K_block_avx512(x, y, is, ms);
    return k4_block_sum(x.d, x.dmin, y.d, _mm512_reduce_add_epi32(is), simd::hsum_i32(ms));
  }
};
constexpr vec_dot_fn vec_dot_q2_K_avx512 = simd::k_vec_dot_avx512<q2_K_avx512>;

template <int N>
NUMOE_TARGET_AVX512VNNI void q2_K_n_avx512(int n, const void *w, const block_q8_K *const *y,
                                           const float *dy, float *out) {
  const block_q2_K *x = static_cast<const block_q2_K *>(w);
  __m256 s = _mm256_setzero_ps();
  for (int i = 0; i < n / QK_K; ++i) {
    __m128i sc, m;
    q2_K_scales(x[i], sc, m);
    __m512i q[4], sw[4], is[8];
    __m256i ms[8];
    q2_K_unpack_avx512(x[i], sc, q, sw);
    for (int j = 0; j < 8; ++j) {
      is[j] = j < N ? simd::k_isum_avx512(q, sw, y[j][i].qs) : _mm512_setzero_si512();
      ms[j] = j < N ? q2_K_min_terms(m, y[j][i]) : _mm256_setzero_si256();
    }
    s = simd::k4_combine8(s, x[i].d, x[i].dmin, _mm256_load_ps(dy + 8 * i), simd::hsum8_i32(is),
                          simd::hsum8_i32(ms));
  }
  simd::store_n(s, N, out);
}

NUMOE_VEC_DOT_N(q2_K, avx2, NUMOE_ROW_BODIES)
NUMOE_VEC_DOT_N(q2_K, avx512, NUMOE_ROW_BODIES)
#endif

}  // namespace

const TypeInfo &info_q2_K() {
  static const TypeInfo t = {
      Q2_K,
      "Q2_K",
      QK_K,
      sizeof(block_q2_K),
      Q8_K,
      dequantize_q2_K,
#ifdef NUMOE_X86
      {vec_dot_q2_K_scalar, vec_dot_q2_K_avx2, vec_dot_q2_K_avx512},
#else
      {vec_dot_q2_K_scalar, nullptr, nullptr},
#endif
      true,
      {nullptr, nullptr, nullptr},
#ifdef NUMOE_X86
      {vec_dot_n_loop<vec_dot_q2_K_scalar>, vec_dot_n_q2_K_avx2, vec_dot_n_q2_K_avx512},
#else
      {vec_dot_n_loop<vec_dot_q2_K_scalar>, nullptr, nullptr},
#endif
  };
  return t;
}

}  // namespace numoe::quant
