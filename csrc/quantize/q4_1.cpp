// Q4_1 quantizer: ggml's quantize_row_q4_1_ref. Per block of 32: min and max of the values,
// d = (max - min) / 15, m = min, q = min(15, trunc((x - min) / d + 0.5)); element j in the
// low nibble of qs[j], element j + 16 in the high nibble.
#include <algorithm>
#include <cfloat>

#include "quant/q32.hpp"
#include "quantize.hpp"

namespace numoe::quantize {

void quantize_q4_1(const float *x, void *dst, int64_t n) {
  constexpr int qk = quant::QK32;
  quant::block_q4_1 *y = static_cast<quant::block_q4_1 *>(dst);
  for (int64_t i = 0; i < n / qk; ++i, x += qk) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < qk; ++j) {
      if (x[j] < min) min = x[j];
      if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / 15;
    const float id = d != 0.f ? 1.0f / d : 0.0f;
    y[i].d = quant::fp32_to_fp16(d);
    y[i].m = quant::fp32_to_fp16(min);
    for (int j = 0; j < qk / 2; ++j) {
      const float x0 = (x[j] - min) * id, x1 = (x[qk / 2 + j] - min) * id;
      const int q0 = std::min(15, static_cast<int>(static_cast<int8_t>(x0 + 0.5f)));
      const int q1 = std::min(15, static_cast<int>(static_cast<int8_t>(x1 + 0.5f)));
      y[i].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

}  // namespace numoe::quantize
