"""DeepSeek-V2 / V2-Lite / V2.5 / V3 / R1 (`deepseek2`).

Attention: multi-head latent attention (layers.mla), with (V2, V3) or without (V2-Lite)
a low-rank query; RoPE on interleaved pairs (llama.cpp "norm") over the d_rope part of
each head only; YaRN with DeepSeek's softmax-scale correction. FFN: the first
`leading_dense_block_count` layers are dense SwiGLU, the rest routed experts plus
`expert_shared_count` shared experts (one SwiGLU of width n_shared * n_ff_exp).
Routing: softmax (V2) or sigmoid with a score-correction bias `exp_probs_b` (V3),
optionally group-limited, optionally renormalised, times `expert_weights_scale`.

Two MLA tensor layouts occur in published files (see layers.mla): llama.cpp since its
2025 MLA change writes attn_k_b/attn_v_b and MQA-form metadata (head_count_kv 1,
key_length = kv_lora + rope, value_length = kv_lora, key_length_mla = nope + rope,
value_length_mla = v_head); older files have attn_kv_b and MHA-form metadata
(head_count_kv = head_count, key_length = nope + rope, value_length = v_head).

YaRN (llama.cpp semantics): `rope.scaling.yarn_log_multiplier` holds 0.1 *
mscale_all_dim (as llama.cpp's converter writes it); the softmax scale is
(1 + yarn_log_multiplier * ln factor)^2 / sqrt(nope + rope) and the rotation itself is
not magnitude-scaled (transformers' attention_factor = mscale / mscale_all_dim = 1 for
every published DeepSeek config).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..cache import DEFAULT_CACHE_TYPE, MLACache, cache_dtype
from ..gguf import GGUFError, GGUFFile
from ..gguf.checks import MAX_COUNT, ArchKeys, check_blocks, describe
from ..layers.ffn import FeedForward
from ..layers.linear import Linear, load_weight
from ..layers.mla import MLAttention
from ..layers.moe import Experts, SparseMoE, check_experts
from ..layers.rope import Rope, yarn_inv_freq, yarn_mscale
from ..quote import quote
from ..runtime.settings import Runtime
from .base import Block, DecoderModel, n_vocab_of

GATING = {1: "softmax", 2: "sigmoid"}  # GGUF expert_gating_func, as llama.cpp


@dataclass
class Config:
    arch: str = "deepseek2"
    n_vocab: int = 129280
    n_ctx_train: int = 163840
    n_embd: int = 7168
    n_layer: int = 61
    n_head: int = 128
    q_lora_rank: int = 1536  # 0: plain attn_q
    kv_lora_rank: int = 512
    d_nope: int = 128  # per-head key dims without rope
    d_rope: int = 64  # per-head (query) / shared (key) roped dims
    d_v: int = 128
    n_ff: int = 18432  # leading dense layers
    n_layer_dense: int = 3
    n_expert: int = 256
    n_expert_used: int = 8
    n_ff_exp: int = 2048
    n_expert_shared: int = 1
    gating: str = "sigmoid"  # 'softmax' (V2) or 'sigmoid' (V3)
    expert_bias: bool = True  # 'exp_probs_b' score-correction bias (V3)
    norm_topk: bool = True
    expert_scale: float = 2.5  # routed scaling factor
    n_group: int = 8  # group-limited routing: experts in n_group groups,
    n_group_used: int = 4  # only the best n_group_used groups compete
    rope_base: float = 10000.0
    rope_scaling: str = "yarn"  # 'none' or 'yarn'
    rope_factor: float = 40.0
    rope_orig_ctx: int = 4096
    yarn_log_mul: float = 0.1  # GGUF value: 0.1 * mscale_all_dim
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    rms_eps: float = 1e-6
    split_kv_b: bool = True  # attn_k_b + attn_v_b (current) or attn_kv_b (older files)

    @property
    def d_qk(self) -> int:
        return self.d_nope + self.d_rope

    @property
    def softmax_scale(self) -> float:
        m = yarn_mscale(self.rope_factor, self.yarn_log_mul) if self.rope_scaling == "yarn" else 1.0
        return m * m / math.sqrt(self.d_qk)


V2_LITE = Config(
    n_vocab=102400, n_embd=2048, n_layer=27, n_head=16, q_lora_rank=0, n_ff=10944,
    n_layer_dense=1, n_expert=64, n_expert_used=6, n_ff_exp=1408, n_expert_shared=2,
    gating="softmax", expert_bias=False, norm_topk=False, expert_scale=1.0, n_group=1,
    n_group_used=1, yarn_log_mul=0.0707,
)  # fmt: skip
NO_YARN = {"rope_scaling": "none", "rope_factor": 1.0, "rope_orig_ctx": 0, "yarn_log_mul": 0.0}
TINY = {
    "n_vocab": 512, "n_ctx_train": 256, "n_embd": 64, "n_layer": 2, "n_head": 4,
    "kv_lora_rank": 32, "d_nope": 16, "d_rope": 8, "d_v": 16, "n_ff": 96,
    "n_layer_dense": 1, "n_expert": 8, "n_expert_used": 2, "n_ff_exp": 32,
}  # fmt: skip
PRESETS = {
    "tiny-v2": replace(V2_LITE, **TINY | NO_YARN),
    "tiny-v3": replace(
        Config(), **TINY, q_lora_rank=24, n_group=4, n_group_used=2, rope_factor=4.0,
        rope_orig_ctx=64,
    ),
    "deepseek-v2-lite": V2_LITE,
    "deepseek-v3": Config(),
}  # fmt: skip


def config_from_gguf(g: GGUFFile) -> Config:
    k = ArchKeys(g)  # every key checked for type and range (GGUFError naming it)
    where = str(g.path)
    n_embd, n_head = k.int("embedding_length"), k.int("attention.head_count")
    R, dr = k.int("attention.kv_lora_rank"), k.int("rope.dimension_count")
    k.even("rope.dimension_count", dr)
    k_mla = k.int("attention.key_length_mla", None)
    v_mla = k.int("attention.value_length_mla", None)
    pre = f"{g.arch}.attention."
    if (k_mla is None) != (v_mla is None):
        raise GGUFError(
            f"{where}: {pre}key_length_mla and {pre}value_length_mla must come together"
        )
    if k_mla is not None:  # MQA form: the cache holds [latent, rope key]
        d_qk, d_v = k_mla, v_mla
        k_len, v_len = k.int("attention.key_length"), k.int("attention.value_length")
        n_kv = k.int("attention.head_count_kv", 1)
        if k_len != R + dr or v_len != R or n_kv != 1:
            raise GGUFError(
                f"{where}: inconsistent MLA metadata: {pre}key_length {k_len} (want "
                f"kv_lora_rank + rope.dimension_count = {R + dr}), {pre}value_length "
                f"{v_len} (want kv_lora_rank = {R}), {pre}head_count_kv {n_kv} (want 1)"
            )
    else:  # older MHA form
        if not (k.has("attention.key_length") and k.has("attention.value_length")):
            k.divides("attention.head_count", n_head, "embedding_length", n_embd)
        d_qk = k.int("attention.key_length", n_embd // n_head)
        d_v = k.int("attention.value_length", n_embd // n_head)
        if d_qk == R + dr:
            raise GGUFError(
                f"{where}: {pre}key_length {d_qk} = kv_lora_rank + rope.dimension_count "
                f"(MQA form) but {pre}key_length_mla/value_length_mla are missing"
            )
    if d_qk <= dr or d_v <= 0:
        raise GGUFError(
            f"{where}: attention key length {d_qk} must exceed "
            f"{g.arch}.rope.dimension_count {dr} (value length {d_v})"
        )
    n_layer = k.int("block_count")
    n_dense = k.int("leading_dense_block_count", 0, lo=0, hi=n_layer)
    n_ff = _dense_width(k, n_dense)
    gating_id = k.int("expert_gating_func", 1, lo=0) or 1  # 0 (unset) = softmax, llama.cpp
    if gating_id not in GATING:
        raise GGUFError(
            f"{where}: {g.arch}.expert_gating_func {gating_id} unknown (1 softmax, 2 sigmoid)"
        )
    scaling = k.str("rope.scaling.type", "none")
    if scaling not in ("none", "yarn"):
        raise GGUFError(f"{where}: {g.arch}.rope.scaling.type {quote(scaling)} unsupported")
    n_ctx = k.int("context_length")
    n_expert = k.int("expert_count")
    cfg = Config(
        n_vocab=n_vocab_of(g),
        n_ctx_train=n_ctx,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        q_lora_rank=k.int("attention.q_lora_rank", 0, lo=0),
        kv_lora_rank=R,
        d_nope=d_qk - dr,
        d_rope=dr,
        d_v=d_v,
        n_ff=n_ff,
        n_layer_dense=n_dense,
        n_expert=n_expert,
        n_expert_used=k.int("expert_used_count", hi=n_expert),
        n_ff_exp=k.int("expert_feed_forward_length"),
        n_expert_shared=k.int("expert_shared_count", 0, lo=0),
        gating=GATING[gating_id],
        expert_bias=g.has(f"blk.{n_dense}.exp_probs_b.bias"),
        norm_topk=k.bool("expert_weights_norm", False),
        # 0 (unset) = 1, as llama.cpp
        expert_scale=k.float("expert_weights_scale", 1.0, open_=False) or 1.0,
        n_group=k.int("expert_group_count", 1, lo=0) or 1,
        n_group_used=k.int("expert_group_used_count", 1, lo=0) or 1,
        rope_base=k.float("rope.freq_base", 10000.0, lo=1.0),
        rope_scaling=scaling,
        rope_factor=k.float("rope.scaling.factor", 1.0, open_=False) or 1.0,  # 0: unset
        rope_orig_ctx=k.int("rope.scaling.original_context_length", n_ctx),
        yarn_log_mul=k.float("rope.scaling.yarn_log_multiplier", 0.0, open_=False),
        yarn_beta_fast=k.float("rope.scaling.yarn_beta_fast", 32.0),
        yarn_beta_slow=k.float("rope.scaling.yarn_beta_slow", 1.0),
        rms_eps=k.float("attention.layer_norm_rms_epsilon"),
        split_kv_b=g.has("blk.0.attn_k_b.weight") or not g.has("blk.0.attn_kv_b.weight"),
    )
    if scaling == "none":
        cfg = replace(cfg, **NO_YARN)
    check_experts(cfg.n_expert, cfg.n_expert_used, where)
    if cfg.n_expert % cfg.n_group or not 0 < cfg.n_group_used <= cfg.n_group:
        raise GGUFError(
            f"{where}: {g.arch}.expert_group_count {cfg.n_group} / "
            f"expert_group_used_count {cfg.n_group_used} do not fit {cfg.n_expert} experts"
        )
    check_blocks(g, cfg.n_layer)
    return cfg


def _dense_width(k: ArchKeys, n_dense: int) -> int:
    """feed_forward_length: the leading dense layers' width (required when there are some),
    one integer or a per-layer array whose first entry is theirs."""
    key = "feed_forward_length"
    if isinstance(k.g.meta.get(k.key(key)), list):
        v = k.g.meta[k.key(key)]
        if not v or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise k.fail(f"{k.key(key)} is {describe(v)}; it must hold integers")
        if n_dense and not 1 <= v[0] <= MAX_COUNT:
            raise k.fail(f"{k.key(key)}[0] is {v[0]}; it must be in 1..{MAX_COUNT}")
        return v[0]
    return k.int(key) if n_dense else k.int(key, 0, lo=0)


def gguf_metadata(cfg: Config) -> dict:
    H, R, dr = cfg.n_head, cfg.kv_lora_rank, cfg.d_rope
    m = {
        "context_length": cfg.n_ctx_train,
        "embedding_length": cfg.n_embd,
        "block_count": cfg.n_layer,
        "feed_forward_length": cfg.n_ff,
        "leading_dense_block_count": cfg.n_layer_dense,
        "vocab_size": cfg.n_vocab,
        "attention.head_count": H,
        "attention.q_lora_rank": cfg.q_lora_rank,
        "attention.kv_lora_rank": R,
        "attention.layer_norm_rms_epsilon": cfg.rms_eps,
        "rope.dimension_count": dr,
        "rope.freq_base": cfg.rope_base,
        "expert_count": cfg.n_expert,
        "expert_used_count": cfg.n_expert_used,
        "expert_feed_forward_length": cfg.n_ff_exp,
        "expert_shared_count": cfg.n_expert_shared,
        "expert_weights_scale": cfg.expert_scale,
        "expert_weights_norm": cfg.norm_topk,
        "expert_gating_func": {v: k for k, v in GATING.items()}[cfg.gating],
        "expert_group_count": cfg.n_group,
        "expert_group_used_count": cfg.n_group_used,
    }
    if cfg.split_kv_b:  # MQA form, as llama.cpp writes it now
        m |= {
            "attention.head_count_kv": 1,
            "attention.key_length": R + dr,
            "attention.value_length": R,
            "attention.key_length_mla": cfg.d_qk,
            "attention.value_length_mla": cfg.d_v,
        }
    else:
        m |= {
            "attention.head_count_kv": H,
            "attention.key_length": cfg.d_qk,
            "attention.value_length": cfg.d_v,
        }
    if cfg.rope_scaling == "yarn":
        m |= {
            "rope.scaling.type": "yarn",
            "rope.scaling.factor": cfg.rope_factor,
            "rope.scaling.original_context_length": cfg.rope_orig_ctx,
            "rope.scaling.yarn_log_multiplier": cfg.yarn_log_mul,
        }
    return {f"{cfg.arch}.{k}": v for k, v in m.items()}


def tensor_specs(cfg: Config) -> dict[str, tuple[int, ...]]:
    V, D, H = cfg.n_vocab, cfg.n_embd, cfg.n_head
    R, Q, dn, dr, dv = (
        cfg.kv_lora_rank,
        cfg.q_lora_rank,
        cfg.d_nope,
        cfg.d_rope,
        cfg.d_v,
    )
    E, F, Fs = cfg.n_expert, cfg.n_ff_exp, cfg.n_ff_exp * cfg.n_expert_shared
    s = {
        "token_embd.weight": (V, D),
        "output_norm.weight": (D,),
        "output.weight": (V, D),
    }
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        s |= {
            p + "attn_norm.weight": (D,),
            p + "attn_kv_a_mqa.weight": (R + dr, D),
            p + "attn_kv_a_norm.weight": (R,),
            p + "attn_output.weight": (D, H * dv),
            p + "ffn_norm.weight": (D,),
        }
        if Q:
            s |= {
                p + "attn_q_a.weight": (Q, D),
                p + "attn_q_a_norm.weight": (Q,),
                p + "attn_q_b.weight": (H * (dn + dr), Q),
            }
        else:
            s[p + "attn_q.weight"] = (H * (dn + dr), D)
        if cfg.split_kv_b:
            s |= {p + "attn_k_b.weight": (H, R, dn), p + "attn_v_b.weight": (H, dv, R)}
        else:
            s[p + "attn_kv_b.weight"] = (H * (dn + dv), R)
        if i < cfg.n_layer_dense:
            s |= {
                p + "ffn_gate.weight": (cfg.n_ff, D),
                p + "ffn_up.weight": (cfg.n_ff, D),
                p + "ffn_down.weight": (D, cfg.n_ff),
            }
            continue
        s |= {
            p + "ffn_gate_inp.weight": (E, D),
            p + "ffn_gate_exps.weight": (E, F, D),
            p + "ffn_up_exps.weight": (E, F, D),
            p + "ffn_down_exps.weight": (E, D, F),
        }
        if cfg.expert_bias:
            s[p + "exp_probs_b.bias"] = (E,)
        if Fs:
            s |= {
                p + "ffn_gate_shexp.weight": (Fs, D),
                p + "ffn_up_shexp.weight": (Fs, D),
                p + "ffn_down_shexp.weight": (D, Fs),
            }
    return s


def make_rope(cfg: Config) -> Rope:
    """Interleaved rope over d_rope dims; YaRN frequencies when configured."""
    if cfg.rope_scaling == "yarn" and cfg.rope_factor > 1.0:
        inv = yarn_inv_freq(
            cfg.d_rope,
            cfg.rope_base,
            cfg.rope_factor,
            cfg.rope_orig_ctx,
            cfg.yarn_beta_fast,
            cfg.yarn_beta_slow,
        )
        return Rope(cfg.d_rope, inv, neox=False)
    return Rope.plain(cfg.d_rope, cfg.rope_base, neox=False)


class Model(DecoderModel):
    def __init__(self, cfg: Config, g: GGUFFile, runtime: Runtime):
        super().__init__(cfg, g, runtime)
        dev = self.placement.dense
        self.rope = make_rope(cfg)
        self.blocks = [self._block(g, i, dev) for i in range(cfg.n_layer)]

    def _block(self, g: GGUFFile, i: int, dev) -> Block:
        c = self.cfg
        attn = MLAttention(g, i, c, self.rope, c.softmax_scale, dev)
        if i < c.n_layer_dense:
            return Block(
                g,
                i,
                c,
                dev,
                attn,
                FeedForward.load(g, f"blk.{i}.ffn", c.n_embd, c.n_ff, dev),
            )
        shared = None
        if c.n_expert_shared:
            Fs = c.n_ff_exp * c.n_expert_shared
            shared = FeedForward.load(g, f"blk.{i}.ffn", c.n_embd, Fs, dev, "_shexp")
        bias = None
        if c.expert_bias:
            bias = load_weight(g, f"blk.{i}.exp_probs_b.bias", (c.n_expert,), dev)
        moe = SparseMoE(
            Linear.load(g, f"blk.{i}.ffn_gate_inp", c.n_expert, c.n_embd, dev),
            Experts.load(g, i, c.n_expert, c.n_embd, c.n_ff_exp, self.runtime.policy),
            k=c.n_expert_used,
            gating=c.gating,
            norm=c.norm_topk,
            scale=c.expert_scale,
            bias=bias,
            n_group=c.n_group,
            topk_group=c.n_group_used,
            shared=shared,
        )
        return Block(g, i, c, dev, attn, moe)

    def new_cache(
        self, n_ctx: int, type_k: str = DEFAULT_CACHE_TYPE, type_v: str = DEFAULT_CACHE_TYPE
    ) -> MLACache:
        """The latent and the rope key both take type_k (they are the key; the latent is the
        value too): llama.cpp's MLA cache, where -ctv does not apply. type_v is checked."""
        c = self.cfg
        cache_dtype(type_v)  # a bad name is an error here too, not ignored
        return MLACache(c.n_layer, n_ctx, c.kv_lora_rank, c.d_rope, self.placement.dense,
                        type_k, type_k)  # fmt: skip
