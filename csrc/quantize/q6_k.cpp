// Q6_K quantizer: ggml's quantize_row_q6_K_ref. Per 16-value sub-block, make_qx_quants
// (levels -32..31, weights x^2, 19 trial scales) picks a signed scale; the 16 scales are
// stored as int8 under one fp16 d = -(the scale of largest magnitude) / 128, and the values
// are requantized against the stored scales. Layout per 128 values: ql holds low nibbles
// (values l and l+64 in ql[l], l+32 and l+96 in ql[l+32]), qh the top 2 bits of l, l+32,
// l+64, l+96 in qh[l].
#include <algorithm>
#include <cmath>
#include <cstring>

#include "quant/quant.hpp"
#include "quantize.hpp"

namespace numoe::quantize {

void quantize_q6_K(const float *x, void *dst, int64_t n) {
  using quant::nearest_int;
  constexpr int QK_K = quant::QK_K;
  quant::block_q6_K *y = static_cast<quant::block_q6_K *>(dst);
  int8_t L[QK_K];
  float scales[QK_K / 16];
  for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
    float max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < QK_K / 16; ++ib) {
      const float scale = detail::make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib, 1, nullptr);
      scales[ib] = scale;
      if (std::fabs(scale) > max_abs_scale) {
        max_abs_scale = std::fabs(scale);
        max_scale = scale;
      }
    }
    if (max_abs_scale < 1e-15f) {  // GROUP_MAX_EPS: an all-zero block
      std::memset(&y[i], 0, sizeof(quant::block_q6_K));
      continue;
    }
    const float iscale = -128.f / max_scale;
    y[i].d = quant::fp32_to_fp16(1 / iscale);
    for (int ib = 0; ib < QK_K / 16; ++ib)
      y[i].scales[ib] = static_cast<int8_t>(std::min(127, nearest_int(iscale * scales[ib])));
    const float d = quant::fp16_to_fp32(y[i].d);
    for (int j = 0; j < QK_K / 16; ++j) {
      const float dj = d * static_cast<float>(y[i].scales[j]);
      if (dj == 0) continue;
      for (int k = 0; k < 16; ++k) {
        const int l = nearest_int(x[16 * j + k] / dj);
        L[16 * j + k] = static_cast<int8_t>(std::max(-32, std::min(31, l)) + 32);
      }
    }
    uint8_t *ql = y[i].ql;
    uint8_t *qh = y[i].qh;
    for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t q1 = L[j + l] & 0xF, q2 = L[j + l + 32] & 0xF;
        const uint8_t q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
        ql[l] = static_cast<uint8_t>(q1 | (q3 << 4));
        ql[l + 32] = static_cast<uint8_t>(q2 | (q4 << 4));
        qh[l] = static_cast<uint8_t>((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) |
                                     ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
      }
    }
  }
}

}  // namespace numoe::quantize
