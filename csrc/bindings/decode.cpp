// numoe._cpu bindings: one decode step of a whole block (csrc/decode.*). The setters take
// keyword arguments only (the layers' set_step methods call them by name); every op or
// array a block is given is kept alive by it.
#include "decode.hpp"

#include "bindings.hpp"

namespace numoe::py {

using namespace nb::literals;

namespace {

struct PyDecodeBlock {
  std::vector<nb::object> keep;  // the ops and arrays the block points into
  DecodeBlock blk;
  PyDecodeBlock(const Floats &attn_norm, const Floats &ffn_norm, float eps)
      : keep{nb::cast(attn_norm), nb::cast(ffn_norm)},
        blk(attn_norm.data(), ffn_norm.data(), eps, check(attn_norm, ffn_norm)) {}
  static int64_t check(const Floats &a, const Floats &f) {
    if (a.ndim() != 1 || f.ndim() != 1 || a.shape(0) != f.shape(0) || a.shape(0) == 0)
      throw std::invalid_argument("DecodeBlock: attn_norm and ffn_norm must be [D], D > 0");
    return static_cast<int64_t>(a.shape(0));
  }
  // A Linear op (None: nullptr), kept alive by the block.
  const LinearOp *op(const nb::object &o, const char *what) {
    if (o.is_none()) return nullptr;
    PyLinear *p = nullptr;
    if (!nb::try_cast<PyLinear *>(o, p) || p == nullptr)
      throw std::invalid_argument(std::string("DecodeBlock: ") + what +
                                  " must be a numoe._cpu.Linear or None");
    keep.push_back(o);
    return &p->op;
  }
  // A float32 vector of n values (None: nullptr), kept alive by the block.
  const float *vec(const nb::object &o, int64_t n, const char *what) {
    if (o.is_none()) return nullptr;
    Floats a;
    if (!nb::try_cast<Floats>(o, a, false) || a.ndim() != 1 || static_cast<int64_t>(a.size()) != n)
      throw std::invalid_argument(std::string("DecodeBlock: ") + what +
                                  " must be a contiguous float32 array [" + std::to_string(n) +
                                  "]");
    keep.push_back(o);
    return a.data();
  }
};

void set_gqa(PyDecodeBlock &s, nb::object q, nb::object k, nb::object v, nb::object o, int64_t H,
             int64_t Hkv, int64_t Dh, int64_t rope_dim, bool neox, float scale, nb::object bq,
             nb::object bk, nb::object bv, nb::object q_norm, nb::object k_norm) {
  s.blk.set_gqa({s.op(q, "q"), s.op(k, "k"), s.op(v, "v"), s.op(o, "o"),  // checked in order
                 s.vec(bq, H * Dh, "bq"), s.vec(bk, Hkv * Dh, "bk"), s.vec(bv, Hkv * Dh, "bv"),
                 s.vec(q_norm, Dh, "q_norm"), s.vec(k_norm, Dh, "k_norm"), H, Hkv, Dh, rope_dim,
                 neox, scale});
}

void set_mla(PyDecodeBlock &s, nb::object kv_a, nb::object kv_norm, nb::object k_b, nb::object v_b,
             nb::object o, int64_t H, int64_t R, int64_t dn, int64_t dr, int64_t dv, bool neox,
             float scale, nb::object q, nb::object q_a, nb::object q_a_norm, nb::object q_b) {
  MlaStep a;
  a.q = s.op(q, "q"), a.q_a = s.op(q_a, "q_a"), a.q_b = s.op(q_b, "q_b");
  a.q_a_norm = a.q_a ? s.vec(q_a_norm, a.q_a->n_out(), "q_a_norm") : nullptr;
  a.kv_a = s.op(kv_a, "kv_a"), a.k_b = s.op(k_b, "k_b"), a.v_b = s.op(v_b, "v_b"),
  a.o = s.op(o, "o");
  a.kv_norm = s.vec(kv_norm, R, "kv_norm");
  if (a.kv_norm == nullptr) throw std::invalid_argument("DecodeBlock: kv_norm is None");
  a.H = H, a.R = R, a.dn = dn, a.dr = dr, a.dv = dv, a.neox = neox, a.scale = scale;
  s.blk.set_mla(a);
}

void set_moe(PyDecodeBlock &s, nb::object router, nb::object experts, int64_t k,
             const std::string &gating, nb::object bias, int64_t n_group, int64_t topk_group,
             bool norm, float scale, nb::object sh_gate, nb::object sh_up, nb::object sh_down,
             nb::object sh_gate_vec) {
  MoeStep f{s.op(router, "router"), nullptr, k, gating_id(gating)};
  PyMoE *moe = nullptr;
  if (!nb::try_cast<PyMoE *>(experts, moe) || moe == nullptr)
    throw std::invalid_argument("DecodeBlock: experts must be a numoe._cpu.MoE");
  s.keep.push_back(experts);
  f.experts = &moe->op;
  f.bias = s.vec(bias, f.experts->n_expert(), "bias");
  f.n_group = n_group, f.topk_group = topk_group, f.norm = norm, f.scale = scale;
  f.sh_gate = s.op(sh_gate, "sh_gate"), f.sh_up = s.op(sh_up, "sh_up"),
  f.sh_down = s.op(sh_down, "sh_down");
  f.sh_gate_vec = s.vec(sh_gate_vec, s.blk.n_embd(), "sh_gate_vec");
  s.blk.set_moe(f);
}

std::invalid_argument bad_step(const char *fn, const std::string &what) {
  return std::invalid_argument(std::string("DecodeBlock.") + fn + ": " + what);
}

// A layer's two caches of one sequence: [rows, cache_width(i)] each, the same rows; returns
// the rows; their element types (float32 or float16, each its own) into t0, t1.
int64_t check_caches(const PyDecodeBlock &s, const MutArray &c0, const MutArray &c1, const char *fn,
                     const std::string &which, ops::KvType &t0, ops::KvType &t1) {
  const MutArray *cs[2] = {&c0, &c1};
  t0 = kv_type(c0, std::string("DecodeBlock.") + fn + ": " + which + "cache 0");
  t1 = kv_type(c1, std::string("DecodeBlock.") + fn + ": " + which + "cache 1");
  for (int i = 0; i < 2; ++i) {
    const int64_t w = s.blk.cache_width(i);
    if (cs[i]->ndim() < 2 ||
        static_cast<int64_t>(cs[i]->size()) != static_cast<int64_t>(cs[i]->shape(0)) * w)
      throw bad_step(fn, which + "cache " + std::to_string(i) + " must be [n_ctx, " +
                             std::to_string(w) + " values]");
  }
  if (c0.shape(0) != c1.shape(0)) throw bad_step(fn, which + "the two caches differ in n_ctx");
  return static_cast<int64_t>(c0.shape(0));
}

void step(PyDecodeBlock &s, MutFloats &x, MutFloats &f, bool add, MutArray &c0, MutArray &c1,
          int64_t pos, const Floats &cos, const Floats &sin) {
  if (!s.blk.ready()) throw bad_step("step", "set an attention and an FFN first");
  const int64_t D = s.blk.n_embd();
  if (static_cast<int64_t>(x.size()) != D || static_cast<int64_t>(f.size()) != D)
    throw bad_step("step", "x and f must hold D = " + std::to_string(D) + " values");
  DecodeBlock::TokenKv kv{c0.data(), c1.data(), pos};
  const int64_t rows = check_caches(s, c0, c1, "step", "", kv.type0, kv.type1);
  if (pos < 0 || pos >= rows) throw bad_step("step", "position outside the cache");
  const size_t pairs = static_cast<size_t>(s.blk.rope_pairs());
  if (pairs > 0 && (cos.size() != pairs || sin.size() != pairs))
    throw bad_step("step", "cos and sin must hold " + std::to_string(pairs) + " values (one row)");
  nb::gil_scoped_release release;
  s.blk.step(x.data(), f.data(), add, kv, cos.data(), sin.data());
}

using Ints32 = nb::ndarray<const int32_t, nb::c_contig, nb::device::cpu>;
using Ints64 = nb::ndarray<const int64_t, nb::c_contig, nb::device::cpu>;

void step_batch(PyDecodeBlock &s, MutFloats &x, MutFloats &f, bool add, std::vector<MutArray> &c0,
                std::vector<MutArray> &c1, const Ints32 &seq, const Ints64 &pos, const Floats &cos,
                const Floats &sin) {
  const char *fn = "step_batch";
  if (!s.blk.ready()) throw bad_step(fn, "set an attention and an FFN first");
  const int64_t D = s.blk.n_embd();
  if (x.ndim() != 2 || static_cast<int64_t>(x.shape(1)) != D || x.shape(0) == 0)
    throw bad_step(fn, "x must be [N, D = " + std::to_string(D) + "], N >= 1");
  const int64_t N = static_cast<int64_t>(x.shape(0));
  if (f.ndim() != 2 || f.shape(0) != x.shape(0) || f.shape(1) != x.shape(1))
    throw bad_step(fn, "f must be [N, D] as x");
  if (x.data() < f.data() + f.size() && f.data() < x.data() + x.size())
    throw bad_step(fn, "x and f overlap");
  if (c0.empty() || c0.size() != c1.size())
    throw bad_step(fn, "cache0 and cache1 must list the same number (>= 1) of sequences");
  std::vector<int64_t> rows(c0.size());
  std::vector<std::pair<ops::KvType, ops::KvType>> types(c0.size());
  for (size_t i = 0; i < c0.size(); ++i)
    rows[i] = check_caches(s, c0[i], c1[i], fn, "sequence " + std::to_string(i) + ": ",
                           types[i].first, types[i].second);
  if (seq.ndim() != 1 || static_cast<int64_t>(seq.size()) != N)
    throw bad_step(fn, "seq must be int32 [N = " + std::to_string(N) + "]");
  if (pos.ndim() != 1 || static_cast<int64_t>(pos.size()) != N)
    throw bad_step(fn, "pos must be int64 [N = " + std::to_string(N) + "]");
  const int64_t pairs = s.blk.rope_pairs();
  for (const Floats *a : {&cos, &sin})
    if (pairs > 0 && (a->ndim() != 2 || static_cast<int64_t>(a->shape(0)) != N ||
                      static_cast<int64_t>(a->shape(1)) != pairs))
      throw bad_step(fn,
                     "cos and sin must be [N, " + std::to_string(pairs) + "] (one row a token)");
  std::vector<DecodeBlock::TokenKv> kv(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) {
    const int32_t q = seq.data()[i];
    const int64_t p = pos.data()[i];
    if (q < 0 || static_cast<size_t>(q) >= c0.size())
      throw bad_step(fn, "seq[" + std::to_string(i) + "] = " + std::to_string(q) +
                             " names no sequence (there are " + std::to_string(c0.size()) + ")");
    if (p < 0 || p >= rows[q])
      throw bad_step(fn, "pos[" + std::to_string(i) + "] = " + std::to_string(p) +
                             " is outside its cache (" + std::to_string(rows[q]) + " rows)");
    kv[i] = {c0[q].data(), c1[q].data(), p, types[q].first, types[q].second};
  }
  nb::gil_scoped_release release;
  s.blk.step(N, x.data(), f.data(), add, kv.data(), cos.data(), sin.data());
}

}  // namespace

void bind_decode(nb::module_ &m) {
  nb::class_<PyDecodeBlock>(m, "DecodeBlock",
                            "One token through a whole pre-norm block in one call (csrc/decode."
                            "hpp): set one attention and one FFN, then step().")
      .def(nb::init<const Floats &, const Floats &, float>(), "attn_norm"_a.noconvert(),
           "ffn_norm"_a.noconvert(), "eps"_a)
      .def("set_gqa", &set_gqa, nb::kw_only(), "q"_a, "k"_a, "v"_a, "o"_a, "H"_a, "Hkv"_a, "Dh"_a,
           "rope_dim"_a, "neox"_a, "scale"_a, "bq"_a = nb::none(), "bk"_a = nb::none(),
           "bv"_a = nb::none(), "q_norm"_a = nb::none(), "k_norm"_a = nb::none(),
           "Grouped-query attention: Linear ops q, k, v, o (optional biases bq, bk, bv and "
           "per-head q/k norms [Dh]), H query and Hkv key/value heads of Dh, rope over the "
           "first rope_dim of each head.")
      .def("set_mla", &set_mla, nb::kw_only(), "kv_a"_a, "kv_norm"_a, "k_b"_a, "v_b"_a, "o"_a,
           "H"_a, "R"_a, "d_nope"_a, "d_rope"_a, "d_v"_a, "neox"_a, "scale"_a, "q"_a = nb::none(),
           "q_a"_a = nb::none(), "q_a_norm"_a = nb::none(), "q_b"_a = nb::none(),
           "Multi-head latent attention, absorbed form: the query from q, or from q_a, its "
           "norm q_a_norm and q_b.")
      .def(
          "set_dense",
          [](PyDecodeBlock &s, nb::object gate, nb::object up, nb::object down) {
            s.blk.set_dense({s.op(gate, "gate"), s.op(up, "up"), s.op(down, "down")});
          },
          nb::kw_only(), "gate"_a, "up"_a, "down"_a, "Dense SwiGLU FFN.")
      .def("set_moe", &set_moe, nb::kw_only(), "router"_a, "experts"_a, "k"_a, "gating"_a,
           "bias"_a = nb::none(), "n_group"_a = 1, "topk_group"_a = 1, "norm"_a = false,
           "scale"_a = 1.0f, "sh_gate"_a = nb::none(), "sh_up"_a = nb::none(),
           "sh_down"_a = nb::none(), "sh_gate_vec"_a = nb::none(),
           "Router + top-k (route's arguments, see numoe.layers.moe.route) + MoE op, and an "
           "optional shared expert sh_gate, sh_up, sh_down scaled by sigmoid(h . sh_gate_vec) "
           "when that vector is given.")
      .def("step", &step, "x"_a.noconvert(), "f"_a.noconvert(), "add"_a, "cache0"_a.noconvert(),
           "cache1"_a.noconvert(), "pos"_a, "cos"_a.noconvert(), "sin"_a.noconvert(),
           "x [D] (in place: the residual stream), f [D] (in: the previous block's FFN branch, "
           "added to x when add; out: this block's), the layer's two caches [n_ctx, ...] "
           "(float32 or float16 each), the token's position and rotary row cos, sin.")
      .def("step_batch", &step_batch, "x"_a.noconvert(), "f"_a.noconvert(), "add"_a,
           "cache0"_a.noconvert(), "cache1"_a.noconvert(), "seq"_a.noconvert(), "pos"_a.noconvert(),
           "cos"_a.noconvert(), "sin"_a.noconvert(),
           "N tokens through the block in one call: x, f [N, D] as step's, one row a token; "
           "cache0, cache1 lists of the layer's two caches of S sequences [n_ctx, ...] (float32 "
           "or float16 each); seq "
           "int32 [N] each token's sequence (an index into those lists), pos int64 [N] its "
           "position, cos, sin [N, pairs] its rotary rows. The linear and MoE ops run once for "
           "all N; each token's numbers are those of step() alone.");
  m.def(
      "decode_profiling", [](bool on) { set_decode_profiling(on); }, "on"_a,
      "Time every stage of every DecodeBlock.step from now on (sums reset), or stop.");
  m.def(
      "decode_profile",
      [] {
        std::vector<std::tuple<std::string, double, int64_t, size_t>> out;
        const auto p = decode_profile();
        for (int s = 0; s < kStages; ++s)
          out.emplace_back(decode_stage_name(s), p[s].ns * 1e-9, p[s].calls, p[s].bytes);
        return out;
      },
      "Per stage of DecodeBlock.step since decode_profiling(True): (name, seconds, calls, "
      "weight bytes read), summed over the blocks.");
}

}  // namespace numoe::py
