"""Scaled dot-product attention over a preallocated cache (GQA/MQA, causal)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _cpu
from .linear import Linear, cpu_f32, cpu_ops, f32_numpy, linear_many, load_weight
from .norms import rms_norm


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: int, scale: float
) -> torch.Tensor:
    """q [T, H, Dk] for positions pos..pos+T-1; k [S, Hkv, Dk], v [S, Hkv, Dv] with S = pos+T.

    Returns [T, H, Dv]. Query i sees keys 0..pos+i. H must be a multiple of Hkv.
    """
    T, H, Dk = q.shape
    S, Hkv, _ = k.shape
    if T == 1:
        # Decode: two batched matmuls per KV head group read the cache in place (no
        # repeat_interleave copies); torch's SDPA costs ~10x this at one query row.
        g = H // Hkv
        qg = q.view(Hkv, g, Dk) * scale  # [Hkv, g, Dk]: heads of KV head j are j*g..j*g+g-1
        p = torch.bmm(qg, k.permute(1, 2, 0)).softmax(-1)  # [Hkv, g, S]
        return torch.bmm(p, v.transpose(0, 1)).view(1, H, -1)  # [1, H, Dv]
    if Hkv != H:
        k = k.repeat_interleave(H // Hkv, dim=1)  # [S, H, Dk]
        v = v.repeat_interleave(H // Hkv, dim=1)  # [S, H, Dv]
    mask = None
    if T > 1:
        qpos = torch.arange(pos, pos + T, device=q.device)[:, None]  # [T, 1]
        mask = torch.arange(S, device=q.device)[None, :] <= qpos  # [T, S]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1),
        k.transpose(0, 1),
        v.transpose(0, 1),
        attn_mask=mask,
        scale=scale,
    )  # [H, T, Dv]
    return out.transpose(0, 1)


class GQAAttention:
    """Grouped-query attention with optional q/k/v bias (Qwen2) and per-head q/k RMS norm
    (Qwen3). Tensors 'blk.N.attn_{q,k,v,output}', 'attn_{q,k}_norm'."""

    def __init__(self, g, blk: int, cfg, rope, device):
        H, Hkv, Dh = cfg.n_head, cfg.n_head_kv, cfg.head_dim
        D, bias = cfg.n_embd, cfg.qkv_bias
        p = f"blk.{blk}.attn"
        self.blk, self.H, self.Hkv, self.Dh, self.eps = blk, H, Hkv, Dh, cfg.rms_eps
        self.q = Linear.load(g, f"{p}_q", H * Dh, D, device, bias)
        self.k = Linear.load(g, f"{p}_k", Hkv * Dh, D, device, bias)
        self.v = Linear.load(g, f"{p}_v", Hkv * Dh, D, device, bias)
        self.o = Linear.load(g, f"{p}_output", D, H * Dh, device)
        self.q_norm = self.k_norm = None
        if cfg.qk_norm:
            self.q_norm = load_weight(g, f"{p}_q_norm.weight", (Dh,), device)
            self.k_norm = load_weight(g, f"{p}_k_norm.weight", (Dh,), device)
        self.rope = rope

    def set_step(self, db: _cpu.DecodeBlock) -> bool:
        """Give a C++ decode block (models/base.py) this attention: its projections are CPU
        ops, the norms and biases float32 CPU tensors and the rope spans the head (what
        csrc/attention's gqa_decode takes); False when some part cannot run there (then the
        model decodes through the torch path, __call__)."""
        biases = [lin.bias for lin in (self.q, self.k, self.v)]
        lins = (self.q, self.k, self.v, self.o)
        if not (
            all(lin.op is not None for lin in lins)
            and cpu_ops(self.o)
            and cpu_f32(*biases, self.q_norm, self.k_norm)
            and self.rope.dim == self.Dh
        ):
            return False
        bq, bk, bv = map(f32_numpy, biases)
        db.set_gqa(
            q=self.q.op,
            k=self.k.op,
            v=self.v.op,
            o=self.o.op,
            H=self.H,
            Hkv=self.Hkv,
            Dh=self.Dh,
            rope_dim=self.rope.dim,
            neox=self.rope.neox,
            scale=self.Dh**-0.5,
            bq=bq,
            bk=bk,
            bv=bv,
            q_norm=f32_numpy(self.q_norm),
            k_norm=f32_numpy(self.k_norm),
        )
        return True

    def __call__(self, x, cache, pos, cos, sin):  # x [T, D] -> [T, D]
        T = x.shape[0]
        q, k, v = linear_many([self.q, self.k, self.v], x)
        q = q.view(T, self.H, self.Dh)  # [T, H, Dh]
        k = k.view(T, self.Hkv, self.Dh)  # [T, Hkv, Dh]
        v = v.view(T, self.Hkv, self.Dh)  # [T, Hkv, Dh]
        if self.q_norm is not None:
            q = rms_norm(q, self.q_norm, self.eps)
            k = rms_norm(k, self.k_norm, self.eps)
        q = self.rope.apply(q, cos, sin)
        k = self.rope.apply(k, cos, sin)
        k_all, v_all = cache.update(self.blk, pos, k, v)  # [S, Hkv, Dh], the cache's types
        # an F16 cache holds the rounded values: attention over their exact upcast, as C++'s
        k_all, v_all = k_all.to(q.dtype), v_all.to(q.dtype)  # [S, Hkv, Dh] each
        out = causal_attention(q, k_all, v_all, pos, self.Dh**-0.5)  # [T, H, Dh]
        return self.o(out.reshape(T, self.H * self.Dh))
