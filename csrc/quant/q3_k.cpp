// Q3_K: super-blocks of 256 = 16 groups of 16 3-bit values q (offset 4) with a signed 6-bit
// scale each: x = d*sc*(q - 4) (layout in k_lowbit.hpp); dot against Q8_K.
//
// The SIMD bodies use the unsigned values u = q in 0..7 (two bits from qs, the third from
// hmask) and subtract 4 * sum_g sc[g] * bsums[g] at the end, as Q6_K does with its offset
// 32: isum is exact in int32, combined as d * dy * isum in the scalar order by every body.
#include "k_lowbit.hpp"
#include "quant.hpp"
#include "simd.hpp"

namespace numoe::quant {
namespace {

// Unsigned value e (0..7) of a Q3_K block: bits 2k..2k+1 of qs[32h + l] and bit K of
// hmask[l] as bit 2, for e = 128h + 32k + l = 32K + l.
inline int q3(const block_q3_K &b, int e) {
  const int l = e % 32, K = e / 32;
  return ((b.qs[32 * (K / 4) + l] >> (2 * (K % 4))) & 3) | (((b.hmask[l] >> K) & 1) << 2);
}

void dequantize_q3_K(const void *src, float *dst, int64_t n) {
  const block_q3_K *b = static_cast<const block_q3_K *>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = fp16_to_fp32(b[i].d);
    int8_t sc[16];
    unpack_scales_q3_K(b[i].scales, sc);
    for (int g = 0; g < 16; ++g, dst += 16) {
      const float dl = d * static_cast<float>(sc[g]);
      for (int l = 0; l < 16; ++l) dst[l] = dl * static_cast<float>(q3(b[i], 16 * g + l) - 4);
    }
  }
}

float vec_dot_q3_K_scalar(int n, const void *w, const void *act) {
  const block_q3_K *x = static_cast<const block_q3_K *>(w);
  const block_q8_K *y = static_cast<const block_q8_K *>(act);
  float s = 0.f;
  for (int i = 0; i < n / QK_K; ++i) {
    int8_t sc[16];
    unpack_scales_q3_K(x[i].scales, sc);
    int32_t isum = 0;
    for (int g = 0; g < 16; ++g) {
      int32_t sg = 0;
      for (int e = 16 * g; e < 16 * g + 16; ++e) sg += (q3(x[i], e) - 4) * y[i].qs[e];
      isum += sc[g] * sg;
    }
    s += d_block_sum(x[i].d, y[i].d, isum);
  }
  return s;
}

#ifdef NUMOE_X86
// The 16 signed scales of a block as bytes (unpack_scales_q3_K in registers): the low
// nibbles of bytes 0..7 then their high nibbles, OR-ed with 2-bit fields of bytes 8..11
// (dword lane i takes them shifted right by 2i), minus 32. Reads only the 12 scale bytes.
NUMOE_TARGET_AVX2 inline __m128i q3_K_scales(const block_q3_K &x) {
  uint32_t hi;
  std::memcpy(&hi, x.scales + 8, 4);
  const __m128i lo8 = _mm_loadl_epi64(reinterpret_cast<const __m128i *>(x.scales));
  const __m128i m4 = _mm_set1_epi8(0x0F);
  const __m128i lo =
      _mm_unpacklo_epi64(_mm_and_si128(lo8, m4), _mm_and_si128(_mm_srli_epi16(lo8, 4), m4));
  const __m128i h = _mm_slli_epi32(
      _mm_and_si128(
          _mm_srlv_epi32(_mm_set1_epi32(static_cast<int>(hi)), _mm_setr_epi32(0, 2, 4, 6)),
          _mm_set1_epi8(3)),
      4);
  return _mm_sub_epi8(_mm_or_si128(lo, h), _mm_set1_epi8(32));
}

// 4 * sum_g sc[g] * bsums[g] as 8 int32 lanes (sc16: the 16 scale words).
NUMOE_TARGET_AVX2 inline __m256i q3_K_offset(__m256i sc16, const block_q8_K &y) {
  return _mm256_slli_epi32(
      _mm256_madd_epi16(sc16, _mm256_loadu_si256(reinterpret_cast<const __m256i *>(y.bsums))), 2);
}

// AVX2: per half h one 32-byte load of qs; chunk k (elements 32K .. 32K + 31, K = 4h + k,
// groups 2K and 2K + 1 in the low / high lane) is its bits 2k..2k+1 with bit K of the hmask
// bytes as bit 2. u.half(h) then u.values(k) / u.words(k), k = 0..3.
struct q3_K_unpack_avx2 {
  const block_q3_K &x;
  __m256i sc16, hm, bits, sc8;
  int h = 0;
  NUMOE_TARGET_AVX2 q3_K_unpack_avx2(const block_q3_K &b, __m256i scale_words)
      : x(b),
        sc16(scale_words),
        hm(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(b.hmask))) {}
  NUMOE_TARGET_AVX2 void half(int hh) {
    h = hh;
    bits = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.qs + 32 * h));
    sc8 = h ? _mm256_permute2x128_si256(sc16, sc16, 0x11)
            : _mm256_permute2x128_si256(sc16, sc16, 0x00);
  }
  NUMOE_TARGET_AVX2 __m256i values(int k) const {
    const int K = 4 * h + k;
    // bit K of each hmask byte to bit 2 (16-bit shifts: only bit 2 of each byte is kept)
    const __m256i hb = K < 2    ? _mm256_slli_epi16(hm, 2 - K)
                       : K == 2 ? hm
                                : _mm256_srli_epi16(hm, K - 2);
    return _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits, 2 * k), _mm256_set1_epi8(3)),
                           _mm256_and_si256(hb, _mm256_set1_epi8(4)));
  }
  NUMOE_TARGET_AVX2 __m256i words(int k) const { return simd::pair_scale_words(sc8, k); }
};

