// Q5_0 quantizer: ggml's quantize_row_q5_0_ref. d = m / -16 where m is the value of largest
// magnitude (the first one on ties), q = min(31, trunc(x / d + 16.5)); the low 4 bits of
// element j go to qs as in Q4_0, bit 4 to bit j of qh.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "quant/q32.hpp"
#include "quantize.hpp"

namespace numoe::quantize {

void quantize_q5_0(const float *x, void *dst, int64_t n) {
  constexpr int qk = quant::QK32;
  quant::block_q5_0 *y = static_cast<quant::block_q5_0 *>(dst);
  for (int64_t i = 0; i < n / qk; ++i, x += qk) {
    float amax = 0.f, max = 0.f;
    for (int j = 0; j < qk; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -16;
    const float id = d != 0.f ? 1.0f / d : 0.0f;
    y[i].d = quant::fp32_to_fp16(d);
    uint32_t qh = 0;
    for (int j = 0; j < qk / 2; ++j) {
      const float x0 = x[j] * id, x1 = x[qk / 2 + j] * id;
      const int q0 = std::min(31, static_cast<int>(static_cast<int8_t>(x0 + 16.5f)));
      const int q1 = std::min(31, static_cast<int>(static_cast<int8_t>(x1 + 16.5f)));
      y[i].qs[j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
      qh |= static_cast<uint32_t>((q0 >> 4) & 1) << j;
      qh |= static_cast<uint32_t>((q1 >> 4) & 1) << (j + qk / 2);
    }
    std::memcpy(y[i].qh, &qh, 4);
  }
}

}  // namespace numoe::quantize
