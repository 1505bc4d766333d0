"""Multi-head latent attention (DeepSeek-V2/V3), computed in the "absorbed" form.

Per token the cache holds the compressed latent c = kv_a_norm(x W_kv_a[:R]) [R] and one
shared roped key k_r [d_rope] (cache.MLACache), never per-head K/V. With per-head
up-projections W_uk [H, d_nope, R] and W_uv [H, d_v, R] (the two halves of kv_b):

    score(t, s, h) = (W_uk[h]^T q_nope[t, h]) . c[s] + q_rope[t, h] . k_r[s]
    out(t, h)      = W_uv[h] (sum_s p(t, s, h) c[s])

i.e. multi-query attention with key [c, k_r] (R + d_rope wide) and value c (R wide),
the form llama.cpp runs for `deepseek2` (head_count_kv = 1, key_length = R + d_rope).
Decoding then reads R + d_rope numbers per cached token instead of H * (d_nope + d_rope
+ d_v), which is what makes MLA cheap on memory bandwidth.

GGUF tensors (numpy shapes), 'blk.N.' prefix:
  attn_q [H*(d_nope+d_rope), D]                          when q_lora_rank == 0, else
  attn_q_a [Q, D], attn_q_a_norm [Q], attn_q_b [H*(d_nope+d_rope), Q]
  attn_kv_a_mqa [R + d_rope, D], attn_kv_a_norm [R], attn_output [D, H*d_v]
  and either attn_k_b [H, R, d_nope] + attn_v_b [H, d_v, R] (llama.cpp since 2025)
  or the older combined attn_kv_b [H*(d_nope+d_v), R].
"""

from __future__ import annotations

import torch

from .. import _cpu
from ..gguf import GGUFFile
from .linear import Linear, cpu_f32, cpu_ops, f32_numpy, linear_many, load_weight
from .norms import rms_norm


def latent_attention(
    q_lat: torch.Tensor,
    q_rope: torch.Tensor,
    latent: torch.Tensor,
    k_rope: torch.Tensor,
    pos: int,
    scale: float,
) -> torch.Tensor:
    """Causal attention with one shared key [latent, k_rope] and value latent.

    q_lat [T, H, R], q_rope [T, H, dr] at positions pos..pos+T-1; latent [S, R],
    k_rope [S, dr] with S = pos + T. Returns [T, H, R]. Heads are folded into the
    query rows and the two key parts are scored separately, so the cache is read in
    place: never concatenated, never copied per head.
    """
    T, H, R = q_lat.shape
    S = latent.shape[0]
    scores = q_lat.reshape(T * H, R) @ latent.T  # [T*H, S]
    scores = scores + q_rope.reshape(T * H, -1) @ k_rope.T
    scores = scores * scale
    if T > 1:
        qpos = torch.arange(pos, pos + T, device=q_lat.device)  # [T]
        future = torch.arange(S, device=q_lat.device)[None, :] > qpos[:, None]  # [T, S]
        scores = scores.view(T, H, S).masked_fill(future[:, None, :], float("-inf"))
    p = torch.softmax(scores.view(T * H, S).float(), dim=-1).to(latent.dtype)
    return (p @ latent).view(T, H, R)  # p [T*H, S]


