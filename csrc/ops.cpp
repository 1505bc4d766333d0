#include "ops.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

namespace numoe::ops {

namespace {

// v[0..n) -> softmax(v), in place (the maximum subtracted first).
void softmax(float *v, int64_t n) {
  const float m = *std::max_element(v, v + n);
  float sum = 0.f;
  for (int64_t i = 0; i < n; ++i) sum += v[i] = std::exp(v[i] - m);
  for (int64_t i = 0; i < n; ++i) v[i] /= sum;
}

}  // namespace

void rms_norm(const float *x, int64_t x_stride, const float *w, float eps, int64_t n_rows,
              int64_t n, float *out) {
  for (int64_t r = 0; r < n_rows; ++r, x += x_stride, out += n) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv * w[i];
  }
}

void silu_mul(const float *g, const float *u, int64_t n, float *out) {
  for (int64_t i = 0; i < n; ++i) out[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void add_rms_norm(const float *x, const float *y, const float *w, float eps, int64_t n_rows,
                  int64_t n, float *sum, float *out) {
  for (int64_t i = 0; i < n_rows * n; ++i) sum[i] = x[i] + y[i];
  rms_norm(sum, n, w, eps, n_rows, n, out);
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

void check_route(int64_t E, int64_t k, int gating, bool bias, int64_t n_group, int64_t topk_group) {
  if (k <= 0 || k > E) throw std::invalid_argument("route: k must be in 1..E");
  if (gating != 0 && gating != 1) throw std::invalid_argument("route: unknown gating function");
  const bool grouped = n_group > 1 && topk_group < n_group;  // else grouping is off
  if (grouped && (E % n_group != 0 || topk_group < 1))
    throw std::invalid_argument("route: n_group must divide E and topk_group be positive");
  const int64_t per = grouped ? E / n_group : E;  // experts per group
  if (grouped && topk_group * per < k)
    throw std::invalid_argument("route: the kept groups hold fewer than k experts");
  if (grouped && (gating == 1 || bias) && per < 2)  // a group's score: its best two
    throw std::invalid_argument("route: groups of one expert have no best two");
}

void route(const float *logits, int64_t T, int64_t E, int64_t k, int gating, const float *bias,
           int64_t n_group, int64_t topk_group, bool norm, float scale, int64_t *ids, float *w) {
  check_route(E, k, gating, bias != nullptr, n_group, topk_group);
  const bool grouped = n_group > 1 && topk_group < n_group;  // else grouping is off
  const int64_t per = grouped ? E / n_group : E;             // experts per group
  const bool top2 = gating == 1 || bias != nullptr;          // a group's score: its best two
  const int64_t G = grouped ? n_group : 1;
  std::vector<float> scores(E), choice(E), gscore(G);
  std::vector<int64_t> order(std::max(E, G));
  // a before b: larger value first (NaN above all, as torch.topk ranks it), then lower index
  auto better = [](const std::vector<float> &vals) {
    return [p = &vals](int64_t a, int64_t b) {
      const float x = (*p)[a], y = (*p)[b];
      const bool nx = std::isnan(x), ny = std::isnan(y);
      if (nx != ny) return nx;
      return (!nx && x > y) || ((nx || x == y) && a < b);
    };
  };
  for (int64_t t = 0; t < T; ++t) {
    const float *l = logits + t * E;
    if (gating == 0) {
      std::copy(l, l + E, scores.begin());
      softmax(scores.data(), E);
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