// isum of one super-block as 8 int32 lanes (offset term included), exact.
NUMOE_TARGET_AVX2 inline __m256i q3_K_block_avx2(const block_q3_K &x, const block_q8_K &y) {
  const __m256i sc16 = _mm256_cvtepi8_epi16(q3_K_scales(x));
  q3_K_unpack_avx2 u(x, sc16);
  return _mm256_sub_epi32(simd::k_lowbit_isum_avx2(u, y), q3_K_offset(sc16, y));
}

struct q3_K_avx2 {  // the kernel of simd::k_vec_dot_avx2
  using block = block_q3_K;
  NUMOE_K_STEP(NUMOE_TARGET_AVX2)
  float four(float s, const block_q3_K *x, const block_q8_K *y, int i) {
    __m256i is[4];
    for (int k = 0; k < 4; ++k) is[k] = q3_K_block_avx2(x[i + k], y[i + k]);
    return simd::d_combine4(s, reinterpret_cast<const uint8_t *>(&x[i].d), sizeof(block_q3_K),
                            y + i, simd::hsum4_i32(is));
  }
  NUMOE_K_STEP(NUMOE_TARGET_AVX2) float one(const block_q3_K &x, const block_q8_K &y) {
    return d_block_sum(x.d, y.d, simd::hsum_i32(q3_K_block_avx2(x, y)));
  }
};
constexpr vec_dot_fn vec_dot_q3_K_avx2 = simd::k_vec_dot_avx2<q3_K_avx2>;

// N activations at once (as Q2_K's): values and scale words unpacked once per super-block,
// each activation's exact isum reduced across activations and combined per lane as the
// scalar s += d * dy * isum.
template <int N>
NUMOE_TARGET_AVX2 void q3_K_n_avx2(int n, const void *w, const block_q8_K *const *y,
                                   const float *dy, float *out) {
  const block_q3_K *x = static_cast<const block_q3_K *>(w);
  __m256 s = _mm256_setzero_ps();
  for (int i = 0; i < n / QK_K; ++i) {
    const __m256i sc16 = _mm256_cvtepi8_epi16(q3_K_scales(x[i]));
    __m256i acc[8];
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_si256();
    q3_K_unpack_avx2 u(x[i], sc16);
    simd::k_lowbit_isum_n_avx2<N>(u, y, i, acc);
    for (int j = 0; j < N; ++j) acc[j] = _mm256_sub_epi32(acc[j], q3_K_offset(sc16, y[j][i]));
    s = simd::d_combine8(s, x[i].d, _mm256_load_ps(dy + 8 * i), simd::hsum8_i32(acc));
  }
  simd::store_n(s, N, out);
}

