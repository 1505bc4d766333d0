// IQ1_S: super-blocks of 256 values in 8 groups of 32; a group is 4 grid rows of 8 values in
// {-1, 0, 1} (iq1s_grid), a 3-bit scale s and a shift delta = +-1/8:
// x = d * (2s + 1) * (grid + delta). Dot against Q8_K.
//
// Integer form (every body): 8 * x / d = (2s + 1) * (8 * grid + delta8) with delta8 = +-1, so
// isum = sum_g (2s_g + 1) * sum_l (8 * grid_l + delta8_g) * q8_l and the dot is
// d * dy * isum / 8. The SIMD bodies multiply the unsigned bytes u = 8 * grid + 8 (0, 8, 16:
// an iq1s_grid_u8 row) by the activation and add (2s + 1) * (delta8 - 8) times the
// activation's sums of 16 (Q8_K bsums, one madd): the same integer.
#include "iq3_iq1_bodies.hpp"
#include "iq3_iq1_tables.hpp"

namespace numoe::quant {
namespace {

// Grid row of values 8k .. 8k + 7 (k < 32): 8 + 3 bits, so always < 2048.
inline int iq1_s_row(const block_iq1_s &x, int k) {
  return x.qs[k] | (((x.qh[k / 4] >> (3 * (k % 4))) & 7) << 8);
}

void dequantize_iq1_s(const void *src, float *dst, int64_t n) {
  const block_iq1_s *b = static_cast<const block_iq1_s *>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = fp16_to_fp32(b[i].d);
    for (int g = 0; g < 8; ++g) {
      const int qh = b[i].qh[g];
      const float dl = d * static_cast<float>(2 * ((qh >> 12) & 7) + 1);
      const float delta = qh & 0x8000 ? -kIq1Delta : kIq1Delta;
      for (int k = 4 * g; k < 4 * g + 4; ++k, dst += 8) {
        const uint64_t row = iq1s_grid[iq1_s_row(b[i], k)];
        for (int j = 0; j < 8; ++j)
          dst[j] = dl * (static_cast<float>(static_cast<int8_t>(row >> (8 * j))) + delta);
      }
    }
  }
}

struct fmt_iq1_s {
  using block = block_iq1_s;
  static constexpr float kFactor = 0.125f;
  static half d_bits(const block_iq1_s &x) { return x.d; }

