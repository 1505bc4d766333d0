// Q8_0: blocks of 32 int8 with one fp16 scale. Used both as a weight format and as the
// activation format for Q8_0 / Q4_0 weights (quantize_row_q8_0).
#include <cmath>
#include <limits>

#include "quant.hpp"
#include "simd.hpp"

namespace numoe::quant {
namespace {

void dequantize_q8_0(const void *src, float *dst, int64_t n) {
  const block_q8_0 *b = static_cast<const block_q8_0 *>(src);
  for (int64_t i = 0; i < n / QK8_0; ++i) {
    const float d = fp16_to_fp32(b[i].d);
    for (int j = 0; j < QK8_0; ++j) dst[i * QK8_0 + j] = static_cast<float>(b[i].qs[j]) * d;
  }
}

// A block holding NaN or inf: d = NaN, every q 0, so that each dot product with it is NaN
// (the model's output says so) rather than finite values made from the rest of the block.
void nonfinite_q8_0(block_q8_0 &y) {
  std::memset(&y, 0, sizeof(block_q8_0));
  y.d = fp32_to_fp16(std::numeric_limits<float>::quiet_NaN());
}

// ggml's quantize_row_q8_0_ref: d = max|x| / 127, q = roundf(x / d) (ties away from zero).
// (A block with NaN or inf: nonfinite_q8_0.)
void quantize_q8_0_scalar(const float *x, void *dst, int64_t n) {
  block_q8_0 *y = static_cast<block_q8_0 *>(dst);
  for (int64_t i = 0; i < n / QK8_0; ++i, x += QK8_0) {
    float amax = 0.f;
    bool finite = true;
    for (int j = 0; j < QK8_0; ++j) {
      finite = finite && std::fabs(x[j]) <= std::numeric_limits<float>::max();
      amax = std::fmax(amax, std::fabs(x[j]));
    }
    if (!finite) {
      nonfinite_q8_0(y[i]);
      continue;
    }
    const float d = amax / 127.f;
    const float id = d != 0.f ? 1.f / d : 0.f;
    y[i].d = fp32_to_fp16(d);
    for (int j = 0; j < QK8_0; ++j) y[i].qs[j] = static_cast<int8_t>(std::roundf(x[j] * id));
  }
}

float vec_dot_q8_0_scalar(int n, const void *w, const void *act) {
  const block_q8_0 *x = static_cast<const block_q8_0 *>(w);
  const block_q8_0 *y = static_cast<const block_q8_0 *>(act);
  float s = 0.f;
  for (int i = 0; i < n / QK8_0; ++i) {
    int32_t sumi = 0;
    for (int j = 0; j < QK8_0; ++j) sumi += x[i].qs[j] * y[i].qs[j];
    s += static_cast<float>(sumi) * (fp16_to_fp32(x[i].d) * fp16_to_fp32(y[i].d));
  }
  return s;
}

#ifdef NUMOE_X86
using simd::load32;

NUMOE_TARGET_AVX2 inline __m256i q8_0_values(const block_q8_0 &x) { return load32(x.qs); }

// roundf on 8 lanes: truncate, then step away from zero when the dropped part is >= 0.5.
NUMOE_TARGET_AVX2 inline __m256i roundf_epi32(__m256 v) {
  const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m256 sign = _mm256_and_ps(v, _mm256_set1_ps(-0.f));
  const __m256 frac = _mm256_andnot_ps(_mm256_set1_ps(-0.f), _mm256_sub_ps(v, t));
  const __m256 step = _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ),
                                    _mm256_or_ps(sign, _mm256_set1_ps(1.f)));
  return _mm256_cvttps_epi32(_mm256_add_ps(t, step));
}

NUMOE_TARGET_AVX2 void quantize_q8_0_avx2(const float *x, void *dst, int64_t n) {
  block_q8_0 *y = static_cast<block_q8_0 *>(dst);
  const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
  for (int64_t i = 0; i < n / QK8_0; ++i, x += QK8_0) {
    __m256 v[4];
    for (int k = 0; k < 4; ++k) v[k] = _mm256_loadu_ps(x + 8 * k);
    // the largest |x| as the largest of the bit patterns |x| (the same order for floats
    // >= 0), where NaN and inf are the patterns from 0x7F800000 up: no NaN can slip past
    // a max_ps
    auto abs_bits = [&](int k) NUMOE_TARGET_AVX2 {
      return _mm256_and_si256(_mm256_castps_si256(v[k]), abs_mask);
    };
    const __m256i m = _mm256_max_epi32(_mm256_max_epi32(abs_bits(0), abs_bits(1)),
                                       _mm256_max_epi32(abs_bits(2), abs_bits(3)));
    __m128i m4 = _mm_max_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
    m4 = _mm_max_epi32(m4, _mm_shuffle_epi32(m4, _MM_SHUFFLE(1, 0, 3, 2)));
    m4 = _mm_max_epi32(m4, _mm_shuffle_epi32(m4, _MM_SHUFFLE(2, 3, 0, 1)));
    const uint32_t amax_bits = static_cast<uint32_t>(_mm_cvtsi128_si32(m4));
    if (amax_bits >= 0x7F800000u) {
      nonfinite_q8_0(y[i]);
      continue;
    }
    const float d = bits_to_f32(amax_bits) / 127.f;
    const float id = d != 0.f ? 1.f / d : 0.f;
    y[i].d = fp32_to_fp16(d);
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int k = 0; k < 4; ++k) q[k] = roundf_epi32(_mm256_mul_ps(v[k], vid));
    // packs interleave 128-bit lanes; the permute puts the 32 bytes back in order
    const __m256i p =
        _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i *>(y[i].qs),
                        _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  }
}

