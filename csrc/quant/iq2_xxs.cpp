// IQ2_XXS: 2.0625 bits per value. Per 32 values 8 bytes: 4 indices into the 256-row grid
// iq2xxs_grid, 4 7-bit sign fields (ksigns_iq2xs) and one 4-bit scale (see iq2.hpp).
#include "iq2.hpp"

namespace numoe::quant {
namespace {

constexpr auto dequantize_iq2_xxs = iq2_dequantize<block_iq2_xxs, iq2_xxs_group>;
constexpr auto vec_dot_iq2_xxs_scalar = iq2_vec_dot_scalar<block_iq2_xxs, iq2_xxs_group>;

#ifdef NUMOE_X86
// The sign bytes of the sub-blocks whose uint32 u (sign fields | scale << 28) are the odd
// dwords of v (a sub-block's 4 grid index bytes, the even dwords, come out as garbage): the
// 7-bit fields moved to bytes 0..3 and each byte's parity added as bit 7 (a pshufb of the
// xor of its two nibbles).
NUMOE_TARGET_AVX2 inline __m256i iq2_xxs_sign_bytes(__m256i v) {
  const __m256i f = _mm256_or_si256(
      _mm256_or_si256(_mm256_and_si256(v, _mm256_set1_epi32(0x7F)),
                      _mm256_and_si256(_mm256_slli_epi32(v, 1), _mm256_set1_epi32(0x7F00))),
      _mm256_or_si256(_mm256_and_si256(_mm256_slli_epi32(v, 2), _mm256_set1_epi32(0x7F0000)),
                      _mm256_and_si256(_mm256_slli_epi32(v, 3), _mm256_set1_epi32(0x7F000000))));
  const __m256i nib =
      _mm256_and_si256(_mm256_xor_si256(f, _mm256_srli_epi32(f, 4)), _mm256_set1_epi8(0x0F));
  return _mm256_or_si256(f, _mm256_shuffle_epi8(simd::parity_bits(), nib));
}

// Sub-block c: grid rows by index byte; its sign bytes (dword 2c + 1 of its half of the
// block) spread to +1/-1; its scale (u >> 27) | 1 = 2s + 1 as both words of a dword.
struct iq2_xxs_avx2 {
  using block = block_iq2_xxs;
  const uint8_t *q;
  __m256i signs[2], scales[2];  // sub-blocks 0..3, 4..7: in their odd dwords
  NUMOE_TARGET_AVX2 explicit iq2_xxs_avx2(const block_iq2_xxs &b)
      : q(reinterpret_cast<const uint8_t *>(b.qs)) {
    for (int h = 0; h < 2; ++h) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(q + 32 * h));
      signs[h] = iq2_xxs_sign_bytes(v);
      const __m256i ls = _mm256_or_si256(_mm256_srli_epi32(v, 27), _mm256_set1_epi32(1));
      scales[h] = _mm256_or_si256(ls, _mm256_slli_epi32(ls, 16));
    }
  }
  NUMOE_TARGET_AVX2 void sub(int c, __m256i &g, __m256i &sg, __m256i &sc) const {
    const uint8_t *i = q + 8 * c;
    g = simd::rows4(iq2xxs_grid, i[0], i[1], i[2], i[3]);
    const __m256i d = _mm256_set1_epi32(2 * (c % 4) + 1);
    sg = simd::iq2_spread_signs(_mm256_permutevar8x32_epi32(signs[c / 4], d));
    sc = _mm256_permutevar8x32_epi32(scales[c / 4], d);
  }
};

