// Shared pieces of the quantizers: ggml's scale searches, Q4_K/Q5_K super-block scales,
// the registry and the row-parallel driver.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "quant/k_lowbit.hpp"
#include "quant/q32.hpp"
#include "quant/quant.hpp"
#include "quantize.hpp"

namespace numoe::quantize {

using quant::fp16_to_fp32;
using quant::fp32_to_fp16;
using quant::nearest_int;

namespace detail {

constexpr float GROUP_MAX_EPS = 1e-15f;

// Asymmetric (scale, min) search: quantize x - min to 0..nmax for the start point and for
// nstep+1 trial scales around nmax / (max - min); at each trial take the weighted
// least-squares scale and min for the levels found, and keep the best weighted error.
// Returns the scale; *the_min = -min (>= 0).
float make_qkx2_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                       float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep,
                       bool use_mad) {
  float min = x[0], max = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *the_min = -min;
    return 0.f;
  }
  float iscale = static_cast<float>(nmax) / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = nearest_int(iscale * (x[i] - min));
    L[i] = static_cast<uint8_t>(std::max(0, std::min(nmax, l)));
    float diff = scale * static_cast<float>(L[i]) + min - x[i];
    diff = use_mad ? std::fabs(diff) : diff * diff;
    best_error += weights[i] * diff;
  }
  if (nstep < 1) {
    *the_min = -min;
    return scale;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * static_cast<float>(is) + static_cast<float>(nmax)) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      int l = nearest_int(iscale * (x[i] - min));
      l = std::max(0, std::min(nmax, l));
      Laux[i] = static_cast<uint8_t>(l);
      const float w = weights[i], fl = static_cast<float>(l);
      sum_l += w * fl;
      sum_l2 += w * fl * fl;
      sum_xl += w * fl * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * static_cast<float>(Laux[i]) + this_min - x[i];
        diff = use_mad ? std::fabs(diff) : diff * diff;
        cur_error += weights[i] * diff;
      }
      if (cur_error < best_error) {
        for (int i = 0; i < n; ++i) L[i] = Laux[i];
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

// Symmetric scale search (levels -nmax..nmax-1, stored + nmax in L). rmse_type 1 weighs
// by x^2 (the only kind the reference quantizers use without an importance matrix).
float make_qx_quants(int n, int nmax, const float *x, int8_t *L, int rmse_type, const float *qw) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < GROUP_MAX_EPS) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  const float fnmax = static_cast<float>(nmax);
  float iscale = -fnmax / max;
  if (rmse_type == 0) {
    for (int i = 0; i < n; ++i) {
      const int l = nearest_int(iscale * x[i]);
      L[i] = static_cast<int8_t>(nmax + std::max(-nmax, std::min(nmax - 1, l)));
    }
    return 1 / iscale;
  }
  auto weight = [&](int i) -> float {
    if (qw) return qw[i];
    switch (rmse_type) {
      case 1:
        return x[i] * x[i];
      case 2:
        return 1.f;
      case 3:
        return std::fabs(x[i]);
      default:
        return std::sqrt(std::fabs(x[i]));
    }
  };
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = nearest_int(iscale * x[i]);
    l = std::max(-nmax, std::min(nmax - 1, l));
    L[i] = static_cast<int8_t>(l + nmax);
    const float w = weight(i), fl = static_cast<float>(l);
    sumlx += w * x[i] * fl;
    suml2 += w * fl * fl;
  }
  float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(fnmax + 0.1f * static_cast<float>(is)) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      int l = nearest_int(iscale * x[i]);
      l = std::max(-nmax, std::min(nmax - 1, l));
      const float w = weight(i), fl = static_cast<float>(l);
      sumlx += w * x[i] * fl;
      suml2 += w * fl * fl;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) {
        const int l = nearest_int(iscale * x[i]);
        L[i] = static_cast<int8_t>(nmax + std::max(-nmax, std::min(nmax - 1, l)));
      }
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

void pack_scales_mins_k4(const uint8_t ls[8], const uint8_t lm[8], uint8_t out[12]) {
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      out[j] = ls[j];
      out[j + 4] = lm[j];
    } else {
      out[j + 4] = static_cast<uint8_t>((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
      out[j - 4] |= static_cast<uint8_t>((ls[j] >> 4) << 6);
      out[j] |= static_cast<uint8_t>((lm[j] >> 4) << 6);
    }
  }
}

