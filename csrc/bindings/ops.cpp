// numoe._cpu bindings: the small float ops of a decode step (csrc/ops.*: RMS norm, SwiGLU's
// product, rotary embedding, routing) and one token's attention (csrc/attention.*).
#include "ops.hpp"

#include <algorithm>

#include "attention.hpp"
#include "bindings.hpp"

namespace numoe::py {

using namespace nb::literals;

void bind_ops(nb::module_ &m) {
  // Row-strided float32 views (the last dimension contiguous): a slice of a wider tensor
  // (MLA's latent, its rope part) is read in place.
  using Strided = nb::ndarray<const float, nb::device::cpu>;
  auto inner_contiguous = [](const Strided &x, const char *what) {
    if (x.ndim() < 1 || (x.size() > 0 && x.stride(x.ndim() - 1) != 1))
      throw std::invalid_argument(std::string(what) + ": the last dimension must be contiguous");
  };
  m.def(
      "rms_norm",
      [inner_contiguous](const Strided &x, const Floats &w, float eps) {
        inner_contiguous(x, "rms_norm");
        if (w.ndim() != 1 || x.shape(x.ndim() - 1) != w.shape(0))
          throw std::invalid_argument("rms_norm: x [..., n] and weight [n] must agree");
        const int64_t n = static_cast<int64_t>(w.shape(0));
        const int64_t rows = n ? static_cast<int64_t>(x.size()) / n : 0;
        int64_t stride = n;  // rows of a 2-D view may be apart; more dimensions: contiguous
        if (x.ndim() == 2)
          stride = x.stride(0);
        else
          for (size_t d = 0, want = 1; d < x.ndim(); ++d) {
            const size_t i = x.ndim() - 1 - d;
            if (x.shape(i) > 1 && static_cast<size_t>(x.stride(i)) != want)
              throw std::invalid_argument("rms_norm: x must be contiguous or 2-D");
            want *= x.shape(i);
          }
        float *y;
        auto arr = new_floats2(static_cast<size_t>(rows), static_cast<size_t>(n), &y);
        ops::rms_norm(x.data(), stride, w.data(), eps, rows, n, y);
        return arr;
      },
      "x"_a.noconvert(), "weight"_a.noconvert(), "eps"_a,
      "x float32 [..., n] (contiguous, or 2-D with rows apart) -> [rows, n]: "
      "x / sqrt(mean(x^2) + eps) * weight, per row.");
  m.def(
      "silu_mul",
      [](const Floats &g, const Floats &u) {
        bool same = g.ndim() == u.ndim();
        for (size_t d = 0; same && d < g.ndim(); ++d) same = g.shape(d) == u.shape(d);
        if (!same) throw std::invalid_argument("silu_mul: g and u must have one shape");
        float *y;
        auto arr = new_floats2(1, g.size(), &y);
        ops::silu_mul(g.data(), u.data(), static_cast<int64_t>(g.size()), y);
        return arr;
      },
      "g"_a.noconvert(), "u"_a.noconvert(),
      "silu(g) * u = g / (1 + exp(-g)) * u for float32 arrays of one shape -> [1, size].");
  m.def(
      "add_rms_norm",
      [](const Floats &x, const Floats &y, const Floats &w, float eps) {
        if (w.ndim() != 1 || x.ndim() != 2 || x.shape(1) != w.shape(0) || y.ndim() != 2 ||
            y.shape(0) != x.shape(0) || y.shape(1) != x.shape(1))
          throw std::invalid_argument("add_rms_norm: x, y [rows, n] and weight [n] must agree");
        const size_t rows = x.shape(0), n = x.shape(1);
        float *s, *out;
        auto sum = new_floats2(rows, n, &s);
        auto arr = new_floats2(rows, n, &out);
        ops::add_rms_norm(x.data(), y.data(), w.data(), eps, static_cast<int64_t>(rows),
                          static_cast<int64_t>(n), s, out);
        return nb::make_tuple(sum, arr);
      },
      "x"_a.noconvert(), "y"_a.noconvert(), "weight"_a.noconvert(), "eps"_a,
      "x, y float32 [rows, n] (contiguous) -> (x + y, rms_norm(x + y)): a residual add and the "
      "next norm in one call.");
  m.def(
      "rope",
      [inner_contiguous](const Strided &x, const Floats &cos, const Floats &sin, int64_t dim,
                         bool neox) {
        if (x.ndim() != 3) throw std::invalid_argument("rope: x must be [T, H, head_dim]");
        inner_contiguous(x, "rope");
        const int64_t T = x.shape(0), H = x.shape(1), hd = x.shape(2);
        if (dim <= 0 || dim % 2 != 0 || dim > hd)
          throw std::invalid_argument("rope: dim must be even and in 1..head_dim");
        for (const Floats *a : {&cos, &sin})
          if (a->ndim() != 2 || static_cast<int64_t>(a->shape(0)) != T ||
              static_cast<int64_t>(a->shape(1)) != dim / 2)
            throw std::invalid_argument("rope: cos and sin must be [T, dim/2]");
        float *y;
        auto arr = new_floats2(static_cast<size_t>(T), static_cast<size_t>(H * hd), &y);
        for (int64_t t = 0; t < T; ++t)
          for (int64_t h = 0; h < H; ++h) {
            const float *src = x.data() + t * x.stride(0) + h * x.stride(1);
            std::copy(src, src + hd, y + (t * H + h) * hd);
          }
        ops::rope(y, T, H, hd, dim, cos.data(), sin.data(), neox);
        return arr;
      },
      "x"_a.noconvert(), "cos"_a.noconvert(), "sin"_a.noconvert(), "dim"_a, "neox"_a,
      "x float32 [T, H, head_dim] (any strides, the last dimension contiguous) -> "
      "[T, H*head_dim]: the first `dim` elements of each head rotated by cos, sin [T, dim/2] "
      "(pairs (i, i+dim/2) when neox, else (2i, 2i+1)).");
  m.def(
      "route",
      [](const Floats &logits, int64_t k, const std::string &gating,
         const std::optional<Floats> &bias, int64_t n_group, int64_t topk_group, bool norm,
         float scale) {
        if (logits.ndim() != 2) throw std::invalid_argument("route: logits must be [T, E]");
        const int64_t T = logits.shape(0), E = logits.shape(1);
        const int gate_fn = gating_id(gating);
        if (bias && (bias->ndim() != 1 || static_cast<int64_t>(bias->shape(0)) != E))
          throw std::invalid_argument("route: bias must be [E]");
        ops::check_route(E, k, gate_fn, bias.has_value(), n_group, topk_group);
        int64_t *ids;
        auto ids_arr = new_array<int64_t>(static_cast<size_t>(T * k), &ids);
        float *w;
        auto w_arr = new_array<float>(static_cast<size_t>(T * k), &w);
        ops::route(logits.data(), T, E, k, gate_fn, bias ? bias->data() : nullptr, n_group,
                   topk_group, norm, scale, ids, w);
        return std::make_pair(ids_arr, w_arr);
      },
      "logits"_a.noconvert(), "k"_a, "gating"_a, "bias"_a.noconvert() = nb::none(), "n_group"_a = 1,
      "topk_group"_a = 1, "norm"_a = false, "scale"_a = 1.0f,
      "Router logits float32 [T, E] -> (ids int64 [T*k], weights float32 [T*k]), best first "
      "(see numoe.layers.moe.route).");
  m.def(
      "gqa_decode",
      [](MutFloats &q, MutFloats &k, const Floats &v, MutArray &k_cache, MutArray &v_cache,
         int64_t pos, float scale, const std::optional<Floats> &q_norm,
         const std::optional<Floats> &k_norm, float eps, const std::optional<Floats> &cos,
         const std::optional<Floats> &sin, int64_t rope_dim, bool neox) {
        auto bad = [](const std::string &what) {
          return std::invalid_argument("gqa_decode: " + what);
        };
        const ops::KvType kt = kv_type(k_cache, "gqa_decode: k_cache");
        const ops::KvType vt = kv_type(v_cache, "gqa_decode: v_cache");
        if (k_cache.ndim() != 3 || v_cache.ndim() != 3 || k_cache.shape(0) != v_cache.shape(0) ||
            k_cache.shape(1) != v_cache.shape(1))
          throw bad("caches must be [n_ctx, Hkv, dk] and [n_ctx, Hkv, dv]");
        const int64_t n_ctx = k_cache.shape(0), Hkv = k_cache.shape(1);
        const int64_t dk = k_cache.shape(2), dv = v_cache.shape(2);
        if (Hkv <= 0 || dk <= 0 || dv <= 0) throw bad("empty cache dimensions");
        if (static_cast<int64_t>(k.size()) != Hkv * dk ||
            static_cast<int64_t>(v.size()) != Hkv * dv)
          throw bad("k and v must hold one token of Hkv heads");
        const int64_t H = static_cast<int64_t>(q.size()) / dk;
        if (H * dk != static_cast<int64_t>(q.size()) || H % Hkv != 0)
          throw bad("q must hold H * dk values, H a multiple of Hkv");
        if (pos < 0 || pos >= n_ctx) throw bad("position outside the cache");
        for (const auto *nrm : {&q_norm, &k_norm})
          if (*nrm && static_cast<int64_t>((*nrm)->size()) != dk) throw bad("norms must be [dk]");
        if (rope_dim < 0 || rope_dim % 2 != 0 || rope_dim > dk) throw bad("bad rope_dim");
        if (rope_dim > 0 && (!cos || !sin || static_cast<int64_t>(cos->size()) != rope_dim / 2 ||
                             static_cast<int64_t>(sin->size()) != rope_dim / 2))
          throw bad("cos and sin must hold rope_dim / 2 values");
        ops::GqaDecode a{q.data(), k.data(), v.data(), k_cache.data(), v_cache.data(), H, Hkv,
                         dk,       dv,       pos,      scale};
        a.q_norm = q_norm ? q_norm->data() : nullptr;
        a.k_norm = k_norm ? k_norm->data() : nullptr;
        a.eps = eps;
        if (rope_dim > 0) {
          a.cos = cos->data();
          a.sin = sin->data();
        }
        a.rope_dim = rope_dim;
        a.neox = neox;
        a.k_type = kt;
        a.v_type = vt;
        float *y;
        auto arr = new_floats2(1, static_cast<size_t>(H * dv), &y);
        {
          nb::gil_scoped_release release;
          ops::gqa_decode(a, y);
        }
        return arr;
      },
      "q"_a.noconvert(), "k"_a.noconvert(), "v"_a.noconvert(), "k_cache"_a.noconvert(),
      "v_cache"_a.noconvert(), "pos"_a, "scale"_a, "q_norm"_a.noconvert() = nb::none(),
      "k_norm"_a.noconvert() = nb::none(), "eps"_a = 0.0f, "cos"_a.noconvert() = nb::none(),
      "sin"_a.noconvert() = nb::none(), "rope_dim"_a = 0, "neox"_a = true,
      "One token's grouped-query attention (ops::gqa_decode): q [H*dk], k [Hkv*dk] normed and "
      "rotated in place, k and v stored at row pos of the caches [n_ctx, Hkv, d] (float32, or "
      "float16: stored rounded to nearest even), -> out [1, H*dv].");
  m.def(
      "mla_decode",
      [](const Floats &q_lat, MutFloats &q, int64_t d_nope, MutFloats &kv, const Floats &kv_norm,
         float eps, MutArray &latent_cache, MutArray &k_rope_cache, int64_t pos, float scale,
         const Floats &cos, const Floats &sin, bool neox) {
        auto bad = [](const std::string &what) {
          return std::invalid_argument("mla_decode: " + what);
        };
        const ops::KvType lt = kv_type(latent_cache, "mla_decode: latent_cache");
        const ops::KvType rt = kv_type(k_rope_cache, "mla_decode: k_rope_cache");
        if (latent_cache.ndim() != 2 || k_rope_cache.ndim() != 2 ||
            latent_cache.shape(0) != k_rope_cache.shape(0))
          throw bad("caches must be [n_ctx, R] and [n_ctx, dr]");
        const int64_t n_ctx = latent_cache.shape(0), R = latent_cache.shape(1);
        const int64_t dr = k_rope_cache.shape(1);
        if (R <= 0 || dr <= 0 || dr % 2 != 0) throw bad("R must be positive and dr even");
        const int64_t H = static_cast<int64_t>(q_lat.size()) / R;
        if (H <= 0 || H * R != static_cast<int64_t>(q_lat.size()))
          throw bad("q_lat must hold H * R values");
        if (d_nope < 0 || static_cast<int64_t>(q.size()) != H * (d_nope + dr))
          throw bad("q must hold H * (d_nope + dr) values");
        if (static_cast<int64_t>(kv.size()) != R + dr) throw bad("kv must hold R + dr values");
        if (static_cast<int64_t>(kv_norm.size()) != R) throw bad("kv_norm must be [R]");
        if (static_cast<int64_t>(cos.size()) != dr / 2 ||
            static_cast<int64_t>(sin.size()) != dr / 2)
          throw bad("cos and sin must hold dr / 2 values");
        if (pos < 0 || pos >= n_ctx) throw bad("position outside the cache");
        ops::MlaDecode a{q_lat.data(),
                         q.data() + d_nope,
                         d_nope + dr,
                         kv.data(),
                         kv_norm.data(),
                         eps,
                         latent_cache.data(),
                         k_rope_cache.data(),
                         H,
                         R,
                         dr,
                         pos,
                         scale,
                         cos.data(),
                         sin.data(),
                         neox,
                         lt,
                         rt};
        float *y;
        auto arr = new_floats2(1, static_cast<size_t>(H * R), &y);
        {
          nb::gil_scoped_release release;
          ops::mla_decode(a, y);
        }
        return arr;
      },
      "q_lat"_a.noconvert(), "q"_a.noconvert(), "d_nope"_a, "kv"_a.noconvert(),
      "kv_norm"_a.noconvert(), "eps"_a, "latent_cache"_a.noconvert(), "k_rope_cache"_a.noconvert(),
      "pos"_a, "scale"_a, "cos"_a.noconvert(), "sin"_a.noconvert(), "neox"_a,
      "One token's multi-head latent attention (ops::mla_decode): q_lat [H*R] (absorbed "
      "query), q [H*(d_nope+dr)] whose rope parts are rotated in place, kv [R+dr] normed and "
      "rotated in place and stored at row pos of the caches [n_ctx, R], [n_ctx, dr] (float32 "
      "or float16 each) -> out [1, H*R].");
}

}  // namespace numoe::py
