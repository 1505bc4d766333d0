// Small float32 ops of a decode step: RMS norm, rotary embedding, expert routing.
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
void route(const float *logits, int64_t T, int64_t E, int64_t k, int gating, const float *bias,
           int64_t n_group, int64_t topk_group, bool norm, float scale, int64_t *ids, float *w);

// One decode step of grouped-query attention for one token at position pos (H query heads
// over Hkv = H / g key/value heads): q [H, dk] and k [Hkv, dk] get their optional per-head RMS
// norm (q_norm, k_norm [dk]) and the rotary embedding on their first rope_dim elements (cos,
// sin [rope_dim / 2]; rope_dim 0: none); k and v [Hkv, dv] are stored at row pos of the cache
// (k_cache [n_ctx, Hkv, dk], v_cache [n_ctx, Hkv, dv]); then out [H, dv] = softmax(scale *
// q_h . K[0..pos]) . V[0..pos] per head (head h reads key/value head h / g). Heads run on the
// pool. q and k are modified in place.
struct GqaDecode {
  float *q, *k;
  const float *v;
  float *k_cache, *v_cache;
  int64_t H, Hkv, dk, dv, pos;
  float scale;
  const float *q_norm = nullptr, *k_norm = nullptr;
  float eps = 0.f;
  const float *cos = nullptr, *sin = nullptr;
  int64_t rope_dim = 0;
  bool neox = true;
};
void gqa_decode(const GqaDecode &a, float *out);

// One decode step of multi-head latent attention in the absorbed form (numoe/layers/mla.py):
// kv [R + dr] is the token's kv_a projection: its latent [R] gets the RMS norm kv_norm [R]
// and its rope key [dr] the rotary embedding (cos, sin [dr / 2]), both in place, and both are
// stored at row pos of latent_cache [n_ctx, R] and k_rope_cache [n_ctx, dr]; q_rope (head h's
// dr values at q_rope + h * q_rope_stride) is rotated in place; then out [H, R] = softmax(
// scale * (q_lat[h] . latent[s] + q_rope[h] . k_rope[s])) . latent[0..pos] per head, with
// q_lat [H, R] the query absorbed through k_b. Heads run on the pool.
struct MlaDecode {
  const float *q_lat;
  float *q_rope;
  int64_t q_rope_stride;
  float *kv;
  const float *kv_norm;
  float eps;
  float *latent_cache, *k_rope_cache;
  int64_t H, R, dr, pos;
  float scale;
  const float *cos, *sin;
  bool neox;
};
void mla_decode(const MlaDecode &a, float *out);

}  // namespace numoe::ops
