// Q8_0 quantizer: ggml's quantize_row_q8_0_ref (d = max|x| / 127, q = roundf(x / d), ties
// away from zero).
#include <algorithm>
#include <cmath>

#include "quant/quant.hpp"
#include "quantize.hpp"

namespace numoe::quantize {

void quantize_q8_0(const float *x, void *dst, int64_t n) {
  quant::block_q8_0 *y = static_cast<quant::block_q8_0 *>(dst);
  for (int64_t i = 0; i < n / quant::QK8_0; ++i, x += quant::QK8_0) {
    float amax = 0.f;
    for (int j = 0; j < quant::QK8_0; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.f;
    const float id = d != 0.f ? 1.f / d : 0.f;
    y[i].d = quant::fp32_to_fp16(d);
    for (int j = 0; j < quant::QK8_0; ++j) y[i].qs[j] = static_cast<int8_t>(std::roundf(x[j] * id));
  }
}

}  // namespace numoe::quantize
