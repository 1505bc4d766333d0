// IQ4_XS: super-blocks of 256 = 8 sub-blocks of 32 4-bit indices into the 16 non-linear
// values kvalues_iq4nl, with a signed 6-bit scale each: x = d * (ls - 32) * kv[q] (layout in
// k_lowbit.hpp); dot against Q8_K.
//
// The values are signed, so the SIMD bodies take the int8 products as |v| * (a signed by v)
// (maddubs; |v| <= 127 and |a| <= 127, so a pair sum cannot saturate), then the scale words
// (madd): isum is exact in int32, combined as d * dy * isum in the scalar order by every
// body. Indices are 4 bits: every lookup stays inside the 16-entry table.
#include "k_lowbit.hpp"
#include "quant.hpp"
#include "simd.hpp"

namespace numoe::quant {
namespace {

void dequantize_iq4_xs(const void *src, float *dst, int64_t n) {
  const block_iq4_xs *b = static_cast<const block_iq4_xs *>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = fp16_to_fp32(b[i].d);
    for (int j = 0; j < 8; ++j, dst += 32) {
      const float dl = d * static_cast<float>(scale_iq4_xs(b[i], j));
      const uint8_t *q = b[i].qs + 16 * j;
      for (int l = 0; l < 16; ++l) {
        dst[l] = dl * static_cast<float>(kvalues_iq4nl[q[l] & 0xF]);
        dst[l + 16] = dl * static_cast<float>(kvalues_iq4nl[q[l] >> 4]);
      }
    }
  }
}

float vec_dot_iq4_xs_scalar(int n, const void *w, const void *act) {
  const block_iq4_xs *x = static_cast<const block_iq4_xs *>(w);
  const block_q8_K *y = static_cast<const block_q8_K *>(act);
  float s = 0.f;
  for (int i = 0; i < n / QK_K; ++i) {
    int32_t isum = 0;
    for (int j = 0; j < 8; ++j) {
      const uint8_t *q = x[i].qs + 16 * j;
      const int8_t *a = y[i].qs + 32 * j;
      int32_t sj = 0;
      for (int l = 0; l < 16; ++l)
        sj += kvalues_iq4nl[q[l] & 0xF] * a[l] + kvalues_iq4nl[q[l] >> 4] * a[l + 16];
      isum += scale_iq4_xs(x[i], j) * sj;
    }
    s += d_block_sum(x[i].d, y[i].d, isum);
  }
  return s;
}

#ifdef NUMOE_X86
// The 8 signed scales of a block as int16 words (scale_iq4_xs in registers): the nibbles
// of scales_l interleaved low / high, OR-ed with the 2-bit fields of scales_h (word j takes
// scales_h << (14 - 2j), then >> 14 puts field j at bits 0..1), minus 32.
NUMOE_TARGET_AVX2 inline __m128i iq4_xs_scales(const block_iq4_xs &x) {
  uint32_t l;
  std::memcpy(&l, x.scales_l, 4);
  const __m128i lb = _mm_cvtsi32_si128(static_cast<int>(l));
  const __m128i lo =
      _mm_and_si128(_mm_unpacklo_epi8(lb, _mm_srli_epi16(lb, 4)), _mm_set1_epi8(0xF));
  const __m128i hi = _mm_srli_epi16(
      _mm_mullo_epi16(_mm_set1_epi16(static_cast<int16_t>(x.scales_h)),
                      _mm_setr_epi16(1 << 14, 1 << 12, 1 << 10, 1 << 8, 1 << 6, 1 << 4, 1 << 2, 1)),
      14);
  return _mm_sub_epi16(_mm_or_si128(_mm_cvtepu8_epi16(lo), _mm_slli_epi16(hi, 4)),
                       _mm_set1_epi16(32));
}

// The table in both 128-bit lanes (pshufb looks up within a lane).
NUMOE_TARGET_AVX2 inline __m256i iq4_table_avx2() {
  return _mm256_broadcastsi128_si256(
      _mm_load_si128(reinterpret_cast<const __m128i *>(kvalues_iq4nl)));
}

// AVX2: 32 bytes of qs (sub-blocks 2c, 2c + 1) looked up by nibble, then the lanes regrouped
// so that v[0] / v[1] are sub-blocks 2c / 2c + 1 in element order (a plain 32-byte load of
// the activation). sc[j]: scale word j in every word (from memory: a broadcast load).
struct iq4_xs_unpack_avx2 {
  const block_iq4_xs &x;
  alignas(32) int32_t sc[8];
  NUMOE_TARGET_AVX2 explicit iq4_xs_unpack_avx2(const block_iq4_xs &b) : x(b) {
    const __m256i d = _mm256_cvtepu16_epi32(iq4_xs_scales(b));  // word j in dword j
    _mm256_store_si256(reinterpret_cast<__m256i *>(sc),
                       _mm256_or_si256(d, _mm256_slli_epi32(d, 16)));
  }
  NUMOE_TARGET_AVX2 void values(int c, __m256i table, __m256i v[2]) const {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.qs + 32 * c));
    const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(bits, m4));
    const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4));
    v[0] = _mm256_permute2x128_si256(lo, hi, 0x20);
    v[1] = _mm256_permute2x128_si256(lo, hi, 0x31);
  }
  NUMOE_TARGET_AVX2 __m256i words(int j) const { return _mm256_set1_epi32(sc[j]); }
};

