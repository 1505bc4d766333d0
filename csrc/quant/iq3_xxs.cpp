// IQ3_XXS: super-blocks of 256 values in 8 groups of 32. A group is 8 grid rows of 4 values
// (iq3xxs_grid, levels 4 .. 62), 4 sign bytes given as 7-bit indices into ksigns_iq2xs (one
// per 8 values) and a 4-bit scale s: x = d * (0.5 + s) * 0.5 * grid * sign. Dot against Q8_K.
//
// Integer form (every body): 4 * x / d = (2s + 1) * grid * sign, so isum = sum_g (2s_g + 1) *
// sum_l grid_l * sign_l * q8_l and the dot is d * dy * isum / 4. The SIMD bodies apply the
// signs to the activation and multiply the unsigned grid bytes into it (maddubs: |pair| <=
// 2 * 62 * 127, no saturation).
//
// Layout: qs[0..63] grid rows (row 8g + m: values 32g + 4m .. + 3); qs[64 + 4g ..] group g's
// uint32: sign index k (values 32g + 8k ..) in bits 7k .. 7k + 6, s in bits 28..31.
#include "iq3_iq1_bodies.hpp"
#include "iq3_iq1_tables.hpp"
#include "iq_signs.hpp"

namespace numoe::quant {
namespace {

inline uint32_t iq3_xxs_aux(const block_iq3_xxs &x, int g) {  // group g's signs and scale
  uint32_t a;
  std::memcpy(&a, x.qs + QK_K / 4 + 4 * g, 4);
  return a;
}

void dequantize_iq3_xxs(const void *src, float *dst, int64_t n) {
  const block_iq3_xxs *b = static_cast<const block_iq3_xxs *>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = fp16_to_fp32(b[i].d);
    for (int g = 0; g < 8; ++g) {
      const uint32_t aux = iq3_xxs_aux(b[i], g);
      const float db = d * (0.5f + static_cast<float>(aux >> 28)) * 0.5f;
      for (int m = 0; m < 8; ++m, dst += 4) {
        const uint32_t row = iq3xxs_grid[b[i].qs[8 * g + m]];  // a byte: < 256
        const uint8_t signs = ksigns_iq2xs[(aux >> (7 * (m / 2))) & 127];
        for (int j = 0; j < 4; ++j)
          dst[j] = db * static_cast<float>((row >> (8 * j)) & 0xFF) *
                   (signs & kmask_iq2xs[4 * (m % 2) + j] ? -1.f : 1.f);
      }
    }
  }
}

// Word tables for the AVX-512 look-ups (vpermi2w): lo[i] = values 0, 1 of grid row i as
// bytes, hi[i] = values 2, 3.
struct iq3_xxs_words {
  alignas(64) uint16_t lo[256];
  alignas(64) uint16_t hi[256];
};
constexpr iq3_xxs_words make_iq3_xxs_words() {
  iq3_xxs_words w{};
  for (int i = 0; i < 256; ++i) {
    w.lo[i] = static_cast<uint16_t>(iq3xxs_grid[i] & 0xFFFF);
    w.hi[i] = static_cast<uint16_t>(iq3xxs_grid[i] >> 16);
  }
  return w;
}
inline constexpr iq3_xxs_words kIq3xxsWords = make_iq3_xxs_words();

struct fmt_iq3_xxs {
  using block = block_iq3_xxs;
  static constexpr float kFactor = 0.25f;
  static half d_bits(const block_iq3_xxs &x) { return x.d; }