class MLAttention:
    """DeepSeek multi-head latent attention over an MLACache (see the module doc)."""

    def __init__(self, g: GGUFFile, blk: int, cfg, rope, scale: float, device):
        H, D = cfg.n_head, cfg.n_embd
        R, Q = cfg.kv_lora_rank, cfg.q_lora_rank
        dn, dr, dv = cfg.d_nope, cfg.d_rope, cfg.d_v
        p = f"blk.{blk}.attn"
        self.blk, self.H, self.eps = blk, H, cfg.rms_eps
        self.rope, self.scale = rope, scale  # scale: softmax scale incl. YaRN mscale^2
        self.R, self.dn, self.dr, self.dv = R, dn, dr, dv
        self.q_a = self.q_a_norm = self.q_b = None  # without a q LoRA: q only
        if Q:
            self.q_a = Linear.load(g, f"{p}_q_a", Q, D, device)
            self.q_a_norm = load_weight(g, f"{p}_q_a_norm.weight", (Q,), device)
            self.q_b = Linear.load(g, f"{p}_q_b", H * (dn + dr), Q, device)
            self.q = None
        else:
            self.q = Linear.load(g, f"{p}_q", H * (dn + dr), D, device)
        self.kv_a = Linear.load(g, f"{p}_kv_a_mqa", R + dr, D, device)
        self.kv_a_norm = load_weight(g, f"{p}_kv_a_norm.weight", (R,), device)
        # k_b: q_nope [T, H, dn] -> absorbed query [T, H, R]; v_b: [T, H, R] -> [T, H, dv]
        if cfg.split_kv_b:  # per-head Linear ops over the raw tensors (groups = H)
            self.k_b = Linear.load(g, f"{p}_k_b", R, dn, device, groups=H)  # [H, R, dn]
            self.v_b = Linear.load(g, f"{p}_v_b", dv, R, device, groups=H)  # [H, dv, R]
        else:  # older files: kv_b [H*(dn+dv), R], per head dn rows of K then dv of V
            kv_b = load_weight(g, f"{p}_kv_b.weight", (H * (dn + dv), R), device)
            kv_b = kv_b.view(H, dn + dv, R)
            self.k_b = Linear.from_float(kv_b[:, :dn].transpose(1, 2))  # [H, R, dn]
            self.v_b = Linear.from_float(kv_b[:, dn:])  # [H, dv, R]
        self.o = Linear.load(g, f"{p}_output", D, H * dv, device)

    def set_step(self, db: _cpu.DecodeBlock) -> bool:
        """Give a C++ decode block (models/base.py) this attention: every projection a CPU op,
        the norms float32 CPU tensors and the rope spanning d_rope (what csrc/attention's
        mla_decode takes); False when some part cannot run there (then the model decodes
        through the torch path, __call__)."""
        q_a, q_b, q = self.q_a, self.q_b, self.q
        lins = (q, q_a, q_b, self.kv_a, self.k_b, self.v_b, self.o)
        if (
            not cpu_ops(*lins)
            or not cpu_f32(self.q_a_norm, self.kv_a_norm)
            or self.rope.dim != self.dr
        ):
            return False
        db.set_mla(
            kv_a=self.kv_a.op,
            kv_norm=f32_numpy(self.kv_a_norm),
            k_b=self.k_b.op,
            v_b=self.v_b.op,
            o=self.o.op,
            H=self.H,
            R=self.R,
            d_nope=self.dn,
            d_rope=self.dr,
            d_v=self.dv,
            neox=self.rope.neox,
            scale=self.scale,
            q=q and q.op,
            q_a=q_a and q_a.op,
            q_a_norm=f32_numpy(self.q_a_norm),
            q_b=q_b and q_b.op,
        )
        return True

    def __call__(self, x, cache, pos, cos, sin):  # x [T, D] -> [T, D]
        T, H = x.shape[0], self.H
        # x's two projections in one pool call: kv [T, R + dr], q or q_a
        q, kv = linear_many([self.q_a if self.q is None else self.q, self.kv_a], x)
        if self.q is None:
            q = self.q_b(rms_norm(q, self.q_a_norm, self.eps))
        q = q.view(T, H, self.dn + self.dr)  # [T, H, dn + dr]
        q_nope, q_rope = q[..., : self.dn], q[..., self.dn :]
        latent = rms_norm(kv[:, : self.R], self.kv_a_norm, self.eps)  # [T, R]
        k_rope = self.rope.apply(kv[:, None, self.R :], cos, sin)[:, 0]  # [T, dr]
        q_rope = self.rope.apply(q_rope, cos, sin)  # [T, H, dr]
        lat_all, kr_all = cache.update(self.blk, pos, latent, k_rope)  # [S, R], [S, dr]
        # an F16 cache holds the rounded values: attention over their exact upcast, as C++'s
        lat_all, kr_all = lat_all.to(latent.dtype), kr_all.to(latent.dtype)
        q_lat = self.k_b(q_nope)  # [T, H, R], W_uk absorbed into the query
        o_lat = latent_attention(q_lat, q_rope, lat_all, kr_all, pos, self.scale)
        out = self.v_b(o_lat)  # [T, H, dv]
        return self.o(out.reshape(T, H * self.dv))
