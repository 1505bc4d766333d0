// Q8_K: the activation format for K-quant weights. Blocks of 256: float d, int8 qs[256]
// and the sums of qs in groups of 16 (bsums, used for the K-quants' min/offset terms).
// Q8_K4: the same values in Q4_K / Q5_K nibble order (see quant.hpp), for those weights.
#include <cmath>
#include <limits>

#include "quant.hpp"
#include "simd.hpp"

namespace numoe::quant {
namespace {

void dequantize_q8_K(const void *src, float *dst, int64_t n) {
  const block_q8_K *b = static_cast<const block_q8_K *>(src);
  for (int64_t i = 0; i < n / QK_K; ++i)
    for (int j = 0; j < QK_K; ++j) dst[i * QK_K + j] = b[i].d * static_cast<float>(b[i].qs[j]);
}

// A block holding NaN or inf: d = NaN, every q 0, so that each dot product with it is NaN
// (the model's output says so) rather than finite values made from the rest of the block.
void nonfinite_q8_K(block_q8_K &y) {
  std::memset(&y, 0, sizeof(block_q8_K));
  y.d = std::numeric_limits<float>::quiet_NaN();
}

// ggml's quantize_row_q8_K_ref: scale by -127 / (the value of largest magnitude, first one
// on ties), round to nearest even, clamp at 127; d = 1 / scale. (A block with NaN or inf:
// nonfinite_q8_K.)
void quantize_q8_K_scalar(const float *x, void *dst, int64_t n) {
  block_q8_K *y = static_cast<block_q8_K *>(dst);
  for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
    float max = 0.f, amax = 0.f;
    bool finite = true;
    for (int j = 0; j < QK_K; ++j) {
      const float ax = std::fabs(x[j]);
      finite = finite && ax <= std::numeric_limits<float>::max();  // false for NaN, inf
      if (ax > amax) {
        amax = ax;
        max = x[j];
      }
    }
    if (!finite) {
      nonfinite_q8_K(y[i]);
      continue;
    }
    if (amax == 0.f) {
      std::memset(&y[i], 0, sizeof(block_q8_K));
      continue;
    }
    const float iscale = -127.f / max;
    for (int j = 0; j < QK_K; ++j) {
      const int v = nearest_int(iscale * x[j]);
      y[i].qs[j] = static_cast<int8_t>(v < 127 ? v : 127);
    }
    for (int j = 0; j < QK_K / 16; ++j) {
      int sum = 0;
      for (int k = 0; k < 16; ++k) sum += y[i].qs[16 * j + k];
      y[i].bsums[j] = static_cast<int16_t>(sum);
    }
    y[i].d = 1.f / iscale;
  }
}

// Q8_K blocks -> Q8_K4 in place: sub-block j moves to 32 * k4_pos(j) (swaps 1 <-> 2 and
// 5 <-> 6), bsums become [0 x 8, the 8 sub-block sums].
void q8_K_to_k4(block_q8_K *y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    int8_t t[32];
    for (int j : {1, 5}) {
      std::memcpy(t, y[i].qs + 32 * j, 32);
      std::memcpy(y[i].qs + 32 * j, y[i].qs + 32 * (j + 1), 32);
      std::memcpy(y[i].qs + 32 * (j + 1), t, 32);
    }
    int16_t *b = y[i].bsums;
    for (int j = 7; j >= 0; --j) b[8 + j] = static_cast<int16_t>(b[2 * j] + b[2 * j + 1]);
    std::memset(b, 0, 8 * sizeof(int16_t));
  }
}

void dequantize_q8_K4(const void *src, float *dst, int64_t n) {
  const block_q8_K *b = static_cast<const block_q8_K *>(src);
  for (int64_t i = 0; i < n / QK_K; ++i)
    for (int j = 0; j < QK_K; ++j)
      dst[i * QK_K + j] = b[i].d * static_cast<float>(b[i].qs[32 * k4_pos(j / 32) + j % 32]);
}

