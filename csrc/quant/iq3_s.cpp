// IQ3_S: super-blocks of 256 values in 8 groups of 32. A group is 8 grid rows of 4 values
// (iq3s_grid, 9-bit row indices, levels 1, 3 .. 15), one sign bit per value and a 4-bit
// scale s: x = d * (1 + 2s) * grid * sign. Dot against Q8_K.
//
// Integer form (every body): x / d = (2s + 1) * grid * sign, so isum = sum_g (2s_g + 1) *
// sum_l grid_l * sign_l * q8_l and the dot is d * dy * isum. The SIMD bodies apply the signs
// to the activation and multiply the unsigned grid bytes into it.
//
// Layout: row k (values 4k .. 4k + 3) = qs[k] | bit k % 8 of qh[k / 8] << 8; the sign of
// value v is bit v % 8 of signs[v / 8]; group g's scale is nibble g % 2 of scales[g / 2].
#include "iq3_iq1_bodies.hpp"
#include "iq3_iq1_tables.hpp"

namespace numoe::quant {
namespace {

inline int iq3_s_row(const block_iq3_s &x, int k) {  // 9 bits: < 512
  return x.qs[k] | (((x.qh[k / 8] >> (k % 8)) & 1) << 8);
}

inline int iq3_s_scale(const block_iq3_s &x, int g) {  // 2s + 1 of group g
  return 2 * ((x.scales[g / 2] >> (4 * (g % 2))) & 0xF) + 1;
}

void dequantize_iq3_s(const void *src, float *dst, int64_t n) {
  const block_iq3_s *b = static_cast<const block_iq3_s *>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = fp16_to_fp32(b[i].d);
    for (int g = 0; g < 8; ++g) {
      const float db = d * static_cast<float>(iq3_s_scale(b[i], g));
      for (int m = 0; m < 8; ++m, dst += 4) {
        const int k = 8 * g + m;
        const uint32_t row = iq3s_grid[iq3_s_row(b[i], k)];
        const int signs = b[i].signs[k / 2] >> (4 * (k % 2));
        for (int j = 0; j < 4; ++j)
          dst[j] =
              db * static_cast<float>((row >> (8 * j)) & 0xFF) * (signs & (1 << j) ? -1.f : 1.f);
      }
    }
  }
}

// Word tables for the AVX-512 look-ups (vpermi2w): lo[i] = values 0, 1 of grid row i as
// bytes, hi[i] = values 2, 3.
struct iq3_s_words {
  alignas(64) uint16_t lo[512];
  alignas(64) uint16_t hi[512];
};
constexpr iq3_s_words make_iq3_s_words() {
  iq3_s_words w{};
  for (int i = 0; i < 512; ++i) {
    w.lo[i] = static_cast<uint16_t>(iq3s_grid[i] & 0xFFFF);
    w.hi[i] = static_cast<uint16_t>(iq3s_grid[i] >> 16);
  }
  return w;
}
inline constexpr iq3_s_words kIq3sWords = make_iq3_s_words();

struct fmt_iq3_s {
  using block = block_iq3_s;
  static constexpr float kFactor = 1.f;
  static half d_bits(const block_iq3_s &x) { return x.d; }

  static int32_t isum(const block_iq3_s &x, const block_q8_K &y) {
    int32_t s = 0;
    for (int g = 0; g < 8; ++g) {
      int32_t sg = 0;
      for (int m = 0; m < 8; ++m) {
        const int k = 8 * g + m;
        const uint32_t row = iq3s_grid[iq3_s_row(x, k)];
        const int signs = x.signs[k / 2] >> (4 * (k % 2));
        const int8_t *a = y.qs + 4 * k;
        for (int j = 0; j < 4; ++j) {
          const int v = static_cast<int>((row >> (8 * j)) & 0xFF) * a[j];
          sg += signs & (1 << j) ? -v : v;
        }
      }
      s += iq3_s_scale(x, g) * sg;
    }
    return s;
  }

#ifdef NUMOE_X86
  // The 8 groups' 2s + 1 as words.
  NUMOE_TARGET_AVX2 static __m128i scales(const block_iq3_s &x) {
    uint32_t w;
    std::memcpy(&w, x.scales, 4);
    const __m128i b = _mm_cvtepu8_epi16(_mm_cvtsi32_si128(static_cast<int>(w)));
    const __m128i s = _mm_and_si128(_mm_or_si128(b, _mm_slli_epi16(_mm_srli_epi16(b, 4), 8)),
                                    _mm_set1_epi16(0x0F0F));  // bytes s0 s1 .. s7
    return _mm_or_si128(_mm_slli_epi16(_mm_cvtepu8_epi16(s), 1), _mm_set1_epi16(1));
  }

