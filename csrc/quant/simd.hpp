// Small x86 SIMD helpers shared by the format files (function-level targets, no global
// flags). Included only where NUMOE_X86 is defined.
#pragma once

#include "quant.hpp"

#ifdef NUMOE_X86
namespace numoe::quant::simd {

NUMOE_TARGET_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

NUMOE_TARGET_AVX2 inline int32_t hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

NUMOE_TARGET_AVX2 inline float fp16(half h) { return _cvtsh_ss(h); }

// Signed int8 x int8 dot of 32 bytes into 8 int32 lanes (|x|, |y| <= 127, or x = -128 with
// |y| <= 127): maddubs needs an unsigned operand, so move x's sign onto y.
NUMOE_TARGET_AVX2 inline __m256i dot_i8(__m256i x, __m256i y) {
  const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
  return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

NUMOE_TARGET_AVX512VNNI inline __m256i dot_i8_vnni(__m256i x, __m256i y) {
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(x, x),
                             _mm256_sign_epi8(y, x));
}

// The same on 64 bytes: zmm has no sign_epi8, so negate y under x's sign mask.
NUMOE_TARGET_AVX512VNNI inline __m512i dot_i8_vnni(__m512i x, __m512i y) {
  const __mmask64 neg = _mm512_movepi8_mask(x);
  const __m512i ys = _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y);
  return _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(x), ys);
}

NUMOE_TARGET_AVX512 inline __m512i concat(__m256i lo, __m256i hi) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

NUMOE_TARGET_AVX512 inline __m512 concat(__m256 lo, __m256 hi) {
  return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
}

}  // namespace numoe::quant::simd
#endif