  static int32_t isum(const block_iq1_s &x, const block_q8_K &y) {
    int32_t s = 0;
    for (int g = 0; g < 8; ++g) {
      const int qh = x.qh[g];
      int32_t sg = 0, sa = 0;  // grid . q8, sum of q8
      for (int k = 4 * g; k < 4 * g + 4; ++k) {
        const uint64_t row = iq1s_grid[iq1_s_row(x, k)];
        const int8_t *a = y.qs + 8 * k;
        for (int j = 0; j < 8; ++j) {
          sg += static_cast<int8_t>(row >> (8 * j)) * a[j];
          sa += a[j];
        }
      }
      s += (2 * ((qh >> 12) & 7) + 1) * (8 * sg + (qh & 0x8000 ? -sa : sa));
    }
    return s;
  }

#ifdef NUMOE_X86
  // Per super-block: ls = 2s + 1 per group (8 words) and the bsums coefficients of each 16
  // values, ls * (delta8 - 8): the -8 * ls undoes the grid's + 1 (u = 8 * grid + 8) and the
  // shift's term is whole per group, so it joins them (no per-value shift bytes).
  struct parts {
    __m128i ls;
    __m256i corr;
    NUMOE_TARGET_AVX2 explicit parts(const block_iq1_s &x) {
      const __m128i qh = _mm_loadu_si128(reinterpret_cast<const __m128i *>(x.qh));
      ls = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(qh, 12), _mm_set1_epi16(7)), 1),
                        _mm_set1_epi16(1));
      // delta8 - 8 = -7 (bit 15 clear) or -9 (set): -7 + 2 * (qh >> 15 arithmetic)
      const __m128i c = _mm_mullo_epi16(
          ls, _mm_add_epi16(_mm_set1_epi16(-7), _mm_slli_epi16(_mm_srai_epi16(qh, 15), 1)));
      corr = _mm256_setr_m128i(_mm_unpacklo_epi16(c, c), _mm_unpackhi_epi16(c, c));
    }
  };

  // The grid bytes (iq1s_grid_u8) of group g (AVX2: the indices formed one by one, measured
  // no slower here than a vector of them read back).
  NUMOE_TARGET_AVX2 static __m256i rows(const block_iq1_s &x, int g) {
    const uint64_t *t = iq1s_grid_u8.data();
    const uint8_t *q = x.qs + 4 * g;
    const int h = x.qh[g];
    return _mm256_setr_epi64x(static_cast<int64_t>(t[q[0] | ((h << 8) & 0x700)]),
                              static_cast<int64_t>(t[q[1] | ((h << 5) & 0x700)]),
                              static_cast<int64_t>(t[q[2] | ((h << 2) & 0x700)]),
                              static_cast<int64_t>(t[q[3] | ((h >> 1) & 0x700)]));
  }

  // u[g]: group g's 32 values; sc[g]: its scale in every word.
  struct avx2 {
    __m256i u[8], sc[8], corr;
    NUMOE_TARGET_AVX2 explicit avx2(const block_iq1_s &x) {
      for (int g = 0; g < 8; ++g) u[g] = rows(x, g);
      const parts p(x);
      corr = p.corr;
      const __m256i ls = _mm256_broadcastsi128_si256(p.ls);
      for (int g = 0; g < 8; ++g)
        sc[g] = _mm256_shuffle_epi8(ls, _mm256_set1_epi16(simd::word_idx(g)));
    }
    NUMOE_TARGET_AVX2 __m256i dot(const block_q8_K &y) const {
      return iq::iq1_dot_avx2(u, sc, corr, y);
    }
  };

  // u[r]: groups 2r, 2r + 1 (64 values); sc[r]: their scales (low / high 256 bits).
  struct avx512 {
    __m512i u[4], sc[4];
    __m256i corr;
    NUMOE_TARGET_AVX512VNNI explicit avx512(const block_iq1_s &x) {
      alignas(64) static constexpr int16_t kGroup[32] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                                         2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5,
                                                         5, 5, 6, 6, 6, 6, 7, 7, 7, 7};
      alignas(64) static constexpr int16_t kShift[32] = {0, 3, 6, 9, 0, 3, 6, 9, 0, 3, 6,
                                                         9, 0, 3, 6, 9, 0, 3, 6, 9, 0, 3,
                                                         6, 9, 0, 3, 6, 9, 0, 3, 6, 9};
      alignas(64) static constexpr int16_t kScale[4][32] = {
          {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
           1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1},
          {2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
           3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3},
          {4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
           5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5},
          {6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6,
           7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7}};
      const __m512i qh =
          _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i *>(x.qh)));
      const __m512i hi = _mm512_and_si512(
          _mm512_srlv_epi16(_mm512_permutexvar_epi16(_mm512_load_si512(kGroup), qh),
                            _mm512_load_si512(kShift)),
          _mm512_set1_epi16(7));
      const __m512i ix = _mm512_or_si512(
          _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.qs))),
          _mm512_slli_epi16(hi, 8));
      iq::iq1_rows_avx512(ix, u);
      const parts p(x);
      corr = p.corr;
      const __m512i ls = _mm512_castsi128_si512(p.ls);
      for (int r = 0; r < 4; ++r)
        sc[r] = _mm512_permutexvar_epi16(_mm512_load_si512(kScale[r]), ls);
    }
    NUMOE_TARGET_AVX512VNNI __m512i dot(const block_q8_K &y) const {
      return iq::iq1_dot_avx512(u, sc, corr, y);
    }
  };
#endif
};

constexpr vec_dot_fn vec_dot_iq1_s_scalar = iq::vec_dot_scalar<fmt_iq1_s>;

#ifdef NUMOE_X86
constexpr vec_dot_fn vec_dot_iq1_s_avx2 = iq::vec_dot_avx2<fmt_iq1_s, fmt_iq1_s::avx2>;
constexpr vec_dot_fn vec_dot_iq1_s_avx512 = iq::vec_dot_avx512<fmt_iq1_s, fmt_iq1_s::avx512>;
template <int N>
constexpr simd::q8_K_row_fn iq1_s_n_avx2 = iq::row_n_avx2<fmt_iq1_s, fmt_iq1_s::avx2, N>;
template <int N>
constexpr simd::q8_K_row_fn iq1_s_n_avx512 = iq::row_n_avx512<fmt_iq1_s, fmt_iq1_s::avx512, N>;

NUMOE_VEC_DOT_N(iq1_s, avx2, NUMOE_ROW_BODIES)
NUMOE_VEC_DOT_N(iq1_s, avx512, NUMOE_ROW_BODIES)
#endif

}  // namespace

const TypeInfo &info_iq1_s() {
  static const TypeInfo t = {
      IQ1_S,
      "IQ1_S",
      QK_K,
      sizeof(block_iq1_s),
      Q8_K,
      dequantize_iq1_s,
#ifdef NUMOE_X86
      {vec_dot_iq1_s_scalar, vec_dot_iq1_s_avx2, vec_dot_iq1_s_avx512},
#else
      {vec_dot_iq1_s_scalar, nullptr, nullptr},
#endif
      true,
      {nullptr, nullptr, nullptr},
#ifdef NUMOE_X86
      {vec_dot_n_loop<vec_dot_iq1_s_scalar>, vec_dot_n_iq1_s_avx2, vec_dot_n_iq1_s_avx512},
#else
      {vec_dot_n_loop<vec_dot_iq1_s_scalar>, nullptr, nullptr},
#endif
  };
  return t;
}

}  // namespace numoe::quant
