// F32 weights (block of 1) x f32 activation (float_dot.hpp's bodies); as an activation type
// F32 is a copy.
#include "float_dot.hpp"

namespace numoe::quant {
namespace {

struct f32 {
  using elem = float;
  static float to_f32(float f) { return f; }
#ifdef NUMOE_X86
  NUMOE_TARGET_AVX2 static __m256 load8(const float *p) { return _mm256_loadu_ps(p); }
  NUMOE_TARGET_AVX512 static __m512 load16(const float *p) { return _mm512_loadu_ps(p); }
  NUMOE_TARGET_AVX512 static __m512 load16_masked(__mmask16 m, const float *p) {
    return _mm512_maskz_loadu_ps(m, p);
  }
#endif
};

void copy_f32(const float *src, void *dst, int64_t n) {
  std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
}

}  // namespace

const TypeInfo &info_f32() {
  static const TypeInfo t = float_type_info<f32>(F32, "F32", copy_f32);
  return t;
}

}  // namespace numoe::quant
