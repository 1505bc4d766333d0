// The float weight formats (F32, F16, BF16: blocks of 1) against an f32 activation: one
// body per ISA level, templated over the element type E, which gives the conversion:
//   E::elem                the stored element type
//   E::to_f32(e)           one element as float (scalar)
//   E::load8(p)            8 elements as __m256 (AVX2)
//   E::load16(p)           16 elements as __m512 (AVX-512)
//   E::load16_masked(m, p) the elements of mask m as __m512, the others 0, reading no others
// Four accumulators over 32 (AVX2) or 64 (AVX-512) elements a step, then the tail.
#pragma once

#include <cstring>
#include <type_traits>

#include "quant.hpp"
#include "simd.hpp"

namespace numoe::quant {

template <typename E>
void dequantize_float(const void *src, float *dst, int64_t n) {
  if constexpr (std::is_same_v<typename E::elem, float>) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
  } else {
    const typename E::elem *h = static_cast<const typename E::elem *>(src);
    for (int64_t i = 0; i < n; ++i) dst[i] = E::to_f32(h[i]);
  }
}

template <typename E>
float vec_dot_float_scalar(int n, const void *w, const void *x) {
  const typename E::elem *a = static_cast<const typename E::elem *>(w);
  const float *b = static_cast<const float *>(x);
  float s = 0.f;
  for (int i = 0; i < n; ++i) s += E::to_f32(a[i]) * b[i];
  return s;
}

#ifdef NUMOE_X86
template <typename E>
NUMOE_TARGET_AVX2 float vec_dot_float_avx2(int n, const void *w, const void *x) {
  const typename E::elem *a = static_cast<const typename E::elem *>(w);
  const float *b = static_cast<const float *>(x);
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
  int i = 0;
  for (; i + 32 <= n; i += 32)
    for (int k = 0; k < 4; ++k)
      acc[k] = _mm256_fmadd_ps(E::load8(a + i + 8 * k), _mm256_loadu_ps(b + i + 8 * k), acc[k]);
  for (; i + 8 <= n; i += 8)
    acc[0] = _mm256_fmadd_ps(E::load8(a + i), _mm256_loadu_ps(b + i), acc[0]);
  float s = simd::hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  for (; i < n; ++i) s += E::to_f32(a[i]) * b[i];
  return s;
}

template <typename E>
NUMOE_TARGET_AVX512 float vec_dot_float_avx512(int n, const void *w, const void *x) {
  const typename E::elem *a = static_cast<const typename E::elem *>(w);
  const float *b = static_cast<const float *>(x);
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps()};
  int i = 0;
  for (; i + 64 <= n; i += 64)
    for (int k = 0; k < 4; ++k)
      acc[k] = _mm512_fmadd_ps(E::load16(a + i + 16 * k), _mm512_loadu_ps(b + i + 16 * k), acc[k]);
  for (; i < n; i += 16) {  // masked tail: no reads past n
    const __mmask16 m = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1);
    acc[0] = _mm512_fmadd_ps(E::load16_masked(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc[0]);
  }
  return _mm512_reduce_add_ps(
      _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}
#endif

// The registry entry of a float format: weights x F32 activations, no vec_dot_n (the
// linear op loops over vec_dot).
template <typename E>
constexpr TypeInfo float_type_info(int type, const char *name, quantize_fn as_activation) {
  return {
      type,
      name,
      1,
      sizeof(typename E::elem),
      F32,
      dequantize_float<E>,
#ifdef NUMOE_X86
      {vec_dot_float_scalar<E>, vec_dot_float_avx2<E>, vec_dot_float_avx512<E>},
#else
      {vec_dot_float_scalar<E>, nullptr, nullptr},
#endif
      false,
      {as_activation, nullptr, nullptr},
      {nullptr, nullptr, nullptr},
  };
}

}  // namespace numoe::quant