void k4_superblock(const float *x, int nmax, float rmin, int nstep, uint8_t L[256], uint16_t *d,
                   uint16_t *dmin, uint8_t scales[12]) {
  float mins[8], sc[8], weights[32];
  uint8_t Laux[32];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    const float *xb = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += xb[l] * xb[l];
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(xb[l]);
    sc[j] = make_qkx2_quants(32, nmax, xb, weights, L + 32 * j, &mins[j], Laux, rmin, 0.1f, nstep,
                             false);
    if (sc[j] > max_scale) max_scale = sc[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  uint8_t ls[8], lm[8];
  for (int j = 0; j < 8; ++j) {
    ls[j] = std::min<uint8_t>(63, static_cast<uint8_t>(nearest_int(inv_scale * sc[j])));
    lm[j] = std::min<uint8_t>(63, static_cast<uint8_t>(nearest_int(inv_min * mins[j])));
  }
  std::memset(scales, 0, 12);
  pack_scales_mins_k4(ls, lm, scales);
  *d = fp32_to_fp16(max_scale / 63.f);
  *dmin = fp32_to_fp16(max_min / 63.f);
  // Requantize against the stored (rounded) scales and mins.
  const float fd = fp16_to_fp32(*d), fm = fp16_to_fp32(*dmin);
  for (int j = 0; j < 8; ++j) {
    const float dj = fd * static_cast<float>(ls[j]);
    if (dj == 0) continue;
    const float dm = fm * static_cast<float>(lm[j]);
    for (int i = 0; i < 32; ++i) {
      const int l = nearest_int((x[32 * j + i] + dm) / dj);
      L[32 * j + i] = static_cast<uint8_t>(std::max(0, std::min(nmax, l)));
    }
  }
}

}  // namespace detail

const Quantizer &quantizer(int type) {
  static const Quantizer table[] = {
      {quant::Q4_0, "Q4_0", quant::QK4_0, sizeof(quant::block_q4_0), quantize_q4_0},
      {quant::Q8_0, "Q8_0", quant::QK8_0, sizeof(quant::block_q8_0), quantize_q8_0},
      {quant::Q4_K, "Q4_K", quant::QK_K, sizeof(quant::block_q4_K), quantize_q4_K},
      {quant::Q5_K, "Q5_K", quant::QK_K, sizeof(quant::block_q5_K), quantize_q5_K},
      {quant::Q6_K, "Q6_K", quant::QK_K, sizeof(quant::block_q6_K), quantize_q6_K},
      {quant::Q4_1, "Q4_1", quant::QK32, sizeof(quant::block_q4_1), quantize_q4_1},
      {quant::Q5_0, "Q5_0", quant::QK32, sizeof(quant::block_q5_0), quantize_q5_0},
      {quant::Q5_1, "Q5_1", quant::QK32, sizeof(quant::block_q5_1), quantize_q5_1},
      {quant::Q2_K, "Q2_K", quant::QK_K, sizeof(quant::block_q2_K), quantize_q2_K},
      {quant::Q3_K, "Q3_K", quant::QK_K, sizeof(quant::block_q3_K), quantize_q3_K},
  };
  for (const Quantizer &q : table)
    if (q.type == type) return q;
  std::string names;
  for (const Quantizer &q : table) names += std::string(names.empty() ? "" : ", ") + q.name;
  throw std::invalid_argument("no quantizer for GGML type " + std::to_string(type) +
                              " (numoe quantizes to " + names + ")");
}

int64_t row_bytes(int type, int64_t cols) {
  const Quantizer &q = quantizer(type);
  if (cols <= 0 || cols % q.block_size != 0)
    throw std::invalid_argument("row length " + std::to_string(cols) +
                                " is not a positive multiple of " + q.name + "'s block size " +
                                std::to_string(q.block_size));
  return cols / q.block_size * q.type_size;
}

void quantize_rows(int type, const float *src, uint8_t *dst, int64_t rows, int64_t cols,
                   int n_threads) {
  const Quantizer &q = quantizer(type);
  const int64_t rb = row_bytes(type, cols);
  if (rows <= 0) return;
  if (n_threads <= 0)
    n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // at least ~64k elements per thread, so tiny tensors don't pay for thread starts
  const int64_t by_size = std::max<int64_t>(1, rows * cols / 65536);
  const int64_t nt = std::min<int64_t>({static_cast<int64_t>(n_threads), rows, by_size});
  auto work = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) q.quantize(src + r * cols, dst + r * rb, cols);
  };
  if (nt <= 1) {
    work(0, rows);
    return;
  }
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(nt - 1));
  const int64_t per = rows / nt, extra = rows % nt;
  int64_t r0 = 0;
  for (int64_t t = 0; t < nt; ++t) {
    const int64_t r1 = r0 + per + (t < extra ? 1 : 0);
    if (t == nt - 1)
      work(r0, r1);
    else
      threads.emplace_back(work, r0, r1);
    r0 = r1;
  }
  for (std::thread &t : threads) t.join();
}

}  // namespace numoe::quantize