// sum over a sub-block of v * a (signed x signed) times the scale words, as 8 int32 lanes.
NUMOE_TARGET_AVX2 inline __m256i iq4_dot_avx2(__m256i v, __m256i a, __m256i sw) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(a, v)),
                           sw);
}

NUMOE_TARGET_AVX2 inline __m256i iq4_xs_block_avx2(const block_iq4_xs &x, const block_q8_K &y,
                                                   __m256i table) {
  const iq4_xs_unpack_avx2 u(x);
  __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
  for (int c = 0; c < 4; ++c) {
    __m256i v[2];
    u.values(c, table, v);
    const int8_t *a = y.qs + 64 * c;
    acc0 = _mm256_add_epi32(
        acc0, iq4_dot_avx2(v[0], _mm256_loadu_si256((const __m256i *)a), u.words(2 * c)));
    acc1 = _mm256_add_epi32(acc1, iq4_dot_avx2(v[1], _mm256_loadu_si256((const __m256i *)(a + 32)),
                                               u.words(2 * c + 1)));
  }
  return _mm256_add_epi32(acc0, acc1);
}

struct iq4_xs_avx2 {  // the kernel of simd::k_vec_dot_avx2
  using block = block_iq4_xs;
  NUMOE_K_STEP(NUMOE_TARGET_AVX2)
  float four(float s, const block_iq4_xs *x, const block_q8_K *y, int i) {
    const __m256i table = iq4_table_avx2();
    __m256i is[4];
    for (int k = 0; k < 4; ++k) is[k] = iq4_xs_block_avx2(x[i + k], y[i + k], table);
    return simd::d_combine4(s, reinterpret_cast<const uint8_t *>(&x[i].d), sizeof(block_iq4_xs),
                            y + i, simd::hsum4_i32(is));
  }
  NUMOE_K_STEP(NUMOE_TARGET_AVX2) float one(const block_iq4_xs &x, const block_q8_K &y) {
    return d_block_sum(x.d, y.d, simd::hsum_i32(iq4_xs_block_avx2(x, y, iq4_table_avx2())));
  }
};
constexpr vec_dot_fn vec_dot_iq4_xs_avx2 = simd::k_vec_dot_avx2<iq4_xs_avx2>;