  static int32_t isum(const block_iq3_xxs &x, const block_q8_K &y) {
    int32_t s = 0;
    for (int g = 0; g < 8; ++g) {
      const uint32_t aux = iq3_xxs_aux(x, g);
      int32_t sg = 0;
      for (int m = 0; m < 8; ++m) {
        const uint32_t row = iq3xxs_grid[x.qs[8 * g + m]];
        const uint8_t signs = ksigns_iq2xs[(aux >> (7 * (m / 2))) & 127];
        const int8_t *a = y.qs + 32 * g + 4 * m;
        for (int j = 0; j < 4; ++j) {
          const int v = static_cast<int>((row >> (8 * j)) & 0xFF) * a[j];
          sg += signs & kmask_iq2xs[4 * (m % 2) + j] ? -v : v;
        }
      }
      s += static_cast<int32_t>(2 * (aux >> 28) + 1) * sg;
    }
    return s;
  }

#ifdef NUMOE_X86
  // The 32 sign bytes of a super-block (byte 4g + k: values 32g + 8k .. + 7, bit j set =
  // value j negative) from its 8 uint32: the 7-bit fields moved to bytes, and bit 7 the parity
  // of the other 7 (ksigns_iq2xs's rule) from a nibble table.
  NUMOE_TARGET_AVX2 static __m256i sign_bytes(__m256i aux) {
    const __m256i f = _mm256_or_si256(
        _mm256_or_si256(_mm256_and_si256(aux, _mm256_set1_epi32(0x7F)),
                        _mm256_and_si256(_mm256_slli_epi32(aux, 1), _mm256_set1_epi32(0x7F00))),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_slli_epi32(aux, 2), _mm256_set1_epi32(0x7F0000)),
            _mm256_and_si256(_mm256_slli_epi32(aux, 3), _mm256_set1_epi32(0x7F000000))));
    const __m256i par =
        _mm256_setr_epi8(0, -128, -128, 0, -128, 0, 0, -128, -128, 0, 0, -128, 0, -128, -128, 0,  //
                         0, -128, -128, 0, -128, 0, 0, -128, -128, 0, 0, -128, 0, -128, -128, 0);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    return _mm256_or_si256(
        f,
        _mm256_xor_si256(_mm256_shuffle_epi8(par, _mm256_and_si256(f, m4)),
                         _mm256_shuffle_epi8(par, _mm256_and_si256(_mm256_srli_epi16(f, 4), m4))));
  }

  // u[g]: group g's 32 grid bytes; sg[g]: its signs as -1 / +1 bytes; sc[g]: 2s + 1 words.
  struct avx2 {
    __m256i u[8], sg[8], sc[8];
    NUMOE_TARGET_AVX2 explicit avx2(const block_iq3_xxs &x) {
      const __m256i aux = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.qs + QK_K / 4));
      const __m256i signs = sign_bytes(aux);
      // 2s + 1 in the low word of each dword, then all 8 in both 128-bit lanes
      const __m256i ls32 =
          _mm256_or_si256(_mm256_slli_epi32(_mm256_srli_epi32(aux, 28), 1), _mm256_set1_epi32(1));
      const __m128i ls16 =
          _mm_packs_epi32(_mm256_castsi256_si128(ls32), _mm256_extracti128_si256(ls32, 1));
      const __m256i ls = _mm256_broadcastsi128_si256(ls16);
      // byte b of a group's 4 sign bytes to values 8b .. 8b + 7, bit j of it to value j
      const __m256i rep = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                           2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
      const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ULL));
      const uint8_t *q = x.qs;
      for (int g = 0; g < 8; ++g, q += 8) {
        u[g] = _mm256_setr_epi32(
            static_cast<int>(iq3xxs_grid[q[0]]), static_cast<int>(iq3xxs_grid[q[1]]),
            static_cast<int>(iq3xxs_grid[q[2]]), static_cast<int>(iq3xxs_grid[q[3]]),
            static_cast<int>(iq3xxs_grid[q[4]]), static_cast<int>(iq3xxs_grid[q[5]]),
            static_cast<int>(iq3xxs_grid[q[6]]), static_cast<int>(iq3xxs_grid[q[7]]));
        const __m256i b = _mm256_and_si256(
            _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(signs, _mm256_set1_epi32(g)), rep),
            bit);
        sg[g] = _mm256_or_si256(_mm256_cmpeq_epi8(b, bit), _mm256_set1_epi8(1));
        sc[g] = _mm256_shuffle_epi8(ls, _mm256_set1_epi16(simd::word_idx(g)));
      }
    }
    NUMOE_TARGET_AVX2 __m256i dot(const block_q8_K &y) const {
      return iq::iq3_dot_avx2(u, sg, sc, y);
    }
  };

  // u[r]: values 64r .. 64r + 63 (groups 2r, 2r + 1); neg[r]: their sign bits; sc[r]: the two
  // groups' 2s + 1 words (low / high 256 bits). The grid rows come from word tables held in
  // registers (vpermi2w on 64 entries, blended on index bits 6 and 7): no memory look-ups.
  struct avx512 {
    __m512i u[4], sc[4];
    __mmask64 neg[4];
    NUMOE_TARGET_AVX512VNNI static __m512i lookup(const uint16_t *t, __m512i ix, __mmask32 b6,
                                                  __mmask32 b7) {
      const __m512i a =
          _mm512_permutex2var_epi16(_mm512_load_si512(t), ix, _mm512_load_si512(t + 32));
      const __m512i b =
          _mm512_permutex2var_epi16(_mm512_load_si512(t + 64), ix, _mm512_load_si512(t + 96));
      const __m512i c =
          _mm512_permutex2var_epi16(_mm512_load_si512(t + 128), ix, _mm512_load_si512(t + 160));
      const __m512i d =
          _mm512_permutex2var_epi16(_mm512_load_si512(t + 192), ix, _mm512_load_si512(t + 224));
      return _mm512_mask_mov_epi16(_mm512_mask_mov_epi16(a, b6, b), b7,
                                   _mm512_mask_mov_epi16(c, b6, d));
    }
    NUMOE_TARGET_AVX512VNNI explicit avx512(const block_iq3_xxs &x) {
      // word 2m, 2m + 1 of an output: lo, hi of row m (first half) or 16 + m (second half)
      alignas(64) static constexpr int16_t kInter[2][32] = {
          {0, 32, 1, 33, 2,  34, 3,  35, 4,  36, 5,  37, 6,  38, 7,  39,
           8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47},
          {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
           24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63}};
      for (int h = 0; h < 2; ++h) {
        const __m512i ix = _mm512_cvtepu8_epi16(
            _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.qs + 32 * h)));
        const __mmask32 b6 = _mm512_test_epi16_mask(ix, _mm512_set1_epi16(64));
        const __mmask32 b7 = _mm512_test_epi16_mask(ix, _mm512_set1_epi16(128));
        const __m512i lo = lookup(kIq3xxsWords.lo, ix, b6, b7);
        const __m512i hi = lookup(kIq3xxsWords.hi, ix, b6, b7);
        for (int k = 0; k < 2; ++k)
          u[2 * h + k] = _mm512_permutex2var_epi16(lo, _mm512_load_si512(kInter[k]), hi);
      }
      const __m256i aux = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.qs + QK_K / 4));
      const __m256i signs = sign_bytes(aux);
      alignas(32) uint64_t s64[4];
      _mm256_store_si256(reinterpret_cast<__m256i *>(s64), signs);
      for (int r = 0; r < 4; ++r) neg[r] = _cvtu64_mask64(s64[r]);
      const __m256i ls32 =
          _mm256_or_si256(_mm256_slli_epi32(_mm256_srli_epi32(aux, 28), 1), _mm256_set1_epi32(1));
      const __m512i ls = _mm512_broadcast_i32x4(_mm256_cvtepi32_epi16(ls32));
      for (int r = 0; r < 4; ++r)
        sc[r] = _mm512_shuffle_epi8(ls, simd::concat(_mm256_set1_epi16(simd::word_idx(2 * r)),
                                                     _mm256_set1_epi16(simd::word_idx(2 * r + 1))));
    }
    NUMOE_TARGET_AVX512VNNI __m512i dot(const block_q8_K &y) const {
      return iq::iq3_dot_avx512(u, neg, sc, y);
    }
  };
