"""What every decoder-only architecture here shares: embeddings, the block loop, the
final norm and the output head. Architecture files supply the blocks and the rope."""

from __future__ import annotations

import torch

from ..gguf import GGUFFile
from ..layers.linear import Embedding, Linear, load_weight
from ..layers.norms import add_rms_norm
from ..placement import Placement


class Block:
    """Pre-norm residual block: x += attn(norm(x)); x += ffn(norm(x)).

    The FFN branch is returned unadded, (x, f) for the output x + f, so that the next block
    (or the final norm) adds it together with its norm (`add_rms_norm`: one op, not two)."""

    def __init__(self, g: GGUFFile, blk: int, cfg, device, attn, ffn):
        D = cfg.n_embd
        self.attn_norm = load_weight(g, f"blk.{blk}.attn_norm.weight", (D,), device)
        self.ffn_norm = load_weight(g, f"blk.{blk}.ffn_norm.weight", (D,), device)
        self.attn, self.ffn, self.eps = attn, ffn, cfg.rms_eps

    def __call__(self, x, cache, pos, cos, sin, y=None):
        """x [T, D] plus y [T, D] (the previous block's FFN branch, or None) -> (x, f): the
        residual stream after attention and this block's FFN branch, [T, D] each."""
        # Decode: each op's weights start streaming into the caches (idle pool workers)
        # before the Python work in front of it; the op then reads them from cache.
        decode = x.shape[0] == 1
        if decode:
            self.attn.warm()
        x, h = add_rms_norm(x, y, self.attn_norm, self.eps)
        a = self.attn(h, cache, pos, cos, sin)
        if decode:
            self.ffn.warm()
        x, h = add_rms_norm(x, a, self.ffn_norm, self.eps)
        return x, self.ffn(h)


class DecoderModel:
    """tokens [T] -> logits [T, V]. Subclasses set self.blocks, self.rope, new_cache()."""

    def __init__(self, cfg, g: GGUFFile, placement: Placement):
        self.cfg, self.placement = cfg, placement
        dev = placement.dense
        V, D = cfg.n_vocab, cfg.n_embd
        self.tok_embd = Embedding.load(g, "token_embd.weight", V, D, dev)  # [V, D]
        self.output_norm = load_weight(g, "output_norm.weight", (D,), dev)
        if g.has("output.weight"):
            self.output = Linear.load(g, "output", V, D, dev)
        else:  # tied embeddings
            self.output = self.tok_embd.as_linear()
        self.blocks: list = []

    def new_cache(self, n_ctx: int):
        raise NotImplementedError

    @torch.inference_mode()
    def forward(
        self, tokens: torch.Tensor, cache, pos: int, n_logits: int | None = None
    ) -> torch.Tensor | None:
        """tokens [T] at positions pos.. -> logits [T, V] of every position, or of the last
        n_logits only ([n_logits, V]; 0: none, returns None: a prefill chunk whose logits
        nobody reads skips the output head, the biggest matrix of most models)."""
        dev = self.placement.dense
        tokens = tokens.to(dev)
        x = self.tok_embd(tokens)  # [T, D]
        cos, sin = self.rope.cos_sin(pos, tokens.shape[0], dev)  # [T, d_rope/2]
        y = None  # the last block's FFN branch, added with the final norm
        for blk in self.blocks:
            x, y = blk(x, cache, pos, cos, sin, y)
        if n_logits is not None:
            if n_logits == 0:
                return None
            x = x[-n_logits:]  # [n_logits, D]
            y = None if y is None else y[-n_logits:]
        if x.shape[0] == 1:
            self.output.warm()
        _, x = add_rms_norm(x, y, self.output_norm, self.cfg.rms_eps)
        return self.output(x).float()  # [T, V]


def n_vocab_of(g: GGUFFile) -> int:
    """Vocabulary size: '{arch}.vocab_size', else the tokenizer's list, else token_embd."""
    n = g.arch_get("vocab_size", None)
    if n is None and "tokenizer.ggml.tokens" in g.meta:
        n = len(g.meta["tokenizer.ggml.tokens"])
    if n is None:
        n = g.tensor("token_embd.weight").shape[0]
    return int(n)
