// Q3_K quantizer: ggml's quantize_row_q3_K_ref. Per 16-value group, make_q3_quants (levels
// -4..3, start scale -4 / (the value of largest magnitude), then up to 5 passes of x^2-
// weighted coordinate descent on the levels) picks a signed scale; the 16 scales are stored
// as 6-bit integers (offset 32) under one fp16 d = -(the scale of largest magnitude) / 32,
// and the values are requantized against the stored scales. Layout: the low 2 bits of each
// value as Q2_K's qs, the third bit of value 32K + l in bit K of hmask[l].
#include <algorithm>
#include <cmath>
#include <cstring>

#include "quant/k_lowbit.hpp"
#include "quant/quant.hpp"
#include "quantize.hpp"

namespace numoe::quantize {
namespace {

using quant::nearest_int;

// ggml's make_q3_quants with do_rmse: levels -nmax..nmax-1 from the scale -nmax / max, then
// each level moved to its weighted least-squares optimum while that raises
// sumlx^2 / suml2. L gets the levels + nmax; returns sumlx / suml2.
float make_q3_quants(int n, int nmax, const float *x, int8_t *L) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < 1e-15f) {  // GROUP_MAX_EPS: all zero
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  const float iscale = static_cast<float>(-nmax) / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::max(-nmax, std::min(nmax - 1, nearest_int(iscale * x[i])));
    L[i] = static_cast<int8_t>(l);
    const float w = x[i] * x[i], fl = static_cast<float>(l);
    sumlx += w * x[i] * fl;
    suml2 += w * fl * fl;
  }
  for (int itry = 0; itry < 5; ++itry) {
    int n_changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i], li = static_cast<float>(L[i]);
      float slx = sumlx - w * x[i] * li;
      if (slx > 0) {
        float sl2 = suml2 - w * li * li;
        const int new_l = std::max(-nmax, std::min(nmax - 1, nearest_int(x[i] * sl2 / slx)));
        if (new_l != L[i]) {
          const float fl = static_cast<float>(new_l);
          slx += w * x[i] * fl;
          sl2 += w * fl * fl;
          if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = static_cast<int8_t>(new_l);
            sumlx = slx;
            suml2 = sl2;
            ++n_changed;
          }
        }
      }
    }
    if (!n_changed) break;
  }
  for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(L[i] + nmax);
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

}  // namespace

void quantize_q3_K(const float *x, void *dst, int64_t n) {
  constexpr int QK_K = quant::QK_K;
  quant::block_q3_K *y = static_cast<quant::block_q3_K *>(dst);
  int8_t L[QK_K];
  float scales[QK_K / 16];
  for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
    float max_scale = 0, amax = 0;
    for (int j = 0; j < QK_K / 16; ++j) {
      scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
      const float scale = std::fabs(scales[j]);
      if (scale > amax) {
        amax = scale;
        max_scale = scales[j];
      }
    }
    std::memset(y[i].scales, 0, 12);
    if (max_scale != 0) {
      const float iscale = -32.f / max_scale;
      for (int j = 0; j < QK_K / 16; ++j) {
        // int8_t as the reference (|iscale * scale| <= 32: no wrap-around)
        int l = static_cast<int8_t>(nearest_int(iscale * scales[j]));
        l = std::max(-32, std::min(31, l)) + 32;
        if (j < 8)
          y[i].scales[j] = static_cast<uint8_t>(l & 0xF);
        else
          y[i].scales[j - 8] |= static_cast<uint8_t>((l & 0xF) << 4);
        y[i].scales[j % 4 + 8] |= static_cast<uint8_t>((l >> 4) << (2 * (j / 4)));
      }
      y[i].d = quant::fp32_to_fp16(1 / iscale);
    } else {
      y[i].d = quant::fp32_to_fp16(0.f);
    }
    // Requantize against the stored scales.
    int8_t sc[16];
    quant::unpack_scales_q3_K(y[i].scales, sc);
    const float fd = quant::fp16_to_fp32(y[i].d);
    for (int j = 0; j < QK_K / 16; ++j) {
      const float d = fd * static_cast<float>(sc[j]);
      if (d == 0) continue;
      for (int ii = 0; ii < 16; ++ii) {
        const int l = nearest_int(x[16 * j + ii] / d);
        L[16 * j + ii] = static_cast<int8_t>(std::max(-4, std::min(3, l)) + 4);
      }
    }
    // The third bit of value 32K + l goes to bit K of hmask[l].
    std::memset(y[i].hmask, 0, QK_K / 8);
    for (int j = 0; j < QK_K; ++j) {
      if (L[j] > 3) {
        y[i].hmask[j % 32] |= static_cast<uint8_t>(1 << (j / 32));
        L[j] = static_cast<int8_t>(L[j] - 4);
      }
    }
    for (int j = 0; j < QK_K; j += 128)
      for (int l = 0; l < 32; ++l)
        y[i].qs[j / 4 + l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 2) |
                                                  (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
  }
}

}  // namespace numoe::quantize
