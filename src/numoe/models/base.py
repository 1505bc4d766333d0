"""What every decoder-only architecture here shares: embeddings, the block loop, the
final norm and the output head. Architecture files supply the blocks and the rope.

Two ways through the blocks (`DecoderModel.forward`'s `path`):
- "torch": each block's layers called from Python (torch ops and numoe's C++ linear and MoE
  ops): prefill, a CUDA dense device, and the reference the tests hold the other path to;
- "cpp": one decode step of a whole block in one C++ call (``numoe._cpu.DecodeBlock``: the
  same ops in the same order, no Python between them), for one token when every block can
  run there (CPU ops, float32 norms, CPU caches of float32 or F16).
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
        self.cpp_chunks = 0  # prompt chunks (forward of T > 1 tokens) run through them

    def new_cache(self, n_ctx: int, type_k: str = "f16", type_v: str = "f16"):
        """A cache for n_ctx positions whose keys and values are of type_k and type_v
        (numoe.cache.CACHE_TYPES: 'f16', llama.cpp's default, or 'f32')."""
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
        model cannot take it (a block or cache it cannot run)."""
        T = tokens.shape[0]
        if path not in ("auto", "torch", "cpp"):
            raise ValueError(f"path must be 'auto', 'torch' or 'cpp', got {path!r}")
        cpp = path != "torch" and self.can_decode_cpp(cache)
        if path == "cpp" and not cpp:
            raise ValueError(
                "path='cpp': the C++ decode blocks run on CPU float32 ops and caches; a block "
                "or the cache of this model is not so"
            )
        cache.reserve(pos + T)  # ContextFull past n_ctx; the cache grows before any store
        self.runtime.activate(1 if cpp else T)  # C++ blocks: torch does nothing heavy
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

        A token's logits do not depend on the others in the batch (batch invariance): bit
        for bit those it gets alone. When every cache can take the C++ decode blocks, one
        call per block runs all the tokens (`DecodeBlock.step_batch`: the linear and MoE ops
        once for all of them); else each sequence's run of tokens is one forward call."""
        N = len(tokens)
        if not (N == len(caches) == len(positions)):
            raise ValueError("forward_batch: tokens, caches and positions differ in length")
        if any(not 0 <= r < N for r in logits_for):
            raise ValueError(f"forward_batch: logits_for {logits_for} names no token of {N}")
        last: dict[int, int] = {}  # id(cache) -> the position of its last token so far
        for i, (c, p) in enumerate(zip(caches, positions)):
            want = last.get(id(c), p - 1) + 1
            if p != want or p < 0:
                raise ValueError(
                    f"forward_batch: token {i} at position {p}; its cache's tokens must come "
                    f"at increasing, consecutive positions >= 0 (expected {want})"
                )
            last[id(c)] = p
        if N == 0:
            return torch.empty(0, self.cfg.n_vocab)
        uniq = list({id(c): c for c in caches}.values())
        for c in uniq:
            c.reserve(last[id(c)] + 1)  # ContextFull past n_ctx
        if all(self.can_decode_cpp(c) for c in uniq):
            return self._forward_batch_cpp(tokens, caches, positions, logits_for, uniq)
        out: dict[int, torch.Tensor] = {}
        i = 0
        while i < N:
            j = i + 1
            while j < N and caches[j] is caches[i]:
                j += 1
            logits = self.forward(
                torch.tensor(tokens[i:j], dtype=torch.long), caches[i], positions[i]
            )  # [j - i, V]
            for r in logits_for:
                if i <= r < j:
                    out[r] = logits[r - i]
            i = j
        return torch.stack([out[r] for r in logits_for]) if logits_for else torch.empty(0)

    def _forward_batch_cpp(self, tokens, caches, positions, logits_for, uniq) -> torch.Tensor:
        """forward_batch through the C++ blocks: the tokens' embeddings and rotary rows, one
        `step_batch` per block, then the final norm and the head for the rows logits_for."""
        self.runtime.activate(1)  # torch does nothing heavy here: the decode phase's settings
        x = self.tok_embd(torch.tensor(tokens, dtype=torch.long)).contiguous()  # [N, D]
        cos, sin = self.rope.cos_sin_at(positions)  # [N, d_rope/2] each
        index = {id(c): s for s, c in enumerate(uniq)}
        seq = np.array([index[id(c)] for c in caches], np.int32)  # [N]
        pos = np.array(positions, np.int64)  # [N]
        xn, f = x.numpy(), np.empty(x.shape, np.float32)  # [N, D] each
        cn, sn = cos.numpy(), sin.numpy()
        for i, step in enumerate(self._cpp_blocks):
            kv = [c.numpy_layer(i) for c in uniq]
            step.step_batch(xn, f, i > 0, [a for a, _ in kv], [b for _, b in kv], seq, pos, cn, sn)
        self.cpp_steps += 1
        if not logits_for:
            return torch.empty(0, self.cfg.n_vocab)
        rows = torch.tensor(logits_for, dtype=torch.long)
        xr, fr = x[rows].contiguous(), torch.from_numpy(f)[rows].contiguous()  # [R, D] each
        _, h = add_rms_norm(xr, fr, self.output_norm, self.cfg.rms_eps)
        return self.output(h).float()  # [R, V]

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
        """T tokens of one sequence through every block, one C++ call each
        (Block.decode_block: `step` for one token, `step_batch` for a prompt chunk); x [T, D]
        -> (x, y) as the block loop returns them. x is updated in place."""
        x = x.contiguous()
        T = x.shape[0]
        xn, f = x.numpy(), np.empty(x.shape, np.float32)  # [T, D] each
        if T == 1:
            c, s = cos[0].contiguous().numpy(), sin[0].contiguous().numpy()  # [d_rope/2]
            for i, step in enumerate(self._cpp_blocks):
                kv = cache.numpy_layer(i)
                step.step(xn, f, i > 0, kv[0], kv[1], pos, c, s)
        else:
            seq = np.zeros(T, np.int32)  # [T]: every token in the one cache
            p = np.arange(pos, pos + T, dtype=np.int64)  # [T]
            c, s = cos.contiguous().numpy(), sin.contiguous().numpy()  # [T, d_rope/2]
            for i, step in enumerate(self._cpp_blocks):
                kv = cache.numpy_layer(i)
                step.step_batch(xn, f, i > 0, [kv[0]], [kv[1]], seq, p, c, s)
        self.cpp_steps += T == 1  # decode steps; a prompt chunk counts in cpp_chunks
        self.cpp_chunks += T > 1
        return x, torch.from_numpy(f)


def n_vocab_of(g: GGUFFile) -> int:
    """Vocabulary size: '{arch}.vocab_size', else the tokenizer's list, else token_embd
    (`gguf.checks.vocab_size`: a token list must be as long; GGUFError naming the key)."""
    return vocab_size(g)