// N activations at once: values, |v| and scale words formed once per super-block, each
// activation's exact isum reduced across activations and combined per lane as the scalar
// s += d * dy * isum.
template <int N>
NUMOE_TARGET_AVX2 void iq4_xs_n_avx2(int n, const void *w, const block_q8_K *const *y,
                                     const float *dy, float *out) {
  const block_iq4_xs *x = static_cast<const block_iq4_xs *>(w);
  const __m256i table = iq4_table_avx2();
  __m256 s = _mm256_setzero_ps();
  for (int i = 0; i < n / QK_K; ++i) {
    __m256i acc[8];
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_si256();
    const iq4_xs_unpack_avx2 u(x[i]);
    for (int c = 0; c < 4; ++c) {
      __m256i v[2];
      u.values(c, table, v);
      for (int b = 0; b < 2; ++b) {
        const __m256i av = _mm256_sign_epi8(v[b], v[b]), sw = u.words(2 * c + b);
        for (int j = 0; j < N; ++j) {
          const __m256i a = _mm256_loadu_si256((const __m256i *)(y[j][i].qs + 64 * c + 32 * b));
          acc[j] = _mm256_add_epi32(
              acc[j], _mm256_madd_epi16(_mm256_maddubs_epi16(av, _mm256_sign_epi8(a, v[b])), sw));
          simd::opaque(acc[j]);
        }
      }
    }
    s = simd::d_combine8(s, x[i].d, _mm256_load_ps(dy + 8 * i), simd::hsum8_i32(acc));
  }
  simd::store_n(s, N, out);
}

// AVX-512: 64 bytes of qs (sub-blocks 4c2 .. 4c2 + 3, one per 128-bit lane) looked up by
// nibble; one qword permute per register puts two sub-blocks in element order (v[r]:
// sub-blocks 2r, 2r + 1, elements 64r .. 64r + 63). No vpsignb at 512 bits: |v| and a mask
// of the negative values, the activation negated under the mask. sw[r]: the scale words of
// sub-block 2r (low 256 bits) and 2r + 1 (high).
NUMOE_TARGET_AVX512VNNI inline void iq4_xs_unpack_avx512(const block_iq4_xs &x, __m512i table,
                                                         __m512i av[4], __mmask64 neg[4],
                                                         __m512i sw[4]) {
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  const __m512i idx0 = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
  const __m512i idx1 = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
  for (int c2 = 0; c2 < 2; ++c2) {
    const __m512i bits = _mm512_loadu_si512(x.qs + 64 * c2);
    const __m512i lo = _mm512_shuffle_epi8(table, _mm512_and_si512(bits, m4));
    const __m512i hi = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(bits, 4), m4));
    const __m512i v[2] = {_mm512_permutex2var_epi64(lo, idx0, hi),
                          _mm512_permutex2var_epi64(lo, idx1, hi)};
    for (int b = 0; b < 2; ++b) {
      av[2 * c2 + b] = _mm512_abs_epi8(v[b]);
      neg[2 * c2 + b] = _mm512_movepi8_mask(v[b]);
    }
  }
  const __m512i w = _mm512_zextsi128_si512(iq4_xs_scales(x));
  for (int r = 0; r < 4; ++r)
    sw[r] =
        _mm512_permutexvar_epi16(simd::concat(_mm256_set1_epi16(static_cast<int16_t>(2 * r)),
                                              _mm256_set1_epi16(static_cast<int16_t>(2 * r + 1))),
                                 w);
}

// isum of one super-block against activation values a (Q8_K qs) as 16 int32 lanes, exact.
NUMOE_TARGET_AVX512VNNI inline __m512i iq4_xs_isum_avx512(const __m512i av[4],
                                                          const __mmask64 neg[4],
                                                          const __m512i sw[4], const int8_t *a) {
  __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
  for (int r = 0; r < 4; ++r) {
    const __m512i y = _mm512_loadu_si512(a + 64 * r);
    const __m512i p =
        _mm512_maddubs_epi16(av[r], _mm512_mask_sub_epi8(y, neg[r], _mm512_setzero_si512(), y));
    if (r & 1)
      acc1 = _mm512_dpwssd_epi32(acc1, p, sw[r]);
    else
      acc0 = _mm512_dpwssd_epi32(acc0, p, sw[r]);
  }
  return _mm512_add_epi32(acc0, acc1);
}

