// IQ1_M: super-blocks of 256 values in 32 grid rows of 8 values in {-1, 0, 1} (iq1s_grid),
// each row with its own shift delta = +-1/8, and a 3-bit scale s per 16 values:
// x = d * (2s + 1) * (grid + delta). d has no field of its own: its fp16 bits are the top
// nibbles of the 4 scale words. Dot against Q8_K.
//
// Integer form (every body), as IQ1_S's: 8 * x / d = (2s + 1) * (8 * grid + delta8) with
// delta8 = +-1, isum = sum over 16-value sets t of (2s_t + 1) * sum_l (8 * grid_l +
// delta8_l) * q8_l, and the dot is d * dy * isum / 8. The SIMD bodies use the unsigned bytes
// u = 8 * grid + delta8 + 9 (an iq1s_grid_u8 row OR-ed with delta8 + 1 per row) and subtract
// 9 * (2s_t + 1) times Q8_K's bsums[t] (one madd): the same integer.
#include "iq3_iq1_bodies.hpp"
#include "iq3_iq1_tables.hpp"

namespace numoe::quant {
namespace {

inline uint16_t iq1_m_word(const block_iq1_m &x, int w) {  // scale word w < 4
  uint16_t v;
  std::memcpy(&v, x.scales + 2 * w, 2);
  return v;
}

// The fp16 bits of d: the top nibble of scale word w is bits 4w .. 4w + 3.
inline half iq1_m_d(const block_iq1_m &x) {
  return static_cast<half>((iq1_m_word(x, 0) >> 12) | ((iq1_m_word(x, 1) >> 8) & 0x00F0) |
                           ((iq1_m_word(x, 2) >> 4) & 0x0F00) | (iq1_m_word(x, 3) & 0xF000));
}

inline int iq1_m_scale(const block_iq1_m &x, int t) {  // 2s + 1 of values 16t .. 16t + 15
  return 2 * ((iq1_m_word(x, t / 4) >> (3 * (t % 4))) & 7) + 1;
}

inline int iq1_m_nibble(const block_iq1_m &x, int k) {  // row k's high index bits and sign
  return (x.qh[k / 2] >> (4 * (k % 2))) & 0xF;
}

// Grid row of values 8k .. 8k + 7 (k < 32): 8 + 3 bits, so always < 2048.
inline int iq1_m_row(const block_iq1_m &x, int k) {
  return x.qs[k] | ((iq1_m_nibble(x, k) & 7) << 8);
}

void dequantize_iq1_m(const void *src, float *dst, int64_t n) {
  const block_iq1_m *b = static_cast<const block_iq1_m *>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = fp16_to_fp32(iq1_m_d(b[i]));
    for (int k = 0; k < 32; ++k, dst += 8) {
      const float dl = d * static_cast<float>(iq1_m_scale(b[i], k / 2));
      const float delta = iq1_m_nibble(b[i], k) & 8 ? -kIq1Delta : kIq1Delta;
      const uint64_t row = iq1s_grid[iq1_m_row(b[i], k)];
      for (int j = 0; j < 8; ++j)
        dst[j] = dl * (static_cast<float>(static_cast<int8_t>(row >> (8 * j))) + delta);
    }
  }
}

struct fmt_iq1_m {
  using block = block_iq1_m;
  static constexpr float kFactor = 0.125f;
  static half d_bits(const block_iq1_m &x) { return iq1_m_d(x); }

