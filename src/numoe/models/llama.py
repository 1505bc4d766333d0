"""Llama (`llama`): dense Llama 1/2/3 and, with experts, Mixtral 8x7B / 8x22B.

GQA without biases or q/k norm; RoPE on interleaved pairs (llama.cpp "norm"), because
llama.cpp's converter permutes the q/k rows (see numoe.convert.llama.permute_qk); an
optional 'rope_freqs' tensor divides the frequencies (Llama 3.1 "llama3" scaling).
FFN: dense SwiGLU when `expert_count` is 0 or absent, else a softmax top-k router with
renormalised weights over SwiGLU experts, stored merged ('ffn_gate_exps') or, in older
Mixtral files, one tensor per expert ('ffn_gate.E').
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..cache import DEFAULT_CACHE_TYPE, KVCache
from ..gguf import GGUFError, GGUFFile, dequantize
from ..gguf.checks import MAX_COUNT, ArchKeys, check_blocks
from ..layers.attention import GQAAttention
from ..layers.ffn import FeedForward
from ..layers.linear import Linear
from ..layers.moe import Experts, SparseMoE, check_experts
from ..layers.rope import Rope, base_inv_freq
from ..quote import quote
from ..runtime.settings import Runtime
from .base import Block, DecoderModel, n_vocab_of

TOKENIZER_KIND = "llama"  # SentencePiece-style vocabulary for synth / convert


@dataclass
class Config:
    arch: str = "llama"
    n_vocab: int = 32000
    n_ctx_train: int = 32768
    n_embd: int = 4096
    n_layer: int = 32
    n_head: int = 32
    n_head_kv: int = 8
    head_dim: int = 128
    n_ff: int = 14336  # expert width with experts, dense FFN width without
    n_expert: int = 8  # 0: dense Llama
    n_expert_used: int = 2
    rope_base: float = 1_000_000.0
    rms_eps: float = 1e-5
    rope_freq_factors: tuple[float, ...] = ()  # 'rope_freqs' tensor [head_dim/2], or none
    tie_embd: bool = False  # no 'output.weight': the head reuses token_embd
    split_experts: bool = False  # old Mixtral layout: 'blk.N.ffn_gate.E.weight'

    qkv_bias = False  # read by layers.attention.GQAAttention
    qk_norm = False


PRESETS = {
    "tiny-mixtral": Config(
        n_vocab=512, n_ctx_train=4096, n_embd=64, n_layer=2, n_head=4, n_head_kv=2,
        head_dim=16, n_ff=32, n_expert=8, n_expert_used=2,
    ),
    "mixtral-8x7b": Config(),
    "mixtral-8x22b": replace(
        Config(), n_ctx_train=65536, n_embd=6144, n_layer=56, n_head=48, n_ff=16384,
        n_vocab=32768,
    ),
}  # fmt: skip


def config_from_gguf(g: GGUFFile) -> Config:
    k = ArchKeys(g)  # every key checked for type and range (GGUFError naming it)
    n_embd, n_head = k.int("embedding_length"), k.int("attention.head_count")
    n_expert = k.int("expert_count", 0, lo=0)
    cfg = Config(
        arch=g.arch,
        n_vocab=n_vocab_of(g),
        n_ctx_train=k.int("context_length"),
        n_embd=n_embd,
        n_layer=k.int("block_count"),
        n_head=n_head,
        n_ff=k.int("feed_forward_length"),
        n_expert=n_expert,
        n_expert_used=k.int("expert_used_count", 0, lo=0, hi=n_expert or MAX_COUNT),
        rope_base=k.float("rope.freq_base", 10000.0, lo=1.0),
        rms_eps=k.float("attention.layer_norm_rms_epsilon"),
    )
    cfg.n_head_kv = k.int("attention.head_count_kv", cfg.n_head)
    k.divides("attention.head_count_kv", cfg.n_head_kv, "attention.head_count", cfg.n_head)
    if not (k.has("rope.dimension_count") and k.has("attention.key_length")):
        k.divides("attention.head_count", n_head, "embedding_length", n_embd)
    n_rot = k.int("rope.dimension_count", cfg.n_embd // cfg.n_head)
    cfg.head_dim = k.int("attention.key_length", n_rot)
    v_len = k.int("attention.value_length", cfg.head_dim)
    if v_len != cfg.head_dim or n_rot != cfg.head_dim:
        raise GGUFError(
            f"{g.path}: key_length {cfg.head_dim}, value_length "
            f"{v_len} and rope.dimension_count {n_rot} "
            "differ; numoe's llama needs them equal"
        )
    k.even("rope.dimension_count", n_rot)
    scaling = k.str("rope.scaling.type", "none")
    factor = k.float("rope.scaling.factor", 1.0, open_=False) or 1.0  # 0: unset
    if scaling not in ("none", "") and factor != 1.0:
        raise GGUFError(
            f"{g.path}: rope scaling {quote(scaling)} (factor {factor}) is not supported for "
            "llama (only Llama 3 'rope_freqs' factors)"
        )
    if g.has("rope_freqs.weight"):
        f = dequantize(g.tensor("rope_freqs.weight", (cfg.head_dim // 2,)))
        if not bool(torch.isfinite(f).all() and (f > 0).all()):
            raise GGUFError(f"{g.path}: tensor 'rope_freqs.weight' holds values that are not "
                            "finite and positive")  # fmt: skip
        cfg.rope_freq_factors = tuple(f.double().tolist())
    cfg.tie_embd = not g.has("output.weight")
    if cfg.n_expert:
        check_experts(cfg.n_expert, cfg.n_expert_used, str(g.path))
        cfg.split_experts = not g.has("blk.0.ffn_gate_exps.weight") and g.has(
            "blk.0.ffn_gate.0.weight"
        )
    check_blocks(g, cfg.n_layer)
    return cfg


def gguf_metadata(cfg: Config) -> dict:
    m = {
        "context_length": cfg.n_ctx_train,
        "embedding_length": cfg.n_embd,
        "block_count": cfg.n_layer,
        "feed_forward_length": cfg.n_ff,
        "attention.head_count": cfg.n_head,
        "attention.head_count_kv": cfg.n_head_kv,
        "attention.key_length": cfg.head_dim,
        "attention.value_length": cfg.head_dim,
        "attention.layer_norm_rms_epsilon": cfg.rms_eps,
        "rope.freq_base": cfg.rope_base,
        "rope.dimension_count": cfg.head_dim,
        "vocab_size": cfg.n_vocab,
    }
    if cfg.n_expert:
        m["expert_count"] = cfg.n_expert
        m["expert_used_count"] = cfg.n_expert_used
    return {f"{cfg.arch}.{k}": v for k, v in m.items()}


def tensor_specs(cfg: Config) -> dict[str, tuple[int, ...]]:
    V, D, Dh = cfg.n_vocab, cfg.n_embd, cfg.head_dim
    H, Hkv, E, F = cfg.n_head, cfg.n_head_kv, cfg.n_expert, cfg.n_ff
    s = {"token_embd.weight": (V, D), "output_norm.weight": (D,)}
    if not cfg.tie_embd:
        s["output.weight"] = (V, D)
    if cfg.rope_freq_factors:
        s["rope_freqs.weight"] = (Dh // 2,)
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        s |= {
            p + "attn_norm.weight": (D,),
            p + "attn_q.weight": (H * Dh, D),
            p + "attn_k.weight": (Hkv * Dh, D),
            p + "attn_v.weight": (Hkv * Dh, D),
            p + "attn_output.weight": (D, H * Dh),
            p + "ffn_norm.weight": (D,),
        }
        if not E:
            s |= {
                p + "ffn_gate.weight": (F, D),
                p + "ffn_up.weight": (F, D),
                p + "ffn_down.weight": (D, F),
            }
            continue
        s[p + "ffn_gate_inp.weight"] = (E, D)
        if cfg.split_experts:
            for e in range(E):
                s |= {
                    p + f"ffn_gate.{e}.weight": (F, D),
                    p + f"ffn_up.{e}.weight": (F, D),
                    p + f"ffn_down.{e}.weight": (D, F),
                }
        else:
            s |= {
                p + "ffn_gate_exps.weight": (E, F, D),
                p + "ffn_up_exps.weight": (E, F, D),
                p + "ffn_down_exps.weight": (E, D, F),
            }
    return s


class Model(DecoderModel):
    def __init__(self, cfg: Config, g: GGUFFile, runtime: Runtime):
        super().__init__(cfg, g, runtime)
        dev = self.placement.dense
        inv_freq = base_inv_freq(cfg.head_dim, cfg.rope_base)  # [Dh/2] float64
        if cfg.rope_freq_factors:
            inv_freq = inv_freq / torch.tensor(cfg.rope_freq_factors, dtype=torch.float64)
        self.rope = Rope(cfg.head_dim, inv_freq, neox=False)
        self.blocks = [self._block(g, i, dev) for i in range(cfg.n_layer)]

    def _block(self, g: GGUFFile, i: int, dev) -> Block:
        c = self.cfg
        if c.n_expert:
            ffn = SparseMoE(
                Linear.load(g, f"blk.{i}.ffn_gate_inp", c.n_expert, c.n_embd, dev),
                Experts.load(g, i, c.n_expert, c.n_embd, c.n_ff, self.runtime.policy),
                k=c.n_expert_used,
                norm=True,  # Mixtral: top-k softmax weights renormalised
            )
        else:
            ffn = FeedForward.load(g, f"blk.{i}.ffn", c.n_embd, c.n_ff, dev)
        return Block(g, i, c, dev, GQAAttention(g, i, c, self.rope, dev), ffn)

    def new_cache(
        self, n_ctx: int, type_k: str = DEFAULT_CACHE_TYPE, type_v: str = DEFAULT_CACHE_TYPE
    ) -> KVCache:
        c = self.cfg
        dev = self.placement.dense
        return KVCache(c.n_layer, n_ctx, c.n_head_kv, c.head_dim, c.head_dim, dev, type_k, type_v)
