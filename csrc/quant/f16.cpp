// F16 weights (block of 1) x f32 activation.
#include "quant.hpp"
#include "simd.hpp"

namespace numoe::quant {
namespace {

void dequantize_f16(const void *src, float *dst, int64_t n) {
  const uint16_t *h = static_cast<const uint16_t *>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(h[i]);
}

float vec_dot_f16_scalar(int n, const void *w, const void *x) {
  const uint16_t *a = static_cast<const uint16_t *>(w);
  const float *b = static_cast<const float *>(x);
  float s = 0.f;
  for (int i = 0; i < n; ++i) s += fp16_to_fp32(a[i]) * b[i];
  return s;
}

#ifdef NUMOE_X86
NUMOE_TARGET_AVX2 inline __m256 load8(const uint16_t *p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
}

NUMOE_TARGET_AVX2 float vec_dot_f16_avx2(int n, const void *w, const void *x) {
  const uint16_t *a = static_cast<const uint16_t *>(w);
  const float *b = static_cast<const float *>(x);
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
  int i = 0;
  for (; i + 32 <= n; i += 32)
    for (int k = 0; k < 4; ++k)
      acc[k] = _mm256_fmadd_ps(load8(a + i + 8 * k), _mm256_loadu_ps(b + i + 8 * k), acc[k]);
  for (; i + 8 <= n; i += 8) acc[0] = _mm256_fmadd_ps(load8(a + i), _mm256_loadu_ps(b + i), acc[0]);
  float s = simd::hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  for (; i < n; ++i) s += fp16_to_fp32(a[i]) * b[i];
  return s;
}

NUMOE_TARGET_AVX512 inline __m512 load16(__m256i h) { return _mm512_cvtph_ps(h); }

NUMOE_TARGET_AVX512 float vec_dot_f16_avx512(int n, const void *w, const void *x) {
  const uint16_t *a = static_cast<const uint16_t *>(w);
  const float *b = static_cast<const float *>(x);
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps()};
  int i = 0;
  for (; i + 64 <= n; i += 64)
    for (int k = 0; k < 4; ++k)
      acc[k] = _mm512_fmadd_ps(load16(_mm256_loadu_si256((const __m256i *)(a + i + 16 * k))),
                               _mm512_loadu_ps(b + i + 16 * k), acc[k]);
  for (; i < n; i += 16) {  // masked tail: no reads past n
    const __mmask16 m = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1);
    acc[0] = _mm512_fmadd_ps(load16(_mm256_maskz_loadu_epi16(m, a + i)),
                             _mm512_maskz_loadu_ps(m, b + i), acc[0]);
  }
  return _mm512_reduce_add_ps(
      _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}
#endif

}  // namespace

const TypeInfo &info_f16() {
  static const TypeInfo t = {
      F16,
      "F16",
      1,
      2,
      F32,
      dequantize_f16,
#ifdef NUMOE_X86
      {vec_dot_f16_scalar, vec_dot_f16_avx2, vec_dot_f16_avx512},
#else
      {vec_dot_f16_scalar, nullptr, nullptr},
#endif
      false,
      {nullptr, nullptr, nullptr},
      {nullptr, nullptr, nullptr},
  };
  return t;
}

}  // namespace numoe::quant
