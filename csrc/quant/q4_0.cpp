// Q4_0: blocks of 32 4-bit values (offset 8) with one fp16 scale; dot against Q8_0.
#include "quant.hpp"
#include "simd.hpp"

namespace numoe::quant {
namespace {

void dequantize_q4_0(const void *src, float *dst, int64_t n) {
  const block_q4_0 *b = static_cast<const block_q4_0 *>(src);
  for (int64_t i = 0; i < n / QK4_0; ++i, dst += QK4_0) {
    const float d = fp16_to_fp32(b[i].d);
    for (int j = 0; j < QK4_0 / 2; ++j) {
      dst[j] = d * static_cast<float>((b[i].qs[j] & 0xF) - 8);
      dst[j + QK4_0 / 2] = d * static_cast<float>((b[i].qs[j] >> 4) - 8);
    }
  }
}

float vec_dot_q4_0_scalar(int n, const void *w, const void *act) {
  const block_q4_0 *x = static_cast<const block_q4_0 *>(w);
  const block_q8_0 *y = static_cast<const block_q8_0 *>(act);
  float s = 0.f;
  for (int i = 0; i < n / QK4_0; ++i) {
    int32_t sumi = 0;
    for (int j = 0; j < QK4_0 / 2; ++j)
      sumi += ((x[i].qs[j] & 0xF) - 8) * y[i].qs[j] + ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + 16];
    s += static_cast<float>(sumi) * (fp16_to_fp32(x[i].d) * fp16_to_fp32(y[i].d));
  }
  return s;
}

#ifdef NUMOE_X86
// The 32 values of a block as signed bytes in element order (low nibbles, then high).
NUMOE_TARGET_AVX2 inline __m256i unpack(const uint8_t *qs) {
  const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i *>(qs));
  const __m256i v =
      _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(0x0F));
  return _mm256_sub_epi8(v, _mm256_set1_epi8(8));
}

NUMOE_TARGET_AVX2 inline __m256i load32(const int8_t *p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p));
}

NUMOE_TARGET_AVX2 float vec_dot_q4_0_avx2(int n, const void *w, const void *act) {
  const block_q4_0 *x = static_cast<const block_q4_0 *>(w);
  const block_q8_0 *y = static_cast<const block_q8_0 *>(act);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  const int nb = n / QK4_0;
  int i = 0;
  for (; i + 2 <= nb; i += 2) {
    const __m256i p0 = simd::dot_i8(unpack(x[i].qs), load32(y[i].qs));
    const __m256i p1 = simd::dot_i8(unpack(x[i + 1].qs), load32(y[i + 1].qs));
    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(simd::fp16(x[i].d) * simd::fp16(y[i].d)),
                           _mm256_cvtepi32_ps(p0), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_set1_ps(simd::fp16(x[i + 1].d) * simd::fp16(y[i + 1].d)),
                           _mm256_cvtepi32_ps(p1), acc1);
  }
  for (; i < nb; ++i) {
    const __m256i p0 = simd::dot_i8(unpack(x[i].qs), load32(y[i].qs));
    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(simd::fp16(x[i].d) * simd::fp16(y[i].d)),
                           _mm256_cvtepi32_ps(p0), acc0);
  }
  return simd::hsum(_mm256_add_ps(acc0, acc1));
}

NUMOE_TARGET_AVX512VNNI float vec_dot_q4_0_avx512(int n, const void *w, const void *act) {
  const block_q4_0 *x = static_cast<const block_q4_0 *>(w);
  const block_q8_0 *y = static_cast<const block_q8_0 *>(act);
  __m512 acc = _mm512_setzero_ps();
  const int nb = n / QK4_0;
  int i = 0;
  for (; i + 2 <= nb; i += 2) {
    const __m512i p = simd::dot_i8_vnni(simd::concat(unpack(x[i].qs), unpack(x[i + 1].qs)),
                                        simd::concat(load32(y[i].qs), load32(y[i + 1].qs)));
    const __m512 d = simd::concat(_mm256_set1_ps(simd::fp16(x[i].d) * simd::fp16(y[i].d)),
                                  _mm256_set1_ps(simd::fp16(x[i + 1].d) * simd::fp16(y[i + 1].d)));
    acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(p), acc);
  }
  float s = _mm512_reduce_add_ps(acc);
  if (i < nb) {
    const __m256i p = simd::dot_i8_vnni(unpack(x[i].qs), load32(y[i].qs));
    s += simd::hsum(_mm256_cvtepi32_ps(p)) * (simd::fp16(x[i].d) * simd::fp16(y[i].d));
  }
  return s;
}
#endif

}  // namespace

const TypeInfo &info_q4_0() {
  static const TypeInfo t = {
      Q4_0,
      "Q4_0",
      QK4_0,
      sizeof(block_q4_0),
      Q8_0,
      dequantize_q4_0,
#ifdef NUMOE_X86
      {vec_dot_q4_0_scalar, vec_dot_q4_0_avx2, vec_dot_q4_0_avx512},
#else
      {vec_dot_q4_0_scalar, nullptr, nullptr},
#endif
      true,
      {nullptr, nullptr, nullptr},
  };
  return t;
}

}  // namespace numoe::quant
