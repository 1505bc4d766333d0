// One token's attention in a decode step, in C++ (the torch paths in numoe/layers are the
// references): GQA (gqa_decode) and MLA in the absorbed form (mla_decode). Both run one body:
// the query heads that read the same cached rows form a group, and a task is a group over a
// chunk of the cached positions (flash-decoding: each row read once per group, the chunk
// L2-resident from the scores to the value sum; the chunks' softmax pieces are merged after).
#pragma once

#include <cstdint>

namespace numoe::ops {

// The element type of a cache's rows (llama.cpp's -ctk / -ctv names): float32, or IEEE
// binary16 (F16: each value rounded to nearest even when stored, as ggml's FP32 -> FP16 and
// F16C's vcvtps2ph with rounding mode 0; read back exactly). One per cache tensor; a row of
// n values takes n * kv_type_size(t) bytes. (bf16 or q8_0 rows would be further entries.)
enum class KvType : int32_t { f32 = 0, f16 = 1 };
constexpr int64_t kv_type_size(KvType t) { return t == KvType::f16 ? 2 : 4; }

// One decode step of grouped-query attention for one token at position pos (H query heads
// over Hkv = H / g key/value heads): q [H, dk] and k [Hkv, dk] get their optional per-head RMS
// norm (q_norm, k_norm [dk]) and the rotary embedding on their first rope_dim elements (cos,
// sin [rope_dim / 2]; rope_dim 0: none); k and v [Hkv, dv] are stored at row pos of the cache
// (k_cache [n_ctx, Hkv, dk] of k_type, v_cache [n_ctx, Hkv, dv] of v_type; an F16 cache
// stores them rounded); then out [H, dv] = softmax(scale * q_h . K[0..pos]) . V[0..pos] per
// head (head h reads key/value head h / g; the cached rows as stored, converted exactly to
// float32). Heads run on the pool. q and k are modified in place.
struct GqaDecode {
  float *q, *k;
  const float *v;
  void *k_cache, *v_cache;
  int64_t H, Hkv, dk, dv, pos;
  float scale;
  const float *q_norm = nullptr, *k_norm = nullptr;
  float eps = 0.f;
  const float *cos = nullptr, *sin = nullptr;
  int64_t rope_dim = 0;
  bool neox = true;
  KvType k_type = KvType::f32, v_type = KvType::f32;
};
void gqa_decode(const GqaDecode &a, float *out);

// One decode step of multi-head latent attention in the absorbed form (numoe/layers/mla.py):
// kv [R + dr] is the token's kv_a projection: its latent [R] gets the RMS norm kv_norm [R]
// and its rope key [dr] the rotary embedding (cos, sin [dr / 2]), both in place, and both are
// stored at row pos of latent_cache [n_ctx, R] and k_rope_cache [n_ctx, dr] (of latent_type
// and k_rope_type: an F16 cache stores them rounded, and the attention reads them so); q_rope (head
// h's dr values at q_rope + h * q_rope_stride) is rotated in place; then out [H, R] = softmax(
// scale * (q_lat[h] . latent[s] + q_rope[h] . k_rope[s])) . latent[0..pos] per head, with
// q_lat [H, R] the query absorbed through k_b. Heads run on the pool.
struct MlaDecode {
  const float *q_lat;
  float *q_rope;
  int64_t q_rope_stride;
  float *kv;
  const float *kv_norm;
  float eps;
  void *latent_cache, *k_rope_cache;
  int64_t H, R, dr, pos;
  float scale;
  const float *cos, *sin;
  bool neox;
  KvType latent_type = KvType::f32, k_rope_type = KvType::f32;
};
void mla_decode(const MlaDecode &a, float *out);

// n tokens' decode attention in one pool call (a batched step: tokens of several sequences,
// and a prompt chunk's consecutive positions of one): a[i] as gqa_decode's / mla_decode's
// (its own q, k, v or kv, caches, position, rotary row), its output at out + i * out_stride.
// Every token's cache store comes first, so a token reads the rows the batch's tokens at
// earlier positions of its cache store. Each token's numbers are bit for bit those of the
// single-token call (same position chunks, same task bodies, same merge): batch invariance.
// gqa_decode / mla_decode are the n = 1 case.
void gqa_decode_batch(const GqaDecode *a, int64_t n, float *out, int64_t out_stride);
void mla_decode_batch(const MlaDecode *a, int64_t n, float *out, int64_t out_stride);

}  // namespace numoe::ops
