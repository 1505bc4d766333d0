// F16 weights (block of 1) x f32 activation (float_dot.hpp's bodies).
#include "float_dot.hpp"

namespace numoe::quant {
namespace {

struct f16 {
  using elem = uint16_t;
  static float to_f32(uint16_t h) { return fp16_to_fp32(h); }
#ifdef NUMOE_X86
  NUMOE_TARGET_AVX2 static __m256 load8(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
  }
  NUMOE_TARGET_AVX512 static __m512 load16(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)));
  }
  NUMOE_TARGET_AVX512 static __m512 load16_masked(__mmask16 m, const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
#endif
};

}  // namespace

const TypeInfo &info_f16() {
  static const TypeInfo t = float_type_info<f16>(F16, "F16", nullptr);
  return t;
}

}  // namespace numoe::quant