NUMOE_TARGET_AVX512VNNI inline __m512i iq4_table_avx512() {
  return _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i *>(kvalues_iq4nl)));
}

NUMOE_TARGET_AVX512VNNI inline __m512i iq4_xs_block_avx512(const block_iq4_xs &x,
                                                           const block_q8_K &y, __m512i table) {
  __m512i av[4], sw[4];
  __mmask64 neg[4];
  iq4_xs_unpack_avx512(x, table, av, neg, sw);
  return iq4_xs_isum_avx512(av, neg, sw, y.qs);
}

struct iq4_xs_avx512 {  // the kernel of simd::k_vec_dot_avx512
  using block = block_iq4_xs;
  NUMOE_K_STEP(NUMOE_TARGET_AVX512VNNI)
  float four(float s, const block_iq4_xs *x, const block_q8_K *y, int i) {
    const __m512i table = iq4_table_avx512();
    __m512i is[4];
    for (int k = 0; k < 4; ++k) is[k] = iq4_xs_block_avx512(x[i + k], y[i + k], table);
    return simd::d_combine4(s, reinterpret_cast<const uint8_t *>(&x[i].d), sizeof(block_iq4_xs),
                            y + i, simd::hsum4_i32(is));
  }
  NUMOE_K_STEP(NUMOE_TARGET_AVX512VNNI) float one(const block_iq4_xs &x, const block_q8_K &y) {
    return d_block_sum(x.d, y.d,
                       _mm512_reduce_add_epi32(iq4_xs_block_avx512(x, y, iq4_table_avx512())));
  }
};
constexpr vec_dot_fn vec_dot_iq4_xs_avx512 = simd::k_vec_dot_avx512<iq4_xs_avx512>;

template <int N>
NUMOE_TARGET_AVX512VNNI void iq4_xs_n_avx512(int n, const void *w, const block_q8_K *const *y,
                                             const float *dy, float *out) {
  const block_iq4_xs *x = static_cast<const block_iq4_xs *>(w);
  const __m512i table = iq4_table_avx512();
  __m256 s = _mm256_setzero_ps();
  for (int i = 0; i < n / QK_K; ++i) {
    __m512i av[4], sw[4], is[8];
    __mmask64 neg[4];
    iq4_xs_unpack_avx512(x[i], table, av, neg, sw);
    for (int j = 0; j < 8; ++j)
      is[j] = j < N ? iq4_xs_isum_avx512(av, neg, sw, y[j][i].qs) : _mm512_setzero_si512();
    s = simd::d_combine8(s, x[i].d, _mm256_load_ps(dy + 8 * i), simd::hsum8_i32(is));
  }
  simd::store_n(s, N, out);
}

NUMOE_VEC_DOT_N(iq4_xs, avx2, NUMOE_ROW_BODIES)
NUMOE_VEC_DOT_N(iq4_xs, avx512, NUMOE_ROW_BODIES)
#endif

}  // namespace

const TypeInfo &info_iq4_xs() {
  static const TypeInfo t = {
      IQ4_XS,
      "IQ4_XS",
      QK_K,
      sizeof(block_iq4_xs),
      Q8_K,
      dequantize_iq4_xs,
#ifdef NUMOE_X86
      {vec_dot_iq4_xs_scalar, vec_dot_iq4_xs_avx2, vec_dot_iq4_xs_avx512},
#else
      {vec_dot_iq4_xs_scalar, nullptr, nullptr},
#endif
      true,
      {nullptr, nullptr, nullptr},
#ifdef NUMOE_X86
      {vec_dot_n_loop<vec_dot_iq4_xs_scalar>, vec_dot_n_iq4_xs_avx2, vec_dot_n_iq4_xs_avx512},
#else
      {vec_dot_n_loop<vec_dot_iq4_xs_scalar>, nullptr, nullptr},
#endif
  };
  return t;
}

}  // namespace numoe::quant
