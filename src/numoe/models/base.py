"""What every decoder-only architecture here shares: embeddings, the block loop, the
final norm and the output head. Architecture files supply the blocks and the rope.

Two ways through the blocks (`DecoderModel.forward`'s `path`):
- "torch": each block's layers called from Python (torch ops and numoe's C++ linear and MoE
  ops): prefill, a CUDA dense device, and the reference the tests hold the other path to;
- "cpp": one decode step of a whole block in one C++ call (``numoe._cpu.DecodeBlock``: the
  same ops in the same order, no Python between them), for one token when every block can
  run there (CPU ops, float32 norms and caches).
"auto" takes "cpp" for one token when the model can, else "torch".
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _cpu
from ..gguf import GGUFFile
from ..gguf.checks import vocab_size
from ..layers.linear import Embedding, Linear, cpu_f32, f32_numpy, load_weight
from ..layers.norms import add_rms_norm
from ..runtime.settings import Runtime


class Block:
    """Pre-norm residual block: x += attn(norm(x)); x += ffn(norm(x)).

    The FFN branch is returned unadded, (x, f) for the output x + f, so that the next block
    (or the final norm) adds it together with its norm (`add_rms_norm`: one op, not two)."""

    def __init__(self, g: GGUFFile, blk: int, cfg, device, attn, ffn):
        D = cfg.n_embd
        self.attn_norm = load_weight(g, f"blk.{blk}.attn_norm.weight", (D,), device)
        self.ffn_norm = load_weight(g, f"blk.{blk}.ffn_norm.weight", (D,), device)
        self.attn, self.ffn, self.eps = attn, ffn, cfg.rms_eps

    def decode_block(self) -> _cpu.DecodeBlock | None:
        """This block as one C++ call per decode step (csrc/decode.hpp: the same ops in the
        same order, no Python between them), or None when some part cannot run there."""
        if not cpu_f32(self.attn_norm, self.ffn_norm):
            return None
        db = _cpu.DecodeBlock(f32_numpy(self.attn_norm), f32_numpy(self.ffn_norm), self.eps)
        return db if self.attn.set_step(db) and self.ffn.set_step(db) else None

    def __call__(self, x, cache, pos, cos, sin, y=None):
        """x [T, D] plus y [T, D] (the previous block's FFN branch, or None) -> (x, f): the
        residual stream after attention and this block's FFN branch, [T, D] each."""
        x, h = add_rms_norm(x, y, self.attn_norm, self.eps)
        a = self.attn(h, cache, pos, cos, sin)
        x, h = add_rms_norm(x, a, self.ffn_norm, self.eps)
        return x, self.ffn(h)


class DecoderModel:
    """tokens [T] -> logits [T, V]. Subclasses set self.blocks, self.rope, new_cache()."""

    def __init__(self, cfg, g: GGUFFile, runtime: Runtime):
        self.cfg, self.runtime, self.placement = cfg, runtime, runtime.placement
        dev = self.placement.dense
        V, D = cfg.n_vocab, cfg.n_embd
        self.tok_embd = Embedding.load(g, "token_embd.weight", V, D, dev)  # [V, D]
        self.output_norm = load_weight(g, "output_norm.weight", (D,), dev)
        if g.has("output.weight"):
            self.output = Linear.load(g, "output", V, D, dev)
        else:  # tied embeddings
            self.output = self.tok_embd.as_linear()
        self.blocks: list = []
        self._cpp_blocks: list | None = None  # C++ decode blocks, made on first use
        self.cpp_steps = 0  # decode steps run through them (tests assert the path ran)

    def new_cache(self, n_ctx: int):
        raise NotImplementedError

    @torch.inference_mode()
    def forward(
        self,
        tokens: torch.Tensor,
        cache,
        pos: int,
        n_logits: int | None = None,
        path: str = "auto",
    ) -> torch.Tensor | None:
        """tokens [T] at positions pos.. -> logits [T, V] of every position, or of the last
        n_logits only ([n_logits, V]; 0: none, returns None: a prefill chunk whose logits
        nobody reads skips the output head, the biggest matrix of most models).

        path: "auto", "torch" or "cpp" (the module doc); "cpp" is a ValueError where the
        model cannot take it (more than one token, or a block or cache it cannot run)."""
        T = tokens.shape[0]
        if path not in ("auto", "torch", "cpp"):
            raise ValueError(f"path must be 'auto', 'torch' or 'cpp', got {path!r}")
        cpp = path != "torch" and T == 1 and self.can_decode_cpp(cache)
        if path == "cpp" and not cpp:
            why = f"this call has {T} tokens" if T != 1 else "a block or the cache is not so"
            raise ValueError(
                "path='cpp': the C++ decode blocks take one token on CPU float32 ops and "
                f"caches; {why}"
            )
        cache.reserve(pos + T)  # ContextFull past n_ctx; the cache grows before any store
        self.runtime.activate(T)
        dev = self.placement.dense
        tokens = tokens.to(dev)
        x = self.tok_embd(tokens)  # [T, D]
        cos, sin = self.rope.cos_sin(pos, T, dev)  # [T, d_rope/2]
        if cpp:
            x, y = self._decode(x, cache, pos, cos, sin)
        else:
            y = None  # the last block's FFN branch, added with the final norm
            for blk in self.blocks:
                x, y = blk(x, cache, pos, cos, sin, y)
        if n_logits is not None:
            if n_logits == 0:
                return None
            x = x[-n_logits:]  # [n_logits, D]
            y = None if y is None else y[-n_logits:]
        _, x = add_rms_norm(x, y, self.output_norm, self.cfg.rms_eps)
        return self.output(x).float()  # [T, V]

    @torch.inference_mode()
    def forward_batch(
        self, tokens: list[int], caches: list, positions: list[int], logits_for: list[int]
    ) -> torch.Tensor:
        """Tokens of several sequences in one pass (the server's step: decode tokens of the
        running requests and prompt chunks). Token i goes into caches[i] at positions[i] and
        attends to positions 0..positions[i] of that cache; tokens of one cache come in order
        of increasing, consecutive positions. Returns logits [len(logits_for), V] of the
        tokens at the indices logits_for.

        A token's logits do not depend on the others in the batch (batch invariance).
        This reference runs each sequence's run of tokens as one forward call."""
        if not (len(tokens) == len(caches) == len(positions)):
            raise ValueError("forward_batch: tokens, caches and positions differ in length")
        out: dict[int, torch.Tensor] = {}
        i = 0
        while i < len(tokens):
            j = i + 1
            while j < len(tokens) and caches[j] is caches[i]:
                j += 1
            logits = self.forward(
                torch.tensor(tokens[i:j], dtype=torch.long), caches[i], positions[i]
            )  # [j - i, V]
            for r in logits_for:
                if i <= r < j:
                    out[r] = logits[r - i]
            i = j
        return torch.stack([out[r] for r in logits_for]) if logits_for else torch.empty(0)

    def cpp_blocks(self) -> list:
        """Every block's C++ decode block, or [] when one cannot have it (decided once)."""
        if self._cpp_blocks is None:
            steps = [blk.decode_block() for blk in self.blocks]
            self._cpp_blocks = steps if steps and all(s is not None for s in steps) else []
        return self._cpp_blocks

    def can_decode_cpp(self, cache) -> bool:
        """Whether a one-token forward over `cache` can take the C++ decode blocks."""
        return bool(self.cpp_blocks()) and cache.numpy_layer(0) is not None

    def _decode(self, x, cache, pos, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
        """One token through every block, one C++ call each (Block.decode_block); x [1, D]
        -> (x, y) as the block loop returns them. x is updated in place."""
        x = x.contiguous()
        xn, f = x.numpy(), np.empty(x.shape, np.float32)  # [1, D] each
        c, s = cos[0].contiguous().numpy(), sin[0].contiguous().numpy()  # [d_rope/2]
        for i, step in enumerate(self._cpp_blocks):
            kv = cache.numpy_layer(i)
            step.step(xn, f, i > 0, kv[0], kv[1], pos, c, s)
        self.cpp_steps += 1
        return x, torch.from_numpy(f)


def n_vocab_of(g: GGUFFile) -> int:
    """Vocabulary size: '{arch}.vocab_size', else the tokenizer's list, else token_embd
    (`gguf.checks.vocab_size`: a token list must be as long; GGUFError naming the key)."""
    return vocab_size(g)