template <quantize_fn Q8_K>
void quantize_q8_K4(const float *x, void *dst, int64_t n) {
  Q8_K(x, dst, n);
  q8_K_to_k4(static_cast<block_q8_K *>(dst), n / QK_K);
}

#ifdef NUMOE_X86
NUMOE_TARGET_AVX2 void quantize_q8_K_avx2(const float *x, void *dst, int64_t n) {
  block_q8_K *y = static_cast<block_q8_K *>(dst);
  const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
  const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
    // the largest |x| as the largest of the bit patterns |x| (the same order for floats
    // >= 0), where NaN and inf are the patterns from 0x7F800000 up: no NaN can slip past
    // a max_ps
    __m256i m = _mm256_setzero_si256();
    for (int j = 0; j < QK_K; j += 8)
      m = _mm256_max_epi32(
          m,
          _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(x + j)), abs_mask));
    __m128i m4 = _mm_max_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
    m4 = _mm_max_epi32(m4, _mm_shuffle_epi32(m4, _MM_SHUFFLE(1, 0, 3, 2)));
    m4 = _mm_max_epi32(m4, _mm_shuffle_epi32(m4, _MM_SHUFFLE(2, 3, 0, 1)));
    const uint32_t amax_bits = static_cast<uint32_t>(_mm_cvtsi128_si32(m4));
    if (amax_bits >= 0x7F800000u) {
      nonfinite_q8_K(y[i]);
      continue;
    }
    const float amax = bits_to_f32(amax_bits);
    if (amax == 0.f) {
      std::memset(&y[i], 0, sizeof(block_q8_K));
      continue;
    }
    int j = 0;  // the first element of largest magnitude (there is one: amax is finite)
    while (j < QK_K - 1 && std::fabs(x[j]) != amax) ++j;
    const float iscale = -127.f / x[j];
    const __m256 vs = _mm256_set1_ps(iscale);
    const __m256i lim = _mm256_set1_epi32(127);
    for (int k = 0; k < QK_K; k += 32) {
      __m256i q[4];
      for (int l = 0; l < 4; ++l)  // cvtps rounds to nearest even, as nearest_int
        q[l] = _mm256_min_epi32(
            _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 8 * l), vs)), lim);
      y[i].bsums[k / 16] = static_cast<int16_t>(simd::hsum_i32(_mm256_add_epi32(q[0], q[1])));
      y[i].bsums[k / 16 + 1] = static_cast<int16_t>(simd::hsum_i32(_mm256_add_epi32(q[2], q[3])));
      const __m256i p =
          _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i *>(y[i].qs + k),
                          _mm256_permutevar8x32_epi32(p, perm));
    }
    y[i].d = 1.f / iscale;
  }
}
#endif

}  // namespace

const TypeInfo &info_q8_K() {
  static const TypeInfo t = {
      Q8_K,
      "Q8_K",
      QK_K,
      sizeof(block_q8_K),
      -1,
      dequantize_q8_K,
      {nullptr, nullptr, nullptr},
      false,
#ifdef NUMOE_X86
      {quantize_q8_K_scalar, quantize_q8_K_avx2, nullptr},
#else
      {quantize_q8_K_scalar, nullptr, nullptr},
#endif
      {nullptr, nullptr, nullptr},
  };
  return t;
}

const TypeInfo &info_q8_K4() {
  static const TypeInfo t = {
      Q8_K4,
      "Q8_K4",
      QK_K,
      sizeof(block_q8_K),
      -1,
      dequantize_q8_K4,
      {nullptr, nullptr, nullptr},
      false,
#ifdef NUMOE_X86
      {quantize_q8_K4<quantize_q8_K_scalar>, quantize_q8_K4<quantize_q8_K_avx2>, nullptr},
#else
      {quantize_q8_K4<quantize_q8_K_scalar>, nullptr, nullptr},
#endif
      {nullptr, nullptr, nullptr},
  };
  return t;
}

}  // namespace numoe::quant
