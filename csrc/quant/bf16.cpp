// BF16 weights (block of 1) x f32 activation (float_dot.hpp's bodies).
// The activation stays f32 (see quant.hpp): widening bf16 is a 16-bit shift.
#include "float_dot.hpp"

namespace numoe::quant {
namespace {

struct bf16 {
  using elem = uint16_t;
  static float to_f32(uint16_t h) { return bf16_to_fp32(h); }
#ifdef NUMOE_X86
  NUMOE_TARGET_AVX2 static __m256 load8(const uint16_t *p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i *>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  NUMOE_TARGET_AVX512 static __m512 widen16(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  NUMOE_TARGET_AVX512 static __m512 load16(const uint16_t *p) {
    return widen16(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)));
  }
  NUMOE_TARGET_AVX512 static __m512 load16_masked(__mmask16 m, const uint16_t *p) {
    return widen16(_mm256_maskz_loadu_epi16(m, p));
  }
#endif
};

}  // namespace

const TypeInfo &info_bf16() {
  static const TypeInfo t = float_type_info<bf16>(BF16, "BF16", nullptr);
  return t;
}

}  // namespace numoe::quant
