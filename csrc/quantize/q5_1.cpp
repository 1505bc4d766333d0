// Q5_1 quantizer: ggml's quantize_row_q5_1_ref. Per block of 32: min and max of the values,
// d = (max - min) / 31, m = min, q = trunc((x - min) / d + 0.5) (at most 31: no clamp, as the
// reference); the low 4 bits of element j go to qs as in Q4_1, bit 4 to bit j of qh.
#include <cfloat>
#include <cstring>

#include "quant/q32.hpp"
#include "quantize.hpp"

namespace numoe::quantize {

void quantize_q5_1(const float *x, void *dst, int64_t n) {
  constexpr int qk = quant::QK32;
  quant::block_q5_1 *y = static_cast<quant::block_q5_1 *>(dst);
  for (int64_t i = 0; i < n / qk; ++i, x += qk) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < qk; ++j) {
      if (x[j] < min) min = x[j];
      if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / 31;
    const float id = d != 0.f ? 1.0f / d : 0.0f;
    y[i].d = quant::fp32_to_fp16(d);
    y[i].m = quant::fp32_to_fp16(min);
    uint32_t qh = 0;
    for (int j = 0; j < qk / 2; ++j) {
      const float x0 = (x[j] - min) * id, x1 = (x[qk / 2 + j] - min) * id;
      const unsigned q0 = static_cast<uint8_t>(x0 + 0.5f);
      const unsigned q1 = static_cast<uint8_t>(x1 + 0.5f);
      y[i].qs[j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
      qh |= ((q0 >> 4) & 1u) << j;
      qh |= ((q1 >> 4) & 1u) << (j + qk / 2);
    }
    std::memcpy(y[i].qh, &qh, 4);
  }
}

}  // namespace numoe::quantize
