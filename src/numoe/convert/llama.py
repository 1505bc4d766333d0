"""transformers Mixtral / Llama -> numoe llama, with llama.cpp's q/k row permutation.

Options read from the HF config (set them on `model.config` before converting):
`gguf_split_experts = True` writes the old per-expert Mixtral layout
('blk.N.ffn_gate.E.weight') instead of the merged 'blk.N.ffn_gate_exps.weight'.
Mixtral's `sliding_window` (null in current Mixtral configs) is ignored, as llama.cpp does.
"""

from __future__ import annotations

import math

import torch

from ..models.llama import Config
from .common import Pairs, convert_common


def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF half-split rope rows -> llama.cpp interleaved rows, per head (as llama.cpp's
    convert_hf_to_gguf.py LlamaModel.permute): within each head, rows (i, i + d/2)
    become rows (2i, 2i + 1)."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def config_from_hf(hf) -> Config:
    mixtral = hf.model_type == "mixtral"
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(hf, flag, False):
            raise ValueError(f"{flag}=True is not supported for llama (no biases in GGUF llama)")
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    rp = dict(getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {})
    theta = rp.get("rope_theta") or getattr(hf, "rope_theta", 10000.0)
    rope_type = rp.get("rope_type", rp.get("type", "default"))
    if rope_type == "default":
        factors = ()
    elif rope_type == "llama3":
        factors = llama3_freq_factors(head_dim, theta, rp)
    else:
        raise ValueError(f"rope_type '{rope_type}' is not supported for llama")
    return Config(
        arch="llama",
        n_vocab=hf.vocab_size,
        n_ctx_train=hf.max_position_embeddings,
        n_embd=hf.hidden_size,
        n_layer=hf.num_hidden_layers,
        n_head=hf.num_attention_heads,
        n_head_kv=hf.num_key_value_heads or hf.num_attention_heads,
        head_dim=head_dim,
        n_ff=hf.intermediate_size,
        n_expert=hf.num_local_experts if mixtral else 0,
        n_expert_used=hf.num_experts_per_tok if mixtral else 0,
        rope_base=float(theta),
        rms_eps=hf.rms_norm_eps,
        rope_freq_factors=factors,
        tie_embd=bool(getattr(hf, "tie_word_embeddings", False)),
        split_experts=mixtral and bool(getattr(hf, "gguf_split_experts", False)),
    )


def llama3_freq_factors(dim: int, base: float, rp: dict) -> tuple[float, ...]:
    """The 'rope_freqs' tensor llama.cpp writes for Llama 3.1 rope scaling: each
    frequency is divided by its factor (1 for short wavelengths, `factor` for long)."""
    factor = rp.get("factor", 8.0)
    low, high = rp.get("low_freq_factor", 1.0), rp.get("high_freq_factor", 4.0)
    old_ctx = rp.get("original_max_position_embeddings", 8192)
    out = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * base ** (i / dim)
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(float(factor))
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return tuple(out)


def convert_tensor(name: str, t: torch.Tensor, cfg: Config) -> Pairs:
    if name == "lm_head.weight" and cfg.tie_embd:
        return []  # tied: transformers lists the shared tensor under both names
    out = []
    for gname, a in convert_common(name, t):
        if gname.endswith("attn_q.weight"):
            a = permute_qk(a, cfg.n_head)
        elif gname.endswith("attn_k.weight"):
            a = permute_qk(a, cfg.n_head_kv)
        if cfg.split_experts and gname.endswith("_exps.weight"):
            stem = gname.removesuffix("_exps.weight")  # 'blk.N.ffn_gate'
            out += [(f"{stem}.{e}.weight", a[e]) for e in range(a.shape[0])]
        else:
            out.append((gname, a))
    if name == "model.embed_tokens.weight" and cfg.rope_freq_factors:
        out.append(("rope_freqs.weight", torch.tensor(cfg.rope_freq_factors)))
    return out
