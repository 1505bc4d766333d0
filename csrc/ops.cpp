#include "ops.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

namespace numoe::ops {

void rms_norm(const float *x, int64_t x_stride, const float *w, float eps, int64_t n_rows,
              int64_t n, float *out) {
  for (int64_t r = 0; r < n_rows; ++r, x += x_stride, out += n) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv * w[i];
  }
}

void rope(float *x, int64_t T, int64_t H, int64_t head_dim, int64_t dim, const float *cos,
          const float *sin, bool neox) {
  const int64_t half = dim / 2;
  for (int64_t t = 0; t < T; ++t) {
    const float *c = cos + t * half, *s = sin + t * half;
    for (int64_t h = 0; h < H; ++h) {
      float *v = x + (t * H + h) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        float &a = neox ? v[i] : v[2 * i];
        float &b = neox ? v[i + half] : v[2 * i + 1];
        const float ac = a * c[i], bs = b * s[i], as = a * s[i], bc = b * c[i];
        a = ac - bs;
        b = as + bc;
      }
    }
  }
}

void route(const float *logits, int64_t T, int64_t E, int64_t k, int gating, const float *bias,
           int64_t n_group, int64_t topk_group, bool norm, float scale, int64_t *ids, float *w) {
  if (k <= 0 || k > E) throw std::invalid_argument("route: k must be in 1..E");
  if (gating != 0 && gating != 1) throw std::invalid_argument("route: unknown gating function");
  if (n_group < 1 || E % n_group != 0 || topk_group < 1)
    throw std::invalid_argument("route: n_group must divide E and topk_group be positive");
  const bool grouped = n_group > 1 && topk_group < n_group;
  const int64_t per = E / n_group;
  const bool top2 = gating == 1 || bias != nullptr;  // a group's score: its best two
  if (grouped && topk_group * per < k)
    throw std::invalid_argument("route: the kept groups hold fewer than k experts");
  if (grouped && top2 && per < 2)
    throw std::invalid_argument("route: groups of one expert have no best two");
  std::vector<float> scores(E), choice(E), gscore(n_group);
  std::vector<int64_t> order(std::max(E, n_group));
  // a before b: larger value first, then lower index
  auto better = [](const std::vector<float> &v) {
    return [&v](int64_t a, int64_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); };
  };
  for (int64_t t = 0; t < T; ++t) {
    const float *l = logits + t * E;
    if (gating == 0) {
      const float m = *std::max_element(l, l + E);
      float sum = 0.f;
      for (int64_t e = 0; e < E; ++e) sum += scores[e] = std::exp(l[e] - m);
      for (int64_t e = 0; e < E; ++e) scores[e] /= sum;
    } else {
      for (int64_t e = 0; e < E; ++e) scores[e] = 1.f / (1.f + std::exp(-l[e]));
    }
    for (int64_t e = 0; e < E; ++e) choice[e] = bias ? scores[e] + bias[e] : scores[e];
    if (grouped) {
      for (int64_t g = 0; g < n_group; ++g) {
        const float *c = choice.data() + g * per;
        float b1 = -std::numeric_limits<float>::infinity(), b2 = b1;
        for (int64_t i = 0; i < per; ++i) {
          if (c[i] > b1) {
            b2 = b1;
            b1 = c[i];
          } else if (c[i] > b2) {
            b2 = c[i];
          }
        }
        gscore[g] = top2 ? b1 + b2 : b1;
      }
      for (int64_t g = 0; g < n_group; ++g) order[g] = g;
      std::partial_sort(order.begin(), order.begin() + topk_group, order.begin() + n_group,
                        better(gscore));
      std::vector<bool> keep(n_group, false);
      for (int64_t j = 0; j < topk_group; ++j) keep[order[j]] = true;
      for (int64_t e = 0; e < E; ++e)
        if (!keep[e / per]) choice[e] = -std::numeric_limits<float>::infinity();
    }
    for (int64_t e = 0; e < E; ++e) order[e] = e;
    std::partial_sort(order.begin(), order.begin() + k, order.begin() + E, better(choice));
    int64_t *id = ids + t * k;
    float *wt = w + t * k, sum = 0.f;
    for (int64_t j = 0; j < k; ++j) {
      id[j] = order[j];
      sum += wt[j] = scores[order[j]];
    }
    for (int64_t j = 0; j < k; ++j) wt[j] = (norm ? wt[j] / (sum + 1e-20f) : wt[j]) * scale;
  }
}

}  // namespace numoe::ops