  static int32_t isum(const block_iq1_m &x, const block_q8_K &y) {
    int32_t s = 0;
    for (int t = 0; t < 16; ++t) {
      int32_t st = 0;
      for (int k = 2 * t; k < 2 * t + 2; ++k) {
        const uint64_t row = iq1s_grid[iq1_m_row(x, k)];
        const int8_t *a = y.qs + 8 * k;
        int32_t sg = 0, sa = 0;  // grid . q8, sum of q8
        for (int j = 0; j < 8; ++j) {
          sg += static_cast<int8_t>(row >> (8 * j)) * a[j];
          sa += a[j];
        }
        st += 8 * sg + (iq1_m_nibble(x, k) & 8 ? -sa : sa);
      }
      s += iq1_m_scale(x, t) * st;
    }
    return s;
  }

#ifdef NUMOE_X86
  // Per super-block: ls = 2s + 1 of the 16 value sets (words), e = delta8 + 1 (0 or 2) of the
  // 32 rows (bytes), and the bsums coefficients -9 * ls.
  struct parts {
    __m256i ls, e, corr;
    NUMOE_TARGET_AVX2 explicit parts(const block_iq1_m &x) {
      // word t = scale word t / 4, shifted so that bits 3 (t % 4) .. + 2 end up in bits 13..15
      const __m256i w = _mm256_shuffle_epi8(
          _mm256_broadcastq_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(x.scales))),
          _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3,  //
                           4, 5, 4, 5, 4, 5, 4, 5, 6, 7, 6, 7, 6, 7, 6, 7));
      const __m256i s = _mm256_srli_epi16(
          _mm256_mullo_epi16(w, _mm256_setr_epi16(1 << 13, 1 << 10, 1 << 7, 1 << 4, 1 << 13,
                                                  1 << 10, 1 << 7, 1 << 4, 1 << 13, 1 << 10, 1 << 7,
                                                  1 << 4, 1 << 13, 1 << 10, 1 << 7, 1 << 4)),
          13);
      ls = _mm256_or_si256(_mm256_slli_epi16(s, 1), _mm256_set1_epi16(1));
      corr = _mm256_mullo_epi16(ls, _mm256_set1_epi16(-9));
      // row 2j: bit 3 of qh[j], row 2j + 1: bit 7; e = 2 where the bit is clear
      const __m128i qh = _mm_loadu_si128(reinterpret_cast<const __m128i *>(x.qh));
      const __m128i two = _mm_set1_epi8(2);
      const __m128i e_lo = _mm_andnot_si128(_mm_srli_epi16(qh, 2), two);
      const __m128i e_hi = _mm_andnot_si128(_mm_srli_epi16(qh, 6), two);
      e = _mm256_setr_m128i(_mm_unpacklo_epi8(e_lo, e_hi), _mm_unpackhi_epi8(e_lo, e_hi));
    }
  };

  // The grid bytes (iq1s_grid_u8) of rows 4g .. 4g + 3 (AVX2: the indices formed one by
  // one, measured faster here than a vector of them read back).
  NUMOE_TARGET_AVX2 static __m256i rows(const block_iq1_m &x, int g) {
    const uint64_t *t = iq1s_grid_u8.data();
    const uint8_t *q = x.qs + 4 * g;
    const int h0 = x.qh[2 * g], h1 = x.qh[2 * g + 1];
    return _mm256_setr_epi64x(static_cast<int64_t>(t[q[0] | ((h0 << 8) & 0x700)]),
                              static_cast<int64_t>(t[q[1] | ((h0 << 4) & 0x700)]),
                              static_cast<int64_t>(t[q[2] | ((h1 << 8) & 0x700)]),
                              static_cast<int64_t>(t[q[3] | ((h1 << 4) & 0x700)]));
  }

  // u[g]: values 32g .. 32g + 31; sc[g]: the scales of its two 16-value sets (128-bit lanes).
  struct avx2 {
    __m256i u[8], sc[8], corr;
    NUMOE_TARGET_AVX2 explicit avx2(const block_iq1_m &x) {
      const parts p(x);
      corr = p.corr;
      // byte b of dword g to values 8b .. 8b + 7; words 0 / 1 of dword g to the lanes
      const __m256i rep = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                           2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
      const __m256i lane_word =
          _mm256_setr_m128i(_mm_set1_epi16(simd::word_idx(0)), _mm_set1_epi16(simd::word_idx(1)));
      for (int g = 0; g < 8; ++g) {
        const __m256i dw = _mm256_set1_epi32(g);
        u[g] = _mm256_or_si256(rows(x, g),
                               _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(p.e, dw), rep));
        sc[g] = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(p.ls, dw), lane_word);
      }
    }
    NUMOE_TARGET_AVX2 __m256i dot(const block_q8_K &y) const {
      return iq::iq1_dot_avx2(u, sc, corr, y);
    }
  };

  // u[r]: values 64r .. 64r + 63; sc[r]: 128-bit lane j holds the scale of set 4r + j.
  struct avx512 {
    __m512i u[4], sc[4];
    __m256i corr;
    NUMOE_TARGET_AVX512VNNI explicit avx512(const block_iq1_m &x) {
      const parts p(x);
      corr = p.corr;
      // lane j of u[r]: rows 8r + 2j, 8r + 2j + 1 = bytes 2j, 2j + 1 of e's qword r
      alignas(64) static constexpr int8_t kRep[64] = {
          0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2,
          2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5,
          5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7};
      const __m512i rep = _mm512_load_si512(kRep);
      // lane j of sc[r]: the scale of values 64r + 16j .. + 15
      alignas(64) static constexpr int16_t kScale[4][32] = {
          {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
           2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
          {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5,
           6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7},
          {8,  8,  8,  8,  8,  8,  8,  8,  9,  9,  9,  9,  9,  9,  9,  9,
           10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11},
          {12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13,
           14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15}};
      alignas(64) static constexpr int16_t kByte[32] = {0,  0,  1,  1,  2,  2,  3,  3,  4,  4,  5,
                                                        5,  6,  6,  7,  7,  8,  8,  9,  9,  10, 10,
                                                        11, 11, 12, 12, 13, 13, 14, 14, 15, 15};
      alignas(64) static constexpr int16_t kNibble[32] = {0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0,
                                                          4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4,
                                                          0, 4, 0, 4, 0, 4, 0, 4, 0, 4};
      const __m512i qh = _mm512_cvtepu8_epi16(
          _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i *>(x.qh))));
      const __m512i hi =
          _mm512_and_si512(_mm512_srlv_epi16(_mm512_permutexvar_epi16(_mm512_load_si512(kByte), qh),
                                             _mm512_load_si512(kNibble)),
                           _mm512_set1_epi16(7));
      iq::iq1_rows_avx512(
          _mm512_or_si512(
              _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.qs))),
              _mm512_slli_epi16(hi, 8)),
          u);
      const __m512i e = _mm512_zextsi256_si512(p.e), ls = _mm512_zextsi256_si512(p.ls);
      for (int r = 0; r < 4; ++r) {
        const __m512i eb =
            _mm512_shuffle_epi8(_mm512_permutexvar_epi64(_mm512_set1_epi64(r), e), rep);
        u[r] = _mm512_or_si512(u[r], eb);
        sc[r] = _mm512_permutexvar_epi16(_mm512_load_si512(kScale[r]), ls);
      }
    }
    NUMOE_TARGET_AVX512VNNI __m512i dot(const block_q8_K &y) const {
      return iq::iq1_dot_avx512(u, sc, corr, y);
    }
  };