// AVX-512: as Q2_K's (q[r] = elements 64r .. 64r + 63, vpsrlvw on each half's qs bytes in
// both 256-bit lanes), the third bit from bit 2r (low lane) / 2r + 1 (high lane) of the
// hmask bytes, merged by one vpternlog (no mask registers).
NUMOE_TARGET_AVX512VNNI inline void q3_K_unpack_avx512(const block_q3_K &x, __m256i sc16,
                                                       __m512i q[4], __m512i sw[4]) {
  const __m512i m3 = _mm512_set1_epi8(3), seven = _mm512_set1_epi8(7);
  const __m512i hm =
      _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.hmask)));
  for (int h = 0; h < 2; ++h) {
    const __m512i b = _mm512_broadcast_i64x4(
        _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.qs + 32 * h)));
    for (int k2 = 0; k2 < 2; ++k2) {
      const int r = 2 * h + k2;
      const __m512i shift = simd::concat(_mm256_set1_epi16(static_cast<int16_t>(4 * k2)),
                                         _mm256_set1_epi16(static_cast<int16_t>(4 * k2 + 2)));
      // bit 2r (low lane) / 2r + 1 (high lane) of the hmask bytes to bit 2
      const __m512i hb =
          r == 0 ? _mm512_sllv_epi16(hm, simd::concat(_mm256_set1_epi16(2), _mm256_set1_epi16(1)))
                 : _mm512_srlv_epi16(
                       hm, simd::concat(_mm256_set1_epi16(static_cast<int16_t>(2 * r - 2)),
                                        _mm256_set1_epi16(static_cast<int16_t>(2 * r - 1))));
      // bits 0..1 from the shifted qs, 2..7 from hb (0xE4: (A & C) | (B & ~C)), then & 7
      q[r] = _mm512_and_si512(_mm512_ternarylogic_epi32(_mm512_srlv_epi16(b, shift), hb, m3, 0xE4),
                              seven);
    }
  }
  simd::group_scale_words(sc16, sw);
}

// The 16 scale words (sc - 32) of a block, AVX-512 (vpsrlvw): one pshufb puts byte j % 8
// (its low nibble for j < 8, high for j >= 8) in the low byte of word j and byte 8 + j % 4
// (field j / 4) in the high byte; two variable shifts line the nibble up at bits 0..3 and
// the field at 4..5. Reads the 16 bytes that end with the scales (qs's last 4 first).
NUMOE_TARGET_AVX512VNNI inline __m256i q3_K_scale_words_avx512(const block_q3_K &x) {
  const __m256i b =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i *>(x.scales - 4)));
  const __m256i w = _mm256_shuffle_epi8(
      b, _mm256_setr_epi8(4, 12, 5, 13, 6, 14, 7, 15, 8, 12, 9, 13, 10, 14, 11, 15, 4, 12, 5, 13, 6,
                          14, 7, 15, 8, 12, 9, 13, 10, 14, 11, 15));
  const __m256i nib =
      _mm256_srlv_epi16(w, _mm256_setr_epi16(0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4));
  const __m256i fld =
      _mm256_srlv_epi16(w, _mm256_setr_epi16(4, 4, 4, 4, 6, 6, 6, 6, 8, 8, 8, 8, 10, 10, 10, 10));
  // bits 0..3 from nib, 4.. from fld (0xE4: (A & C) | (B & ~C)); the 6 bits, minus 32
  const __m256i v = _mm256_ternarylogic_epi32(nib, fld, _mm256_set1_epi16(0x000F), 0xE4);
  return _mm256_sub_epi16(_mm256_and_si256(v, _mm256_set1_epi16(0x3F)), _mm256_set1_epi16(32));
}

