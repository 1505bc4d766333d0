#include "decode.hpp"

#include <atomic>
#include <chrono>
#include <cmath>
#include <mutex>
#include <stdexcept>
#include <string>

#include "attention.hpp"
#include "ops.hpp"

namespace numoe {
namespace {

void need(bool ok, const std::string &what) {
  if (!ok) throw std::invalid_argument("DecodeBlock: " + what);
}

// op maps n_in -> n_out with no groups.
void plain(const LinearOp *op, int64_t n_out, int64_t n_in, const std::string &what) {
  need(op != nullptr, what + " is missing");
  need(op->groups() == 1 && op->n_out() == n_out && op->n_in() == n_in,
       what + " must be [" + std::to_string(n_out) + ", " + std::to_string(n_in) + "], got [" +
           std::to_string(op->n_out()) + ", " + std::to_string(op->n_in()) + "]" +
           (op->groups() != 1 ? " x " + std::to_string(op->groups()) + " groups" : ""));
}

// gate, up [F, D] and down [D, F] of one SwiGLU (F from gate); names prefixed by `who`.
void swiglu(const LinearOp *gate, const LinearOp *up, const LinearOp *down, int64_t D,
            const std::string &who) {
  plain(gate, gate != nullptr ? gate->n_out() : 0, D, who + "gate");
  plain(up, gate->n_out(), D, who + "up");
  plain(down, D, gate->n_out(), who + "down");
}

void add_bias(float *y, const float *b, int64_t n) {
  if (b != nullptr)
    for (int64_t i = 0; i < n; ++i) y[i] += b[i];
}

std::atomic<bool> g_profiling{false};
std::mutex g_prof_mu;
std::vector<StageTotals> g_prof(kStages);

size_t bytes_of(std::initializer_list<const LinearOp *> ops) {
  size_t n = 0;
  for (const LinearOp *op : ops)
    if (op != nullptr) n += op->bytes();
  return n;
}

}  // namespace

const char *decode_stage_name(int stage) {
  static const char *names[kStages] = {"norms",
                                       "attn in (q, k, v / q, kv_a)",
                                       "MLA q_b",
                                       "MLA k_b",
                                       "attention",
                                       "MLA v_b",
                                       "attn output",
                                       "ffn in (gate, up / router)",
                                       "route",
                                       "MoE op (k experts)",
                                       "ffn down / shared down"};
  return stage >= 0 && stage < kStages ? names[stage] : "?";
}

void set_decode_profiling(bool on) {
  std::lock_guard<std::mutex> lock(g_prof_mu);
  g_prof.assign(kStages, StageTotals{});
  g_profiling = on;
}

std::vector<StageTotals> decode_profile() {
  std::lock_guard<std::mutex> lock(g_prof_mu);
  return g_prof;
}

template <typename F>
void DecodeBlock::stage(int s, F &&f) {
  if (!g_profiling.load(std::memory_order_relaxed)) {
    f();
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  f();
  const auto ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  std::lock_guard<std::mutex> lock(g_prof_mu);
  g_prof[s].ns += ns;
  g_prof[s].calls += 1;
  g_prof[s].bytes += stage_bytes_[s];
}

float *DecodeBlock::buf(int i, size_t n) {
  // One set per calling thread, shared by every block: a step's buffers live only through
  // the step, and the blocks a thread steps run one after another (a prompt chunk's large
  // buffers are held once, not once per layer).
  static thread_local std::vector<std::vector<float>> bufs;
  if (bufs.size() <= static_cast<size_t>(i)) bufs.resize(i + 1);
  if (bufs[i].size() < n) bufs[i].resize(n);
  return bufs[i].data();
}

void DecodeBlock::set_gqa(const GqaStep &a) {
  std::lock_guard<std::mutex> lock(mu_);
  need(!gqa_ && !mla_, "attention set twice");
  need(a.H > 0 && a.Hkv > 0 && a.Dh > 0 && a.H % a.Hkv == 0, "H must be a multiple of Hkv");
  need(a.rope_dim >= 0 && a.rope_dim % 2 == 0 && a.rope_dim <= a.Dh, "bad rope_dim");
  plain(a.q, a.H * a.Dh, D_, "q");
  plain(a.k, a.Hkv * a.Dh, D_, "k");
  plain(a.v, a.Hkv * a.Dh, D_, "v");
  plain(a.o, D_, a.H * a.Dh, "o");
  stage_bytes_[kAttnIn] = bytes_of({a.q, a.k, a.v});
  stage_bytes_[kO] = a.o->bytes();
  g_ = a;
  gqa_ = true;
}

void DecodeBlock::set_mla(const MlaStep &a) {
  std::lock_guard<std::mutex> lock(mu_);
  need(!gqa_ && !mla_, "attention set twice");
  need(a.H > 0 && a.R > 0 && a.dn >= 0 && a.dr > 0 && a.dr % 2 == 0 && a.dv > 0,
       "bad MLA dimensions");
  need((a.q != nullptr) != (a.q_a != nullptr && a.q_b != nullptr && a.q_a_norm != nullptr),
       "MLA takes q, or q_a, its norm and q_b");
  if (a.q != nullptr) {
    plain(a.q, a.H * (a.dn + a.dr), D_, "q");
  } else {
    plain(a.q_a, a.q_a->n_out(), D_, "q_a");
    plain(a.q_b, a.H * (a.dn + a.dr), a.q_a->n_out(), "q_b");
  }
  plain(a.kv_a, a.R + a.dr, D_, "kv_a");
  need(a.k_b != nullptr && a.k_b->groups() == a.H && a.k_b->n_out() == a.R && a.k_b->n_in() == a.dn,
       "k_b must be H groups of [R, d_nope]");
  need(a.v_b != nullptr && a.v_b->groups() == a.H && a.v_b->n_out() == a.dv && a.v_b->n_in() == a.R,
       "v_b must be H groups of [d_v, R]");
  plain(a.o, D_, a.H * a.dv, "o");
  stage_bytes_[kAttnIn] = bytes_of({a.q, a.q_a, a.kv_a});
  stage_bytes_[kQb] = bytes_of({a.q_b});
  stage_bytes_[kKb] = a.k_b->bytes();
  stage_bytes_[kVb] = a.v_b->bytes();
  stage_bytes_[kO] = a.o->bytes();
  m_ = a;
  mla_ = true;
}

void DecodeBlock::set_dense(const DenseStep &f) {
  std::lock_guard<std::mutex> lock(mu_);
  need(!dense_ && !moe_, "FFN set twice");
  swiglu(f.gate, f.up, f.down, D_, "");
  stage_bytes_[kFfnIn] = bytes_of({f.gate, f.up});
  stage_bytes_[kFfnDown] = f.down->bytes();
  d_ = f;
  dense_ = true;
}

void DecodeBlock::set_moe(const MoeStep &f) {
  std::lock_guard<std::mutex> lock(mu_);
  need(!dense_ && !moe_, "FFN set twice");
  need(f.router != nullptr && f.experts != nullptr, "MoE needs a router and experts");
  const int64_t E = f.experts->n_expert();
  plain(f.router, E, D_, "router");
  need(f.experts->n_embd() == D_, "experts' n_embd differs from the block's");
  ops::check_route(E, f.k, f.gating, f.bias != nullptr, f.n_group, f.topk_group);
  need((f.sh_gate == nullptr) == (f.sh_up == nullptr) &&
           (f.sh_gate == nullptr) == (f.sh_down == nullptr),
       "a shared expert needs sh_gate, sh_up and sh_down");
  need(f.sh_gate_vec == nullptr || f.sh_gate != nullptr, "sh_gate_vec without a shared expert");
  if (f.sh_gate != nullptr) swiglu(f.sh_gate, f.sh_up, f.sh_down, D_, "sh_");
  stage_bytes_[kFfnIn] = bytes_of({f.router, f.sh_gate, f.sh_up});
  stage_bytes_[kExperts] =
      static_cast<size_t>(f.k) *
      (f.experts->gate_bytes() + f.experts->up_bytes() + f.experts->down_bytes());
  stage_bytes_[kFfnDown] = bytes_of({f.sh_down});
  e_ = f;
  moe_ = true;
}

int64_t DecodeBlock::cache_width(int which) const {
  if (gqa_) return g_.Hkv * g_.Dh;
  if (mla_) return which == 0 ? m_.R : m_.dr;
  return 0;
}

void DecodeBlock::step(int64_t N, float *x, float *f, bool add, const TokenKv *kv, const float *cos,
                       const float *sin) {
  std::lock_guard<std::mutex> lock(mu_);
  need(ready(), "step before an attention and an FFN were set");
  if (N <= 0) return;
  float *h = buf(0, N * D_);  // [N, D]
  float *a = buf(1, N * D_);  // [N, D]
  stage(kNorm, [&] {
    if (add)
      ops::add_rms_norm(x, f, attn_norm_, eps_, N, D_, x, h);
    else
      ops::rms_norm(x, D_, attn_norm_, eps_, N, D_, h);
  });
  if (gqa_)
    gqa(N, h, kv, cos, sin, a);
  else
    mla(N, h, kv, cos, sin, a);
  stage(kNorm, [&] { ops::add_rms_norm(x, a, ffn_norm_, eps_, N, D_, x, h); });
  ffn(N, h, f);
}

void DecodeBlock::gqa(int64_t N, const float *h, const TokenKv *kv, const float *cos,
                      const float *sin, float *out) {
  const GqaStep &a = g_;
  const int64_t nq = a.H * a.Dh, nkv = a.Hkv * a.Dh, pairs = rope_pairs();
  float *q = buf(2, N * nq), *k = buf(3, N * nkv), *v = buf(4, N * nkv);  // [N, nq|nkv]
  float *att = buf(5, N * nq);                                            // [N, H * Dh]
  stage(kAttnIn, [&] {
    LinearOp::forward_many({a.q, a.k, a.v}, h, N, {q, k, v});
    for (int64_t t = 0; t < N; ++t) {
      add_bias(q + t * nq, a.bq, nq);
      add_bias(k + t * nkv, a.bk, nkv);
      add_bias(v + t * nkv, a.bv, nkv);
    }
  });
  gqa_args_.clear();
  for (int64_t t = 0; t < N; ++t) {
    ops::GqaDecode d{q + t * nq, k + t * nkv, v + t * nkv, kv[t].cache0, kv[t].cache1, a.H,
                     a.Hkv,      a.Dh,        a.Dh,        kv[t].pos,    a.scale};
    d.k_type = kv[t].type0;
    d.v_type = kv[t].type1;
    d.q_norm = a.q_norm;
    d.k_norm = a.k_norm;
    d.eps = eps_;
    d.cos = cos + t * pairs;
    d.sin = sin + t * pairs;
    d.rope_dim = a.rope_dim;
    d.neox = a.neox;
    gqa_args_.push_back(d);
  }
  stage(kAttn, [&] { ops::gqa_decode_batch(gqa_args_.data(), N, att, nq); });
  stage(kO, [&] { a.o->forward(att, N, out); });
}

void DecodeBlock::mla(int64_t N, const float *h, const TokenKv *kv, const float *cos,
                      const float *sin, float *out) {
  const MlaStep &a = m_;
  const int64_t dq = a.dn + a.dr, nkv = a.R + a.dr, pairs = rope_pairs();
  float *q = buf(2, N * a.H * dq), *kva = buf(3, N * nkv);  // [N, H * dq], [N, R + dr]
  if (a.q != nullptr) {
    stage(kAttnIn, [&] { LinearOp::forward_many({a.q, a.kv_a}, h, N, {q, kva}); });
  } else {
    const int64_t Q = a.q_a->n_out();
    float *qa = buf(4, N * Q);  // [N, Q]
    stage(kAttnIn, [&] { LinearOp::forward_many({a.q_a, a.kv_a}, h, N, {qa, kva}); });
    stage(kQb, [&] {
      ops::rms_norm(qa, Q, a.q_a_norm, eps_, N, Q, qa);
      a.q_b->forward(qa, N, q);
    });
  }
  float *q_nope = buf(5, N * a.H * a.dn), *q_lat = buf(6, N * a.H * a.R);  // [N, H, dn|R]
  stage(kKb, [&] {
    for (int64_t t = 0; t < N * a.H; ++t)  // (token, head) rows
      for (int64_t j = 0; j < a.dn; ++j) q_nope[t * a.dn + j] = q[t * dq + j];
    a.k_b->forward(q_nope, N, q_lat);  // [N, H, R]: W_uk absorbed into the query
  });
  float *o_lat = buf(7, N * a.H * a.R), *vo = buf(8, N * a.H * a.dv);  // [N, H, R|dv]
  mla_args_.clear();
  for (int64_t t = 0; t < N; ++t)
    mla_args_.push_back({q_lat + t * a.H * a.R, q + t * a.H * dq + a.dn, dq, kva + t * nkv,
                         a.kv_norm, eps_, kv[t].cache0, kv[t].cache1, a.H, a.R, a.dr, kv[t].pos,
                         a.scale, cos + t * pairs, sin + t * pairs, a.neox, kv[t].type0,
                         kv[t].type1});
  stage(kAttn, [&] { ops::mla_decode_batch(mla_args_.data(), N, o_lat, a.H * a.R); });
  stage(kVb, [&] { a.v_b->forward(o_lat, N, vo); });  // [N, H, dv]
  stage(kO, [&] { a.o->forward(vo, N, out); });
}

void DecodeBlock::ffn(int64_t N, const float *h, float *out) {
  if (dense_) {
    const int64_t F = d_.gate->n_out();
    float *g = buf(9, N * F), *u = buf(10, N * F);  // [N, F]
    stage(kFfnIn, [&] { LinearOp::forward_many({d_.gate, d_.up}, h, N, {g, u}); });
    stage(kFfnDown, [&] {
      ops::silu_mul(g, u, N * F, g);
      d_.down->forward(g, N, out);
    });
    return;
  }
  const MoeStep &e = e_;
  const int64_t E = e.experts->n_expert();
  float *logits = buf(11, N * E), *w = buf(12, N * e.k);  // [N, E], [N, k]
  ids_.resize(N * e.k);
  const int64_t F = e.sh_gate != nullptr ? e.sh_gate->n_out() : 0;
  float *g = nullptr, *u = nullptr;
  stage(kFfnIn, [&] {
    if (e.sh_gate != nullptr) {  // the router and the shared expert's gate, up: one pool call
      g = buf(9, N * F);
      u = buf(10, N * F);
      LinearOp::forward_many({e.router, e.sh_gate, e.sh_up}, h, N, {logits, g, u});
    } else {
      e.router->forward(h, N, logits);
    }
  });
  stage(kRoute, [&] {
    ops::route(logits, N, E, e.k, e.gating, e.bias, e.n_group, e.topk_group, e.norm, e.scale,
               ids_.data(), w);
  });
  stage(kExperts, [&] { e.experts->forward(h, N, ids_.data(), true, e.k, w, out); });
  if (e.sh_gate == nullptr) return;
  stage(kFfnDown, [&] {
    float *s = buf(13, N * D_);  // [N, D]
    ops::silu_mul(g, u, N * F, g);
    e.sh_down->forward(g, N, s);
    for (int64_t t = 0; t < N; ++t) {
      const float *ht = h + t * D_;
      float *st = s + t * D_, *ot = out + t * D_;
      if (e.sh_gate_vec != nullptr) {  // sigmoid(h . gate_vec) scales the shared expert
        float z = 0.f;
        for (int64_t i = 0; i < D_; ++i) z += ht[i] * e.sh_gate_vec[i];
        const float sg = 1.f / (1.f + std::exp(-z));
        for (int64_t i = 0; i < D_; ++i) st[i] *= sg;
      }
      for (int64_t i = 0; i < D_; ++i) ot[i] += st[i];
    }
  });
}

}  // namespace numoe
