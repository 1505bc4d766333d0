// One decode step of a whole pre-norm block in one C++ call: the existing ops (linear,
// attention, routing, MoE, the small float ops) chained with no Python between them.
//
// Why: a decode step streams megabytes of weights between its ops, which evicts the Python
// interpreter from the caches; the ~10 Python calls per layer between the ops then cost
// 10-20 us each (~3 ms per token on DeepSeek-V2-Lite shapes, 8 layers, 2-core VM: this gains
// ~8 % of tg there). Chained here they cost ~1 us each. The linear and MoE ops are the ones
// the torch path (numoe/models/base.py's Block, the reference the tests compare against)
// calls, in the same order with the same inputs; the norms, rope, attention and routing are
// numoe's C++ ops (ops.hpp, attention.hpp) where that path has torch's, so the two agree to
// float rounding.
//
//   x += f_prev (when add);  h = rms_norm(x) * attn_norm
//   x += attention(h)        (GQA or MLA, K/V or latent stored at row pos of the cache)
//   h = rms_norm(x) * ffn_norm;  f = ffn(h)  (dense SwiGLU, or router + top-k + MoE op
//                                             + an optional shared expert)
#pragma once
#include <cstdint>
#include <mutex>
#include <vector>

#include "attention.hpp"
#include "linear.hpp"
#include "moe.hpp"

