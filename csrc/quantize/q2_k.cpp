// Q2_K quantizer: ggml's quantize_row_q2_K_ref. Per 16-value group, make_qkx2_quants (levels
// 0..3, weights |x|, absolute-error criterion, 16 trial scales from nmax - 0.5 in steps of
// 0.1) picks a scale and a min; the 16 scales and 16 mins are stored as 4-bit integers
// under the fp16 super-block scales d = max scale / 15 and dmin = max min / 15, and the
// values are requantized against those stored scales. Layout: per 128 values, 32 bytes of
// qs hold values l, l + 32, l + 64, l + 96 in bits 0-1, 2-3, 4-5, 6-7 of qs[l].
#include <algorithm>
#include <cmath>

#include "quant/k_lowbit.hpp"
#include "quant/quant.hpp"
#include "quantize.hpp"

namespace numoe::quantize {

void quantize_q2_K(const float *x, void *dst, int64_t n) {
  using quant::nearest_int;
  constexpr int QK_K = quant::QK_K;
  constexpr float q4scale = 15.f;
  quant::block_q2_K *y = static_cast<quant::block_q2_K *>(dst);
  uint8_t L[QK_K], Laux[16];
  float weights[16], mins[QK_K / 16], scales[QK_K / 16];
  for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
    float max_scale = 0, max_min = 0;  // the min is subtracted: scales and mins are >= 0
    for (int j = 0; j < QK_K / 16; ++j) {
      for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * j + l]);
      scales[j] = detail::make_qkx2_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux,
                                           -0.5f, 0.1f, 15, true);
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    // as C's implicit int -> uint8_t conversions of the reference
    if (max_scale > 0) {
      const float iscale = q4scale / max_scale;
      for (int j = 0; j < QK_K / 16; ++j)
        y[i].scales[j] = static_cast<uint8_t>(nearest_int(iscale * scales[j]));
      y[i].d = quant::fp32_to_fp16(max_scale / q4scale);
    } else {
      for (int j = 0; j < QK_K / 16; ++j) y[i].scales[j] = 0;
      y[i].d = quant::fp32_to_fp16(0.f);
    }
    if (max_min > 0) {
      const float iscale = q4scale / max_min;
      for (int j = 0; j < QK_K / 16; ++j)
        y[i].scales[j] |=
            static_cast<uint8_t>(static_cast<unsigned>(nearest_int(iscale * mins[j])) << 4);
      y[i].dmin = quant::fp32_to_fp16(max_min / q4scale);
    } else {
      y[i].dmin = quant::fp32_to_fp16(0.f);
    }
    // Requantize against the stored (rounded) scales and mins.
    const float fd = quant::fp16_to_fp32(y[i].d), fm = quant::fp16_to_fp32(y[i].dmin);
    for (int j = 0; j < QK_K / 16; ++j) {
      const float d = fd * static_cast<float>(y[i].scales[j] & 0xF);
      if (d == 0) continue;
      const float dm = fm * static_cast<float>(y[i].scales[j] >> 4);
      for (int ii = 0; ii < 16; ++ii) {
        const int l = nearest_int((x[16 * j + ii] + dm) / d);
        L[16 * j + ii] = static_cast<uint8_t>(std::max(0, std::min(3, l)));
      }
    }
    for (int j = 0; j < QK_K; j += 128)
      for (int l = 0; l < 32; ++l)
        y[i].qs[j / 4 + l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 2) |
                                                  (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
  }
}

}  // namespace numoe::quantize
