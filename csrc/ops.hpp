// Small float32 ops of a decode step: RMS norm (and with a residual add), rotary embedding,
// expert routing, silu(g) * u; the attention is in attention.hpp.
//
// Why in C++: a decode step streams megabytes of weights between these ops, which evicts
// torch's dispatcher from the caches, so each small torch op costs 20-60 us instead of ~5
// (measured in a Qwen3-MoE decode); these loops are a few hundred bytes of code. The torch
// versions in numoe/layers stay as the references the tests compare against.
#pragma once

#include <cstdint>

namespace numoe::ops {

// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w for rows r < n_rows of n floats, row r of x at
// x + r * x_stride, of out at out + r * n (sum of squares in double). out may alias x.
void rms_norm(const float *x, int64_t x_stride, const float *w, float eps, int64_t n_rows,
              int64_t n, float *out);

// sum = x + y and out = rms_norm(sum) for rows of n floats, all contiguous [n_rows, n]: a
// residual add and the next norm in one pass (the adds round as torch's x + y).
void add_rms_norm(const float *x, const float *y, const float *w, float eps, int64_t n_rows,
                  int64_t n, float *sum, float *out);

// out = silu(g) * u = g / (1 + exp(-g)) * u over n floats (the MoE op's expression).
void silu_mul(const float *g, const float *u, int64_t n, float *out);

// Rotary embedding of x [T, H, head_dim] (contiguous) in place on the first `dim` elements of
// each head: pairs (a, b) -> (a*c - b*s, a*s + b*c) with c, s = cos, sin [T, dim/2]. Pairs are
// (i, i + dim/2) when neox, else (2i, 2i + 1). Each product rounded, as torch does.
void rope(float *x, int64_t T, int64_t H, int64_t head_dim, int64_t dim, const float *cos,
          const float *sin, bool neox);

// Expert choice for T tokens: logits [T, E] -> ids [T, k] (best first), weights [T, k].
// gating 0 = softmax, 1 = sigmoid; bias [E] (may be null) is added for the choice only;
// n_group / topk_group: only experts of the best topk_group groups compete (group score = its
// best expert, or the sum of its best two with sigmoid or a bias); norm divides the weights by
// their sum (+1e-20); scale multiplies them last. Ties go to the lower index.
// std::invalid_argument unless route() can take these arguments (what it checks first).
void check_route(int64_t E, int64_t k, int gating, bool bias, int64_t n_group, int64_t topk_group);
void route(const float *logits, int64_t T, int64_t E, int64_t k, int gating, const float *bias,
           int64_t n_group, int64_t topk_group, bool norm, float scale, int64_t *ids, float *w);

}  // namespace numoe::ops
