// Q4_0 quantizer: ggml's quantize_row_q4_0_ref. d = m / -8 where m is the value of largest
// magnitude (the first one on ties), q = min(15, trunc(x / d + 8.5)); element j in the low
// nibble of qs[j], element j + 16 in the high nibble.
#include <algorithm>
#include <cmath>

#include "quant/quant.hpp"
#include "quantize.hpp"

namespace numoe::quantize {

void quantize_q4_0(const float *x, void *dst, int64_t n) {
  constexpr int qk = quant::QK4_0;
  quant::block_q4_0 *y = static_cast<quant::block_q4_0 *>(dst);
  for (int64_t i = 0; i < n / qk; ++i, x += qk) {
    float amax = 0.f, max = 0.f;
    for (int j = 0; j < qk; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8;
    const float id = d != 0.f ? 1.0f / d : 0.0f;
    y[i].d = quant::fp32_to_fp16(d);
    for (int j = 0; j < qk / 2; ++j) {
      const int q0 = std::min(15, static_cast<int>(static_cast<int8_t>(x[j] * id + 8.5f)));
      const int q1 = std::min(15, static_cast<int>(static_cast<int8_t>(x[qk / 2 + j] * id + 8.5f)));
      y[i].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

}  // namespace numoe::quantize