constexpr vec_dot_fn vec_dot_q8_0_avx2 = simd::q8_0_act_dot_avx2<block_q8_0, q8_0_values>;

// The AVX-512 level, one activation: 256-bit VNNI dot products, the AVX2 arithmetic
// otherwise (so bit-equal to it). Two blocks per 512-bit register ran slower: their scale
// pairs and register halves cost shuffles on the one port 512-bit code leaves for them.
constexpr vec_dot_fn vec_dot_q8_0_avx512 = simd::q8_0_act_dot_vnni<block_q8_0, q8_0_values>;
template <int N>
constexpr simd::body_n_fn q8_0_n_avx2 = simd::q8_0_act_n_avx2<block_q8_0, q8_0_values, N>;

// The AVX-512 level, N activations two per 512-bit register: per weight block, x goes to
// both 256-bit halves (|x| and its sign mask formed once for all activations), and half h
// of register k is activation 2k + h, fed exactly as q8_0_act_dot_vnni feeds its ymm
// accumulators (the same int32 dots, dx * dy products and FMAs in the same order, the same
// final hsum): every result equals the single body's bit for bit. dx * dy of all the
// activations is one 8-lane product per block, spread to the pairs by a permute. (Per lane,
// the single body's ymm loop run for N activations was ~1.7x slower at prefill.)
template <int N>
NUMOE_TARGET_AVX512VNNI void q8_0_n_avx512(int n, const void *w, size_t w_stride, int n_rows,
                                           const void *const *act, float *out, size_t out_stride) {
  constexpr int P = (N + 1) / 2;  // activation pairs; an odd N pads with act[0]
  const block_q8_0 *y[8];
  simd::act_ptrs(act, N, y);
  const int nb = n / QK8_0;
  const float *dy = simd::q8_0_scales(y, nb);
  const __m512i zero = _mm512_setzero_si512();
  for (int r = 0; r < n_rows; ++r) {
    const block_q8_0 *x =
        reinterpret_cast<const block_q8_0 *>(static_cast<const char *>(w) + r * w_stride);
    __m512 acc[2][P];
    for (int k = 0; k < P; ++k) acc[0][k] = acc[1][k] = _mm512_setzero_ps();
    // block i into acc[i % 2] (as the single body), two blocks per step so that the
    // accumulators stay in registers
    auto step = [&](int i, __m512 *a) NUMOE_TARGET_AVX512VNNI {
      const __m512i xb = _mm512_broadcast_i64x4(load32(x[i].qs));
      const __mmask64 neg = _mm512_movepi8_mask(xb);
      const __m512i ax = _mm512_abs_epi8(xb);
      const __m512 dd = _mm512_castps256_ps512(
          _mm256_mul_ps(_mm256_set1_ps(simd::fp16(x[i].d)), _mm256_load_ps(dy + 8 * i)));
      for (int k = 0; k < P; ++k) {
        const __m512i yv = simd::concat(load32(y[2 * k][i].qs), load32(y[2 * k + 1][i].qs));
        const __m512i p = _mm512_dpbusd_epi32(zero, ax, _mm512_mask_sub_epi8(yv, neg, zero, yv));
        const __m512i idx = simd::concat(_mm256_set1_epi32(2 * k), _mm256_set1_epi32(2 * k + 1));
        a[k] = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx, dd), _mm512_cvtepi32_ps(p), a[k]);
      }
    };
    int i = 0;
    for (; i + 2 <= nb; i += 2) {
      step(i, acc[0]);
      step(i + 1, acc[1]);
    }
    if (i < nb) step(i, acc[0]);
    for (int k = 0; k < P; ++k)
      for (int h = 0; h < 2 && 2 * k + h < N; ++h) {
        const __m256 a0 =
            h ? _mm512_extractf32x8_ps(acc[0][k], 1) : _mm512_castps512_ps256(acc[0][k]);
        const __m256 a1 =
            h ? _mm512_extractf32x8_ps(acc[1][k], 1) : _mm512_castps512_ps256(acc[1][k]);
        out[(2 * k + h) * out_stride + r] = simd::hsum(_mm256_add_ps(a0, a1));
      }
  }
}

NUMOE_VEC_DOT_N(q8_0, avx2, NUMOE_TILE_BODIES)
NUMOE_VEC_DOT_N(q8_0, avx512, NUMOE_TILE_BODIES)
#endif

}  // namespace

const TypeInfo &info_q8_0() {
  static const TypeInfo t = {
      Q8_0,
      "Q8_0",
      QK8_0,
      sizeof(block_q8_0),
      Q8_0,
      dequantize_q8_0,
#ifdef NUMOE_X86
      {vec_dot_q8_0_scalar, vec_dot_q8_0_avx2, vec_dot_q8_0_avx512},
      true,
      {quantize_q8_0_scalar, quantize_q8_0_avx2, nullptr},
#else
      {vec_dot_q8_0_scalar, nullptr, nullptr},
      true,
      {quantize_q8_0_scalar, nullptr, nullptr},
#endif
#ifdef NUMOE_X86
      {vec_dot_n_loop<vec_dot_q8_0_scalar>, vec_dot_n_q8_0_avx2, vec_dot_n_q8_0_avx512},
#else
      {vec_dot_n_loop<vec_dot_q8_0_scalar>, nullptr, nullptr},
#endif
  };
  return t;
}

}  // namespace numoe::quant