// The block's 64 bytes in one register give all 32 sign bytes (as iq2_xxs_sign_bytes, the
// odd dwords then gathered by a permute), the 8 scales ((u >> 27) | 1 = 2s + 1) and the 32
// grid indices (the even dwords' bytes), whose rows are looked up in registers.
struct iq2_xxs_avx512 {
  using block = block_iq2_xxs;
  __m256i signs;   // sign byte of group g in byte g
  __m512i scales;  // word 4c + 2: 2s + 1 of sub-block c
  __m512i rows;    // the 32 rows' codes (iq2_lookup)
  NUMOE_TARGET_AVX512VNNI explicit iq2_xxs_avx512(const block_iq2_xxs &b) {
    const __m512i v = _mm512_loadu_si512(b.qs);
    const __m512i f = _mm512_or_si512(
        _mm512_or_si512(_mm512_and_si512(v, _mm512_set1_epi32(0x7F)),
                        _mm512_and_si512(_mm512_slli_epi32(v, 1), _mm512_set1_epi32(0x7F00))),
        _mm512_or_si512(_mm512_and_si512(_mm512_slli_epi32(v, 2), _mm512_set1_epi32(0x7F0000)),
                        _mm512_and_si512(_mm512_slli_epi32(v, 3), _mm512_set1_epi32(0x7F000000))));
    const __m512i nib =
        _mm512_and_si512(_mm512_xor_si512(f, _mm512_srli_epi32(f, 4)), _mm512_set1_epi8(0x0F));
    const __m512i par = _mm512_shuffle_epi8(
        _mm512_broadcast_i32x4(_mm256_castsi256_si128(simd::parity_bits())), nib);
    signs = _mm512_castsi512_si256(_mm512_permutexvar_epi32(
        _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 0, 0, 0, 0, 0, 0, 0, 0),
        _mm512_or_si512(f, par)));
    scales = _mm512_or_si512(_mm512_srli_epi32(v, 27), _mm512_set1_epi32(1));
    // the index bytes (even dwords) in row order, as words
    rows = simd::iq2_lookup(
        simd::iq2xxs_codes,
        _mm512_cvtepu8_epi16(_mm512_castsi512_si256(_mm512_permutexvar_epi32(
            _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 0, 0, 0, 0, 0, 0, 0), v))));
  }
  NUMOE_TARGET_AVX512VNNI void chunk(int p, __m512i &g, __mmask64 &k, __m512i &sc) const {
    g = simd::iq2_expand(rows, p);
    k = simd::iq2_sign_mask(signs, p);
    // lanes 0, 1: sub-block 2p's scale (word 8p + 2); lanes 2, 3: 2p + 1's (word 8p + 6)
    const int16_t w0 = static_cast<int16_t>(8 * p + 2), w1 = static_cast<int16_t>(8 * p + 6);
    sc = _mm512_permutexvar_epi16(simd::concat(_mm256_set1_epi16(w0), _mm256_set1_epi16(w1)),
                                  scales);
  }
};

constexpr vec_dot_fn vec_dot_iq2_xxs_avx2 = simd::iq2_vec_dot_avx2<iq2_xxs_avx2>;
constexpr vec_dot_fn vec_dot_iq2_xxs_avx512 = simd::iq2_vec_dot_avx512<iq2_xxs_avx512>;
template <int N>
constexpr simd::q8_K_row_fn iq2_xxs_n_avx2 = simd::iq2_n_avx2<iq2_xxs_avx2, N>;
template <int N>
constexpr simd::q8_K_row_fn iq2_xxs_n_avx512 = simd::iq2_n_avx512<iq2_xxs_avx512, N>;

NUMOE_VEC_DOT_N(iq2_xxs, avx2, NUMOE_ROW_BODIES)
NUMOE_VEC_DOT_N(iq2_xxs, avx512, NUMOE_ROW_BODIES)
#endif

}  // namespace

const TypeInfo &info_iq2_xxs() {
  static const TypeInfo t = {
      IQ2_XXS,
      "IQ2_XXS",
      QK_K,
      sizeof(block_iq2_xxs),
      Q8_K,
      dequantize_iq2_xxs,
#ifdef NUMOE_X86
      {vec_dot_iq2_xxs_scalar, vec_dot_iq2_xxs_avx2, vec_dot_iq2_xxs_avx512},
#else
      {vec_dot_iq2_xxs_scalar, nullptr, nullptr},
#endif
      true,
      {nullptr, nullptr, nullptr},
#ifdef NUMOE_X86
      {vec_dot_n_loop<vec_dot_iq2_xxs_scalar>, vec_dot_n_iq2_xxs_avx2, vec_dot_n_iq2_xxs_avx512},
#else
      {vec_dot_n_loop<vec_dot_iq2_xxs_scalar>, nullptr, nullptr},
#endif
  };
  return t;
}

}  // namespace numoe::quant