#endif
};

constexpr vec_dot_fn vec_dot_iq3_xxs_scalar = iq::vec_dot_scalar<fmt_iq3_xxs>;

#ifdef NUMOE_X86
constexpr vec_dot_fn vec_dot_iq3_xxs_avx2 = iq::vec_dot_avx2<fmt_iq3_xxs, fmt_iq3_xxs::avx2>;
constexpr vec_dot_fn vec_dot_iq3_xxs_avx512 = iq::vec_dot_avx512<fmt_iq3_xxs, fmt_iq3_xxs::avx512>;
template <int N>
constexpr simd::q8_K_row_fn iq3_xxs_n_avx2 = iq::row_n_avx2<fmt_iq3_xxs, fmt_iq3_xxs::avx2, N>;
template <int N>
constexpr simd::q8_K_row_fn iq3_xxs_n_avx512 =
    iq::row_n_avx512<fmt_iq3_xxs, fmt_iq3_xxs::avx512, N>;

NUMOE_VEC_DOT_N(iq3_xxs, avx2, NUMOE_ROW_BODIES)
NUMOE_VEC_DOT_N(iq3_xxs, avx512, NUMOE_ROW_BODIES)
#endif

}  // namespace

const TypeInfo &info_iq3_xxs() {
  static const TypeInfo t = {
      IQ3_XXS,
      "IQ3_XXS",
      QK_K,
      sizeof(block_iq3_xxs),
      Q8_K,
      dequantize_iq3_xxs,
#ifdef NUMOE_X86
      {vec_dot_iq3_xxs_scalar, vec_dot_iq3_xxs_avx2, vec_dot_iq3_xxs_avx512},
#else
      {vec_dot_iq3_xxs_scalar, nullptr, nullptr},
#endif
      true,
      {nullptr, nullptr, nullptr},
#ifdef NUMOE_X86
      {vec_dot_n_loop<vec_dot_iq3_xxs_scalar>, vec_dot_n_iq3_xxs_avx2, vec_dot_n_iq3_xxs_avx512},
#else
      {vec_dot_n_loop<vec_dot_iq3_xxs_scalar>, nullptr, nullptr},
#endif
  };
  return t;
}

}  // namespace numoe::quant