  // u[g]: group g's 32 grid bytes; sg[g]: its signs as -1 / +1 bytes; sc[g]: 2s + 1 words.
  struct avx2 {
    __m256i u[8], sg[8], sc[8];
    NUMOE_TARGET_AVX2 explicit avx2(const block_iq3_s &x) {
      const __m256i ls = _mm256_broadcastsi128_si256(scales(x));
      const __m256i signs = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.signs));
      const __m256i rep = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                           2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
      const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ULL));
      const uint8_t *q = x.qs;
      for (int g = 0; g < 8; ++g, q += 8) {
        const int h = x.qh[g] << 8;  // bit m of qh[g] at bit 8 + m
        u[g] = _mm256_setr_epi32(static_cast<int>(iq3s_grid[q[0] | (h & 256)]),
                                 static_cast<int>(iq3s_grid[q[1] | ((h >> 1) & 256)]),
                                 static_cast<int>(iq3s_grid[q[2] | ((h >> 2) & 256)]),
                                 static_cast<int>(iq3s_grid[q[3] | ((h >> 3) & 256)]),
                                 static_cast<int>(iq3s_grid[q[4] | ((h >> 4) & 256)]),
                                 static_cast<int>(iq3s_grid[q[5] | ((h >> 5) & 256)]),
                                 static_cast<int>(iq3s_grid[q[6] | ((h >> 6) & 256)]),
                                 static_cast<int>(iq3s_grid[q[7] | ((h >> 7) & 256)]));
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
  // groups' 2s + 1 words (low / high 256 bits). Grid rows from word tables by vpermi2w over
  // 64 entries, blended on index bits 6, 7 and 8 (qh).
  struct avx512 {
    __m512i u[4], sc[4];
    __mmask64 neg[4];
    NUMOE_TARGET_AVX512VNNI static __m512i lookup(const uint16_t *t, __m512i ix, __mmask32 b6,
                                                  __mmask32 b7, __mmask32 b8) {
      __m512i p[8];
      for (int k = 0; k < 8; ++k)
        p[k] = _mm512_permutex2var_epi16(_mm512_load_si512(t + 64 * k), ix,
                                         _mm512_load_si512(t + 64 * k + 32));
      for (int k = 0; k < 4; ++k) p[k] = _mm512_mask_mov_epi16(p[2 * k], b6, p[2 * k + 1]);
      for (int k = 0; k < 2; ++k) p[k] = _mm512_mask_mov_epi16(p[2 * k], b7, p[2 * k + 1]);
      return _mm512_mask_mov_epi16(p[0], b8, p[1]);
    }
    NUMOE_TARGET_AVX512VNNI explicit avx512(const block_iq3_s &x) {
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
        uint32_t b8;  // bit m: row 32h + m's ninth index bit
        std::memcpy(&b8, x.qh + 4 * h, 4);
        const __m512i lo = lookup(kIq3sWords.lo, ix, b6, b7, _cvtu32_mask32(b8));
        const __m512i hi = lookup(kIq3sWords.hi, ix, b6, b7, _cvtu32_mask32(b8));
        for (int k = 0; k < 2; ++k)
          u[2 * h + k] = _mm512_permutex2var_epi16(lo, _mm512_load_si512(kInter[k]), hi);
      }
      for (int r = 0; r < 4; ++r) {
        uint64_t s;
        std::memcpy(&s, x.signs + 8 * r, 8);
        neg[r] = _cvtu64_mask64(s);
      }
      const __m512i ls = _mm512_broadcast_i32x4(scales(x));
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

constexpr vec_dot_fn vec_dot_iq3_s_scalar = iq::vec_dot_scalar<fmt_iq3_s>;

#ifdef NUMOE_X86
constexpr vec_dot_fn vec_dot_iq3_s_avx2 = iq::vec_dot_avx2<fmt_iq3_s, fmt_iq3_s::avx2>;
constexpr vec_dot_fn vec_dot_iq3_s_avx512 = iq::vec_dot_avx512<fmt_iq3_s, fmt_iq3_s::avx512>;
template <int N>
constexpr simd::q8_K_row_fn iq3_s_n_avx2 = iq::row_n_avx2<fmt_iq3_s, fmt_iq3_s::avx2, N>;
template <int N>
constexpr simd::q8_K_row_fn iq3_s_n_avx512 = iq::row_n_avx512<fmt_iq3_s, fmt_iq3_s::avx512, N>;

NUMOE_VEC_DOT_N(iq3_s, avx2, NUMOE_ROW_BODIES)
NUMOE_VEC_DOT_N(iq3_s, avx512, NUMOE_ROW_BODIES)
#endif

}  // namespace

const TypeInfo &info_iq3_s() {
  static const TypeInfo t = {
      IQ3_S,
      "IQ3_S",
      QK_K,
      sizeof(block_iq3_s),
      Q8_K,
      dequantize_iq3_s,
#ifdef NUMOE_X86
      {vec_dot_iq3_s_scalar, vec_dot_iq3_s_avx2, vec_dot_iq3_s_avx512},
#else
      {vec_dot_iq3_s_scalar, nullptr, nullptr},
#endif
      true,
      {nullptr, nullptr, nullptr},
#ifdef NUMOE_X86
      {vec_dot_n_loop<vec_dot_iq3_s_scalar>, vec_dot_n_iq3_s_avx2, vec_dot_n_iq3_s_avx512},
#else
      {vec_dot_n_loop<vec_dot_iq3_s_scalar>, nullptr, nullptr},
#endif
  };
  return t;
}

}  // namespace numoe::quant