namespace numoe {

// Grouped-query attention: q/k/v (optional biases), per-head q/k RMS norms (optional), rope
// over the first rope_dim of each head, output projection o.
struct GqaStep {
  const LinearOp *q, *k, *v, *o;
  const float *bq = nullptr, *bk = nullptr, *bv = nullptr;
  const float *q_norm = nullptr, *k_norm = nullptr;
  int64_t H, Hkv, Dh, rope_dim;
  bool neox;
  float scale;
};

// Multi-head latent attention in the absorbed form (numoe/layers/mla.py): q directly, or
// q_a -> rms_norm(q_a_norm) -> q_b; kv_a [R + dr]; k_b (groups H: dn -> R) absorbs the key
// into the query; v_b (groups H: R -> dv); o.
struct MlaStep {
  const LinearOp *q = nullptr, *q_a = nullptr, *q_b = nullptr;
  const float *q_a_norm = nullptr;
  const LinearOp *kv_a, *k_b, *v_b, *o;
  const float *kv_norm;
  int64_t H, R, dn, dr, dv;
  bool neox;
  float scale;
};

// Dense SwiGLU: down(silu(gate h) * up h).
struct DenseStep {
  const LinearOp *gate, *up, *down;
};

// Router + top-k (ops::route's arguments) + the MoE op, plus an optional shared expert
// (sh_gate, sh_up, sh_down) scaled by sigmoid(h . sh_gate_vec) when that vector is given.
struct MoeStep {
  const LinearOp *router;
  const MoEOp *experts;
  int64_t k;
  int gating;  // 0 softmax, 1 sigmoid
  const float *bias = nullptr;
  int64_t n_group = 1, topk_group = 1;
  bool norm = false;
  float scale = 1.f;
  const LinearOp *sh_gate = nullptr, *sh_up = nullptr, *sh_down = nullptr;
  const float *sh_gate_vec = nullptr;
};

// Where a step's time goes (benchmarks/decode_profile.py): per stage, the nanoseconds and
// calls summed over the steps of every block since profiling was switched on, and the weight
// bytes they read. Off by default (then a step reads no clock).
enum DecodeStage {
  kNorm,     // the residual adds and RMS norms
  kAttnIn,   // the projections of x: q, k, v (GQA) or q / q_a, kv_a (MLA)
  kQb,       // MLA: q_a's norm and q_b
  kKb,       // MLA: the key absorbed into the query (k_b)
  kAttn,     // gqa_decode / mla_decode (the cache's reads are not counted in the bytes)
  kVb,       // MLA: v_b
  kO,        // the output projection
  kFfnIn,    // dense gate and up, or the router (with a shared expert's gate and up)
  kRoute,    // top-k routing
  kExperts,  // the MoE op (k experts' bytes)
  kFfnDown,  // dense down, or the shared expert's down (+ its gate and the sum)
  kStages
};
const char *decode_stage_name(int stage);
void set_decode_profiling(bool on);  // on: reset the sums and start counting
struct StageTotals {
  int64_t ns = 0, calls = 0;
  size_t bytes = 0;  // weight bytes read by those calls
};
std::vector<StageTotals> decode_profile();  // kStages entries, summed over the blocks

class DecodeBlock {
 public:
  DecodeBlock(const float *attn_norm, const float *ffn_norm, float eps, int64_t n_embd)
      : attn_norm_(attn_norm), ffn_norm_(ffn_norm), eps_(eps), D_(n_embd) {}
  // Exactly one attention and one FFN must be set before step(); each throws
  // std::invalid_argument when the shapes do not chain (checked once, here).
  void set_gqa(const GqaStep &a);
  void set_mla(const MlaStep &a);
  void set_dense(const DenseStep &f);
  void set_moe(const MoeStep &f);
  bool ready() const { return (gqa_ || mla_) && (dense_ || moe_); }
  // Cache rows this block's attention stores per position: (Hkv*Dh, Hkv*Dh) or (R, dr).
  int64_t cache_width(int which) const;
  // Values of the rotary table row step() reads (cos and sin each): rope_dim / 2 or dr / 2.
  int64_t rope_pairs() const { return gqa_ ? g_.rope_dim / 2 : mla_ ? m_.dr / 2 : 0; }
  int64_t n_embd() const { return D_; }
  // x [N, D] the residual streams of N tokens (updated in place); f [N, D] the previous
  // block's FFN branches when add (added into x first), overwritten with this block's.
  // Token i stores its K/V (or latent) at row kv[i].pos of its sequence's layer caches
  // kv[i].cache0 [>= pos + 1, cache_width(0)] and kv[i].cache1 (F16 caches: rounded) and
  // attends to rows 0..pos;
  // cos, sin [N, rope_pairs()] its rotary rows. The linear and MoE ops run once for the N
  // tokens (each weight read once per step), the norms and routing per row, the attention
  // per token over its own cache after every token's store (so a prompt chunk's tokens see
  // the chunk's earlier positions). Each token's numbers are those it gets alone (N = 1):
  // batch invariance. One thread at a time (the block's routing and argument buffers are its own):
  // a second thread's step waits for the first. The caches' rows are of type0 and type1 (float32 or
  // F16, ops::KvType).
  struct TokenKv {
    void *cache0, *cache1;
    int64_t pos;
    ops::KvType type0 = ops::KvType::f32, type1 = ops::KvType::f32;
  };
  void step(int64_t N, float *x, float *f, bool add, const TokenKv *kv, const float *cos,
            const float *sin);
  // One token: x, f [D], the layer's caches, its position and rotary row (the N = 1 case).
  void step(float *x, float *f, bool add, const TokenKv &kv, const float *cos, const float *sin) {
    step(1, x, f, add, &kv, cos, sin);
  }

 private:
  // h [N, D] -> out [N, D] (attention), with the tokens' caches and rotary rows.
  void gqa(int64_t N, const float *h, const TokenKv *kv, const float *cos, const float *sin,
           float *out);
  void mla(int64_t N, const float *h, const TokenKv *kv, const float *cos, const float *sin,
           float *out);
  void ffn(int64_t N, const float *h, float *out);
  static float *buf(int i, size_t n);  // the calling thread's scratch buffer i, >= n floats
  // Runs f as stage s (timed when profiling, counting stage_bytes_[s] weight bytes a call).
  template <typename F>
  void stage(int s, F &&f);

  const float *attn_norm_, *ffn_norm_;
  float eps_;
  int64_t D_;
  bool gqa_ = false, mla_ = false, dense_ = false, moe_ = false;
  GqaStep g_{};
  MlaStep m_{};
  DenseStep d_{};
  MoeStep e_{};
  size_t stage_bytes_[kStages] = {};  // weight bytes a call of each stage reads (setters)
  std::mutex mu_;                     // held by step() and the setters
  std::vector<int64_t> ids_;
  std::vector<ops::GqaDecode> gqa_args_;
  std::vector<ops::MlaDecode> mla_args_;
};

}  // namespace numoe