// isum of one super-block as 16 int32 lanes, exact: the values' sum plus the offset term
// (bsums . -4 * scales) in lanes 0..7.
NUMOE_TARGET_AVX512VNNI inline __m512i q3_K_isum_avx512(const __m512i q[4], const __m512i sw[4],
                                                        __m256i neg4, const block_q8_K &y) {
  return _mm512_dpwssd_epi32(
      simd::k_isum_avx512(q, sw, y.qs),
      _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(y.bsums))),
      _mm512_zextsi256_si512(neg4));
}

NUMOE_TARGET_AVX512VNNI inline __m512i q3_K_block_avx512(const block_q3_K &x, const block_q8_K &y) {
  const __m256i sc16 = q3_K_scale_words_avx512(x);
  __m512i q[4], sw[4];
  q3_K_unpack_avx512(x, sc16, q, sw);
  return q3_K_isum_avx512(q, sw,
                          _mm256_slli_epi16(_mm256_sub_epi16(_mm256_setzero_si256(), sc16), 2), y);
}

struct q3_K_avx512 {  // the kernel of simd::k_vec_dot_avx512
  using block = block_q3_K;
  NUMOE_K_STEP(NUMOE_TARGET_AVX512VNNI)
  float four(float s, const block_q3_K *x, const block_q8_K *y, int i) {
    __m512i is[4];
    for (int k = 0; k < 4; ++k) is[k] = q3_K_block_avx512(x[i + k], y[i + k]);
    return simd::d_combine4(s, reinterpret_cast<const uint8_t *>(&x[i].d), sizeof(block_q3_K),
                            y + i, simd::hsum4_i32(is));
  }
  NUMOE_K_STEP(NUMOE_TARGET_AVX512VNNI) float one(const block_q3_K &x, const block_q8_K &y) {
    return d_block_sum(x.d, y.d, _mm512_reduce_add_epi32(q3_K_block_avx512(x, y)));
  }
};
constexpr vec_dot_fn vec_dot_q3_K_avx512 = simd::k_vec_dot_avx512<q3_K_avx512>;

template <int N>
NUMOE_TARGET_AVX512VNNI void q3_K_n_avx512(int n, const void *w, const block_q8_K *const *y,
                                           const float *dy, float *out) {
  const block_q3_K *x = static_cast<const block_q3_K *>(w);
  __m256 s = _mm256_setzero_ps();
  for (int i = 0; i < n / QK_K; ++i) {
    const __m256i sc16 = q3_K_scale_words_avx512(x[i]);
    const __m256i neg4 = _mm256_slli_epi16(_mm256_sub_epi16(_mm256_setzero_si256(), sc16), 2);
    __m512i q[4], sw[4], is[8];
    q3_K_unpack_avx512(x[i], sc16, q, sw);
    for (int j = 0; j < 8; ++j)
      is[j] = j < N ? q3_K_isum_avx512(q, sw, neg4, y[j][i]) : _mm512_setzero_si512();
    s = simd::d_combine8(s, x[i].d, _mm256_load_ps(dy + 8 * i), simd::hsum8_i32(is));
  }
  simd::store_n(s, N, out);
}

NUMOE_VEC_DOT_N(q3_K, avx2, NUMOE_ROW_BODIES)
NUMOE_VEC_DOT_N(q3_K, avx512, NUMOE_ROW_BODIES)
#endif

}  // namespace

const TypeInfo &info_q3_K() {
  static const TypeInfo t = {
      Q3_K,
      "Q3_K",
      QK_K,
      sizeof(block_q3_K),
      Q8_K,
      dequantize_q3_K,
#ifdef NUMOE_X86
      {vec_dot_q3_K_scalar, vec_dot_q3_K_avx2, vec_dot_q3_K_avx512},
#else
      {vec_dot_q3_K_scalar, nullptr, nullptr},
#endif
      true,
      {nullptr, nullptr, nullptr},
#ifdef NUMOE_X86
      {vec_dot_n_loop<vec_dot_q3_K_scalar>, vec_dot_n_q3_K_avx2, vec_dot_n_q3_K_avx512},
#else
      {vec_dot_n_loop<vec_dot_q3_K_scalar>, nullptr, nullptr},
#endif
  };
  return t;
}

}  // namespace numoe::quant
