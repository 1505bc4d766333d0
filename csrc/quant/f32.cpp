// F32 weights (block of 1) x f32 activation.
#include "quant.hpp"
#include "simd.hpp"

namespace numoe::quant {
namespace {

void dequantize_f32(const void *src, float *dst, int64_t n) {
  std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
}

void copy_f32(const float *src, void *dst, int64_t n) {
  std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
}

float vec_dot_f32_scalar(int n, const void *w, const void *x) {
  const float *a = static_cast<const float *>(w), *b = static_cast<const float *>(x);
  float s = 0.f;
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

#ifdef NUMOE_X86
NUMOE_TARGET_AVX2 float vec_dot_f32_avx2(int n, const void *w, const void *x) {
  const float *a = static_cast<const float *>(w), *b = static_cast<const float *>(x);
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
  int i = 0;
  for (; i + 32 <= n; i += 32)
    for (int k = 0; k < 4; ++k)
      acc[k] =
          _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8 * k), _mm256_loadu_ps(b + i + 8 * k), acc[k]);
  for (; i + 8 <= n; i += 8)
    acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc[0]);
  float s = simd::hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

NUMOE_TARGET_AVX512 float vec_dot_f32_avx512(int n, const void *w, const void *x) {
  const float *a = static_cast<const float *>(w), *b = static_cast<const float *>(x);
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps()};
  int i = 0;
  for (; i + 64 <= n; i += 64)
    for (int k = 0; k < 4; ++k)
      acc[k] =
          _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16 * k), _mm512_loadu_ps(b + i + 16 * k), acc[k]);
  for (; i < n; i += 16) {  // masked tail: no reads past n
    const __mmask16 m = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1);
    acc[0] =
        _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc[0]);
  }
  return _mm512_reduce_add_ps(
      _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}
#endif

}  // namespace

const TypeInfo &info_f32() {
  static const TypeInfo t = {
      F32,
      "F32",
      1,
      4,
      F32,
      dequantize_f32,
#ifdef NUMOE_X86
      {vec_dot_f32_scalar, vec_dot_f32_avx2, vec_dot_f32_avx512},
#else
      {vec_dot_f32_scalar, nullptr, nullptr},
#endif
      false,
      {copy_f32, nullptr, nullptr},  // as an activation type: a copy
      {nullptr, nullptr, nullptr},
  };
  return t;
}

}  // namespace numoe::quant