#endif
};

constexpr vec_dot_fn vec_dot_iq1_m_scalar = iq::vec_dot_scalar<fmt_iq1_m>;

#ifdef NUMOE_X86
constexpr vec_dot_fn vec_dot_iq1_m_avx2 = iq::vec_dot_avx2<fmt_iq1_m, fmt_iq1_m::avx2>;
constexpr vec_dot_fn vec_dot_iq1_m_avx512 = iq::vec_dot_avx512<fmt_iq1_m, fmt_iq1_m::avx512>;
template <int N>
constexpr simd::q8_K_row_fn iq1_m_n_avx2 = iq::row_n_avx2<fmt_iq1_m, fmt_iq1_m::avx2, N>;
template <int N>
constexpr simd::q8_K_row_fn iq1_m_n_avx512 = iq::row_n_avx512<fmt_iq1_m, fmt_iq1_m::avx512, N>;

NUMOE_VEC_DOT_N(iq1_m, avx2, NUMOE_ROW_BODIES)
NUMOE_VEC_DOT_N(iq1_m, avx512, NUMOE_ROW_BODIES)
#endif

}  // namespace

const TypeInfo &info_iq1_m() {
  static const TypeInfo t = {
      IQ1_M,
      "IQ1_M",
      QK_K,
      sizeof(block_iq1_m),
      Q8_K,
      dequantize_iq1_m,
#ifdef NUMOE_X86
      {vec_dot_iq1_m_scalar, vec_dot_iq1_m_avx2, vec_dot_iq1_m_avx512},
#else
      {vec_dot_iq1_m_scalar, nullptr, nullptr},
#endif
      true,
      {nullptr, nullptr, nullptr},
#ifdef NUMOE_X86
      {vec_dot_n_loop<vec_dot_iq1_m_scalar>, vec_dot_n_iq1_m_avx2, vec_dot_n_iq1_m_avx512},
#else
      {vec_dot_n_loop<vec_dot_iq1_m_scalar>, nullptr, nullptr},
#endif
  };
  return t;
}

}  // namespace numoe::quant
