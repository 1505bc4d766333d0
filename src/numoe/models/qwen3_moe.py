"""Qwen3-MoE (`qwen3moe`) and Qwen2-MoE / Qwen1.5-MoE (`qwen2moe`).

qwen3moe: GQA with per-head q/k RMS norm, no biases, softmax top-k with renormalised
weights. qwen2moe: q/k/v biases, no q/k norm, top-k weights not renormalised, plus a
shared expert scaled by sigmoid(x . ffn_gate_inp_shexp). RoPE: half-split (neox).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..cache import DEFAULT_CACHE_TYPE, KVCache
from ..gguf import GGUFFile
from ..gguf.checks import ArchKeys, check_blocks
from ..layers.attention import GQAAttention
from ..layers.ffn import FeedForward
from ..layers.linear import Linear, load_weight
from ..layers.moe import Experts, SparseMoE, check_experts
from ..layers.rope import Rope
from ..runtime.settings import Runtime
from .base import Block, DecoderModel, n_vocab_of


@dataclass
class Config:
    arch: str = "qwen3moe"
    n_vocab: int = 151936
    n_ctx_train: int = 40960
    n_embd: int = 2048
    n_layer: int = 48
    n_head: int = 32
    n_head_kv: int = 4
    head_dim: int = 128
    n_expert: int = 128
    n_expert_used: int = 8
    n_ff_exp: int = 768
    n_ff_shexp: int = 0  # qwen2moe shared expert width
    norm_topk: bool = True
    rope_base: float = 1_000_000.0
    rms_eps: float = 1e-6

    @property
    def qkv_bias(self) -> bool:
        return self.arch == "qwen2moe"

    @property
    def qk_norm(self) -> bool:
        return self.arch == "qwen3moe"


_QWEN2 = Config(
    arch="qwen2moe", n_ctx_train=8192, n_layer=24, n_head=16, n_head_kv=16, n_expert=60,
    n_expert_used=4, n_ff_exp=1408, n_ff_shexp=5632, norm_topk=False,
)  # fmt: skip
PRESETS = {
    "tiny-qwen3moe": Config(
        n_vocab=512, n_ctx_train=4096, n_embd=64, n_layer=2, n_head=4, n_head_kv=2,
        head_dim=16, n_expert=8, n_expert_used=2, n_ff_exp=32,
    ),
    "tiny-qwen2moe": replace(
        _QWEN2, n_vocab=512, n_ctx_train=4096, n_embd=64, n_layer=2, n_head=4, n_head_kv=4,
        head_dim=16, n_expert=8, n_expert_used=2, n_ff_exp=32, n_ff_shexp=48,
    ),
    # expert F = 2 x 256: --numa shard splits it in 256-wide blocks over two nodes (tests)
    "small-qwen3moe": Config(
        n_vocab=512, n_ctx_train=4096, n_embd=256, n_layer=2, n_head=4, n_head_kv=2,
        head_dim=64, n_expert=8, n_expert_used=2, n_ff_exp=512,
    ),
    "qwen3-30b-a3b": Config(),
    "qwen1.5-moe-a2.7b": _QWEN2,
}  # fmt: skip


def config_from_gguf(g: GGUFFile) -> Config:
    k = ArchKeys(g)  # every key checked for type and range (GGUFError naming it)
    n_embd, n_head = k.int("embedding_length"), k.int("attention.head_count")
    n_head_kv = k.int("attention.head_count_kv")
    k.divides("attention.head_count_kv", n_head_kv, "attention.head_count", n_head)
    if not k.has("attention.key_length"):
        k.divides("attention.head_count", n_head, "embedding_length", n_embd)
    n_expert = k.int("expert_count")
    cfg = Config(
        arch=g.arch,
        n_vocab=n_vocab_of(g),
        n_ctx_train=k.int("context_length"),
        n_embd=n_embd,
        n_layer=k.int("block_count"),
        n_head=n_head,
        n_head_kv=n_head_kv,
        n_expert=n_expert,
        n_expert_used=k.int("expert_used_count", hi=n_expert),
        n_ff_exp=k.int("expert_feed_forward_length"),
        rope_base=k.float("rope.freq_base", 10000.0, lo=1.0),
        rms_eps=k.float("attention.layer_norm_rms_epsilon"),
    )
    cfg.head_dim = k.int("attention.key_length", cfg.n_embd // cfg.n_head)
    k.even("attention.key_length", cfg.head_dim)
    cfg.norm_topk = k.bool("expert_weights_norm", g.arch == "qwen3moe")
    if g.arch == "qwen2moe":
        cfg.n_ff_shexp = k.int("expert_shared_feed_forward_length", 0, lo=0)
    check_experts(cfg.n_expert, cfg.n_expert_used, str(g.path))
    check_blocks(g, cfg.n_layer)
    return cfg


def gguf_metadata(cfg: Config) -> dict:
    m = {
        "context_length": cfg.n_ctx_train,
        "embedding_length": cfg.n_embd,
        "block_count": cfg.n_layer,
        "feed_forward_length": cfg.n_ff_exp,
        "attention.head_count": cfg.n_head,
        "attention.head_count_kv": cfg.n_head_kv,
        "attention.key_length": cfg.head_dim,
        "attention.value_length": cfg.head_dim,
        "attention.layer_norm_rms_epsilon": cfg.rms_eps,
        "rope.freq_base": cfg.rope_base,
        "expert_count": cfg.n_expert,
        "expert_used_count": cfg.n_expert_used,
        "expert_feed_forward_length": cfg.n_ff_exp,
        "expert_weights_norm": cfg.norm_topk,
        "vocab_size": cfg.n_vocab,
    }
    if cfg.n_ff_shexp:
        m["expert_shared_feed_forward_length"] = cfg.n_ff_shexp
    return {f"{cfg.arch}.{k}": v for k, v in m.items()}


def tensor_specs(cfg: Config) -> dict[str, tuple[int, ...]]:
    V, D, Dh = cfg.n_vocab, cfg.n_embd, cfg.head_dim
    H, Hkv, E, F = cfg.n_head, cfg.n_head_kv, cfg.n_expert, cfg.n_ff_exp
    s = {
        "token_embd.weight": (V, D),
        "output_norm.weight": (D,),
        "output.weight": (V, D),
    }
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        s |= {
            p + "attn_norm.weight": (D,),
            p + "attn_q.weight": (H * Dh, D),
            p + "attn_k.weight": (Hkv * Dh, D),
            p + "attn_v.weight": (Hkv * Dh, D),
            p + "attn_output.weight": (D, H * Dh),
            p + "ffn_norm.weight": (D,),
            p + "ffn_gate_inp.weight": (E, D),
            p + "ffn_gate_exps.weight": (E, F, D),
            p + "ffn_up_exps.weight": (E, F, D),
            p + "ffn_down_exps.weight": (E, D, F),
        }
        if cfg.qkv_bias:
            s |= {p + "attn_q.bias": (H * Dh,), p + "attn_k.bias": (Hkv * Dh,)}
            s |= {p + "attn_v.bias": (Hkv * Dh,)}
        if cfg.qk_norm:
            s |= {p + "attn_q_norm.weight": (Dh,), p + "attn_k_norm.weight": (Dh,)}
        if cfg.n_ff_shexp:
            Fs = cfg.n_ff_shexp
            s |= {
                p + "ffn_gate_inp_shexp.weight": (1, D),  # as HF and llama.cpp store it
                p + "ffn_gate_shexp.weight": (Fs, D),
                p + "ffn_up_shexp.weight": (Fs, D),
                p + "ffn_down_shexp.weight": (D, Fs),
            }
    return s


class Model(DecoderModel):
    def __init__(self, cfg: Config, g: GGUFFile, runtime: Runtime):
        super().__init__(cfg, g, runtime)
        dev = self.placement.dense
        self.rope = Rope.plain(cfg.head_dim, cfg.rope_base, neox=True)
        self.blocks = [self._block(g, i, dev) for i in range(cfg.n_layer)]

    def _block(self, g: GGUFFile, i: int, dev) -> Block:
        c = self.cfg
        shared = gate = None
        if c.n_ff_shexp:
            shared = FeedForward.load(g, f"blk.{i}.ffn", c.n_embd, c.n_ff_shexp, dev, "_shexp")
            gate = load_weight(g, f"blk.{i}.ffn_gate_inp_shexp.weight", (c.n_embd,), dev)
        moe = SparseMoE(
            Linear.load(g, f"blk.{i}.ffn_gate_inp", c.n_expert, c.n_embd, dev),
            Experts.load(g, i, c.n_expert, c.n_embd, c.n_ff_exp, self.runtime.policy),
            k=c.n_expert_used,
            norm=c.norm_topk,
            shared=shared,
            shared_gate=gate,
        )
        return Block(g, i, c, dev, GQAAttention(g, i, c, self.rope, dev), moe)

    def new_cache(
        self, n_ctx: int, type_k: str = DEFAULT_CACHE_TYPE, type_v: str = DEFAULT_CACHE_TYPE
    ) -> KVCache:
        c = self.cfg
        dev = self.placement.dense
        return KVCache(c.n_layer, n_ctx, c.n_head_kv, c.head_dim, c.head_dim, dev, type_k, type_v)
