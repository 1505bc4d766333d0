// IQ2_XS: 2.3125 bits per value. Per group of 8 values a uint16: a 9-bit index into the
// 512-row grid iq2xs_grid and a 7-bit sign field (ksigns_iq2xs); a 4-bit scale per 16 values
// (see iq2.hpp).
#include "iq2.hpp"

namespace numoe::quant {
namespace {

constexpr auto dequantize_iq2_xs = iq2_dequantize<block_iq2_xs, iq2_xs_group>;
constexpr auto vec_dot_iq2_xs_scalar = iq2_vec_dot_scalar<block_iq2_xs, iq2_xs_group>;

#ifdef NUMOE_X86
// Sub-block c: grid rows by index (bits 0-8 of its 4 uint16, masked up front); its 4 sign
// bytes (the fields, bits 9-15, with their parity as bit 7, for the whole block at once)
// spread to +1/-1; scale words picked from the block's 16.
struct iq2_xs_avx2 {
  using block = block_iq2_xs;
  __m256i lo, hi;                // the scale words of sub-blocks 0..3 / 4..7 in both lanes
  __m256i signs;                 // sign byte of group g in byte g
  alignas(32) uint16_t idx[32];  // grid index of group g
  NUMOE_TARGET_AVX2 explicit iq2_xs_avx2(const block_iq2_xs &b) {
    const __m256i w = simd::iq2_scale_words(b.scales);
    lo = _mm256_permute2x128_si256(w, w, 0x00);
    hi = _mm256_permute2x128_si256(w, w, 0x11);
    __m256i f[2];
    for (int h = 0; h < 2; ++h) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(b.qs + 16 * h));
      _mm256_store_si256(reinterpret_cast<__m256i *>(idx + 16 * h),
                         _mm256_and_si256(v, _mm256_set1_epi16(511)));
      f[h] = _mm256_srli_epi16(v, 9);
      f[h] = _mm256_or_si256(
          f[h], _mm256_shuffle_epi8(simd::parity_bits(),
                                    _mm256_xor_si256(f[h], _mm256_srli_epi16(f[h], 4))));
    }
    signs = _mm256_permute4x64_epi64(_mm256_packus_epi16(f[0], f[1]), 0xD8);
  }
  NUMOE_TARGET_AVX2 void sub(int c, __m256i &g, __m256i &sg, __m256i &sc) const {
    const uint16_t *i = idx + 4 * c;
    g = simd::rows4(iq2xs_grid, i[0], i[1], i[2], i[3]);
    sg = simd::iq2_spread_signs(_mm256_permutevar8x32_epi32(signs, _mm256_set1_epi32(c)));
    const int k = 2 * (c % 4);
    sc = _mm256_shuffle_epi8(c < 4 ? lo : hi,
                             _mm256_setr_m128i(_mm_set1_epi16(simd::word_idx(k)),
                                               _mm_set1_epi16(simd::word_idx(k + 1))));
  }
};

// The block's 64 bytes in one register: the 9-bit indices (the rows looked up in registers,
// simd::iq2_lookup) and all 32 sign bytes, the sign fields (uint16 >> 9) with their parity
// as bit 7 (a pshufb of the xor of their two nibbles), narrowed to bytes.
struct iq2_xs_avx512 {
  using block = block_iq2_xs;
  __m512i rows;    // the 32 rows' codes
  __m256i signs;   // sign byte of group g in byte g
  __m256i scales;  // iq2_scale_words
  NUMOE_TARGET_AVX512VNNI explicit iq2_xs_avx512(const block_iq2_xs &b) {
    const __m512i v = _mm512_loadu_si512(b.qs);
    rows = simd::iq2_lookup(simd::iq2xs_codes, _mm512_and_si512(v, _mm512_set1_epi16(511)));
    const __m512i f = _mm512_srli_epi16(v, 9);
    const __m512i par =
        _mm512_shuffle_epi8(_mm512_broadcast_i32x4(_mm256_castsi256_si128(simd::parity_bits())),
                            _mm512_xor_si512(f, _mm512_srli_epi16(f, 4)));
    signs = _mm512_cvtepi16_epi8(_mm512_or_si512(f, par));
    scales = simd::iq2_scale_words(b.scales);
  }
  NUMOE_TARGET_AVX512VNNI void chunk(int p, __m512i &g, __mmask64 &k, __m512i &sc) const {
    g = simd::iq2_expand(rows, p);
    k = simd::iq2_sign_mask(signs, p);
    sc = simd::iq2_chunk_scales(scales, p);
  }
};

constexpr vec_dot_fn vec_dot_iq2_xs_avx2 = simd::iq2_vec_dot_avx2<iq2_xs_avx2>;
constexpr vec_dot_fn vec_dot_iq2_xs_avx512 = simd::iq2_vec_dot_avx512<iq2_xs_avx512>;
template <int N>
constexpr simd::q8_K_row_fn iq2_xs_n_avx2 = simd::iq2_n_avx2<iq2_xs_avx2, N>;
template <int N>
constexpr simd::q8_K_row_fn iq2_xs_n_avx512 = simd::iq2_n_avx512<iq2_xs_avx512, N>;

NUMOE_VEC_DOT_N(iq2_xs, avx2, NUMOE_ROW_BODIES)
NUMOE_VEC_DOT_N(iq2_xs, avx512, NUMOE_ROW_BODIES)
#endif

}  // namespace

const TypeInfo &info_iq2_xs() {
  static const TypeInfo t = {
      IQ2_XS,
      "IQ2_XS",
      QK_K,
      sizeof(block_iq2_xs),
      Q8_K,
      dequantize_iq2_xs,
#ifdef NUMOE_X86
      {vec_dot_iq2_xs_scalar, vec_dot_iq2_xs_avx2, vec_dot_iq2_xs_avx512},
#else
      {vec_dot_iq2_xs_scalar, nullptr, nullptr},
#endif
      true,
      {nullptr, nullptr, nullptr},
#ifdef NUMOE_X86
      {vec_dot_n_loop<vec_dot_iq2_xs_scalar>, vec_dot_n_iq2_xs_avx2, vec_dot_n_iq2_xs_avx512},
#else
      {vec_dot_n_loop<vec_dot_iq2_xs_scalar>, nullptr, nullptr},
#endif
  };
  return t;
}

}  // namespace numoe::quant
