// IQ2_S: 2.5625 bits per value. Per group of 8 values a 10-bit index into the 1024-row grid
// iq2s_grid (8 bits in qs, 2 in qh) and a plain sign byte; a 4-bit scale per 16 values (see
// iq2.hpp).
#include "iq2.hpp"

namespace numoe::quant {
namespace {

constexpr auto dequantize_iq2_s = iq2_dequantize<block_iq2_s, iq2_s_group>;
constexpr auto vec_dot_iq2_s_scalar = iq2_vec_dot_scalar<block_iq2_s, iq2_s_group>;

// Grid index of group l (0..3) of sub-block c.
inline uint32_t iq2_s_index(const block_iq2_s &x, int c, int l) {
  return x.qs[4 * c + l] | ((x.qh[c] >> 2 * l) & 3) << 8;
}

#ifdef NUMOE_X86
// Sub-block c: grid rows by index (the 32 indices formed in vector registers up front: the
// low bytes widened, each group's 2 bits of qh moved to bits 8-9 by a multiply); the 4 sign
// bytes spread to +1/-1; scale words as IQ2_XS.
struct iq2_s_avx2 {
  using block = block_iq2_s;
  const block_iq2_s &x;
  __m256i lo, hi;  // the scale words of sub-blocks 0..3 / 4..7 in both 128-bit lanes
  alignas(32) uint16_t idx[32];
  NUMOE_TARGET_AVX2 explicit iq2_s_avx2(const block_iq2_s &b) : x(b) {
    const __m256i w = simd::iq2_scale_words(b.scales);
    lo = _mm256_permute2x128_si256(w, w, 0x00);
    hi = _mm256_permute2x128_si256(w, w, 0x11);
    for (int h = 0; h < 2; ++h) {  // groups 16h .. 16h + 15
      int32_t q;
      std::memcpy(&q, b.qh + 4 * h, 4);
      // word n: qh byte n / 4 (of this half), times 2^(8 - 2 (n % 4))
      const __m256i r = _mm256_shuffle_epi8(
          _mm256_set1_epi32(q), _mm256_setr_epi64x(static_cast<int64_t>(0x8000800080008000ULL),
                                                   static_cast<int64_t>(0x8001800180018001ULL),
                                                   static_cast<int64_t>(0x8002800280028002ULL),
                                                   static_cast<int64_t>(0x8003800380038003ULL)));
      const __m256i hb =
          _mm256_and_si256(_mm256_mullo_epi16(r, _mm256_set1_epi64x(0x0004001000400100LL)),
                           _mm256_set1_epi16(0x300));
      const __m256i lb =
          _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i *>(b.qs + 16 * h)));
      _mm256_store_si256(reinterpret_cast<__m256i *>(idx + 16 * h), _mm256_or_si256(lb, hb));
    }
  }
  NUMOE_TARGET_AVX2 void sub(int c, __m256i &g, __m256i &sg, __m256i &sc) const {
    const uint16_t *i = idx + 4 * c;
    g = simd::rows4(iq2s_grid, i[0], i[1], i[2], i[3]);
    int32_t s;
    std::memcpy(&s, x.qs + QK_K / 8 + 4 * c, 4);
    sg = simd::iq2_spread_signs(_mm256_set1_epi32(s));
    const int k = 2 * (c % 4);
    sc = _mm256_shuffle_epi8(c < 4 ? lo : hi,
                             _mm256_setr_m128i(_mm_set1_epi16(simd::word_idx(k)),
                                               _mm_set1_epi16(simd::word_idx(k + 1))));
  }
};

// The 32 10-bit indices in one register (the low bytes widened, each group's 2 bits of qh
// shifted in), the rows looked up in registers (simd::iq2_lookup over 16 table pairs); the
// sign bytes are stored as they are used.
struct iq2_s_avx512 {
  using block = block_iq2_s;
  __m512i rows;    // the 32 rows' codes
  __m256i signs;   // sign byte of group g in byte g
  __m256i scales;  // iq2_scale_words
  NUMOE_TARGET_AVX512VNNI explicit iq2_s_avx512(const block_iq2_s &b) {
    const __m512i lo =
        _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(b.qs)));
    // word g: qh[g / 4] >> 2 (g % 4), then its low 2 bits to bits 8-9
    const __m512i h = _mm512_permutexvar_epi16(
        _mm512_srli_epi16(
            _mm512_setr_epi64(0x0003000200010000LL, 0x0007000600050004LL, 0x000B000A00090008LL,
                              0x000F000E000D000CLL, 0x0013001200110010LL, 0x0017001600150014LL,
                              0x001B001A00190018LL, 0x001F001E001D001CLL),
            2),
        _mm512_castsi128_si512(
            _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(b.qh)))));
    const __m512i hi = _mm512_and_si512(
        _mm512_sllv_epi16(h, _mm512_set1_epi64(0x0002000400060008LL)), _mm512_set1_epi16(0x300));
    rows = simd::iq2_lookup(simd::iq2s_codes, _mm512_or_si512(lo, hi));
    signs = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(b.qs + QK_K / 8));
    scales = simd::iq2_scale_words(b.scales);
  }
  NUMOE_TARGET_AVX512VNNI void chunk(int p, __m512i &g, __mmask64 &k, __m512i &sc) const {
    g = simd::iq2_expand(rows, p);
    k = simd::iq2_sign_mask(signs, p);
    sc = simd::iq2_chunk_scales(scales, p);
  }
};

constexpr vec_dot_fn vec_dot_iq2_s_avx2 = simd::iq2_vec_dot_avx2<iq2_s_avx2>;
constexpr vec_dot_fn vec_dot_iq2_s_avx512 = simd::iq2_vec_dot_avx512<iq2_s_avx512>;
template <int N>
constexpr simd::q8_K_row_fn iq2_s_n_avx2 = simd::iq2_n_avx2<iq2_s_avx2, N>;
template <int N>
constexpr simd::q8_K_row_fn iq2_s_n_avx512 = simd::iq2_n_avx512<iq2_s_avx512, N>;

NUMOE_VEC_DOT_N(iq2_s, avx2, NUMOE_ROW_BODIES)
NUMOE_VEC_DOT_N(iq2_s, avx512, NUMOE_ROW_BODIES)
#endif

}  // namespace

const TypeInfo &info_iq2_s() {
  static const TypeInfo t = {
      IQ2_S,
      "IQ2_S",
      QK_K,
      sizeof(block_iq2_s),
      Q8_K,
      dequantize_iq2_s,
#ifdef NUMOE_X86
      {vec_dot_iq2_s_scalar, vec_dot_iq2_s_avx2, vec_dot_iq2_s_avx512},
#else
      {vec_dot_iq2_s_scalar, nullptr, nullptr},
#endif
      true,
      {nullptr, nullptr, nullptr},
#ifdef NUMOE_X86
      {vec_dot_n_loop<vec_dot_iq2_s_scalar>, vec_dot_n_iq2_s_avx2, vec_dot_n_iq2_s_avx512},
#else
      {vec_dot_n_loop<vec_dot_iq2_s_scalar>, nullptr, nullptr},
#endif
  };
  return t;
}

}  // namespace numoe::quant
