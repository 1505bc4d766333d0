"""Chunked prefill, the decode loop, streaming, timings.

A `Session` owns one cache (it grows with its tokens, up to n_ctx) and remembers which tokens it holds, so a chat
turn only prefills what is new since the last turn (the shared prefix is reused).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .cache import ContextFull
from .sampling import Sampler


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens `a` and `b` share (what a cache holding `a` can keep for `b`)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class NonFiniteLogits(ValueError):
    """The model's logits hold NaN or inf: bad weights or metadata in the file (or a model
    that overflows), never text made from them. One line, naming the position."""


def check_logits(logits: torch.Tensor, pos: int) -> torch.Tensor:
    """`logits` [V] of the token at position `pos`, or NonFiniteLogits."""
    if not bool(torch.isfinite(logits).all()):
        kind = "NaN" if bool(torch.isnan(logits).any()) else "infinite"
        raise NonFiniteLogits(
            f"the model produced {kind} logits at position {pos} (the file's weights or metadata?)"
        )
    return logits


@dataclass
class Timings:
    n_prompt: int = 0  # tokens prefilled (new ones only)
    t_prompt: float = 0.0  # seconds
    n_gen: int = 0  # tokens generated
    t_gen: float = 0.0  # seconds, first generated token to last

    @property
    def prompt_tps(self) -> float:
        return self.n_prompt / self.t_prompt if self.t_prompt > 0 else 0.0

    @property
    def gen_tps(self) -> float:
        return self.n_gen / self.t_gen if self.t_gen > 0 else 0.0

    def summary(self) -> str:
        return (
            f"prompt: {self.n_prompt} tokens, {self.t_prompt:.2f} s, {self.prompt_tps:.2f} tok/s"
            f" | generation: {self.n_gen} tokens, {self.t_gen:.2f} s, {self.gen_tps:.2f} tok/s"
        )


class Session:
    """One conversation's state: the cache and the tokens it holds."""

    def __init__(
        self, model, n_ctx: int, chunk: int = 512, type_k: str = "f16", type_v: str = "f16"
    ):
        """type_k, type_v: the cache's key and value types (numoe.cache.CACHE_TYPES, -ctk and
        -ctv; 'f16' as llama.cpp)."""
        if n_ctx < 1 or chunk < 1:
            raise ValueError(f"context ({n_ctx}) and prefill chunk ({chunk}) must be >= 1")
        self.model, self.n_ctx, self.chunk = model, n_ctx, chunk
        self.cache = model.new_cache(n_ctx, type_k=type_k, type_v=type_v)
        self.tokens: list[int] = []  # tokens whose K/V are in the cache
        self.timings = Timings()
        # why the last generate() ended: "stop" (a stop token), "length" (max_new tokens),
        # "context" (a full context); None while it runs or when it was interrupted
        self.finish_reason: str | None = None

    def prefill(self, tokens: list[int]) -> torch.Tensor:
        """Make the cache hold `tokens`; return logits [V] after the last one.

        Reuses the longest prefix already cached (at least one token is recomputed so that
        there are logits to return).
        """
        if not tokens:
            raise ValueError("empty prompt: nothing to generate from")
        if len(tokens) > self.n_ctx:
            raise ContextFull(f"prompt of {len(tokens)} tokens exceeds the context {self.n_ctx}")
        keep = common_prefix(self.tokens, tokens[:-1])
        self.tokens = self.tokens[:keep]
        t0 = time.perf_counter()
        logits = None
        for s in range(keep, len(tokens), self.chunk):
            part = tokens[s : s + self.chunk]
            last = s + self.chunk >= len(tokens)
            logits = self.model.forward(
                torch.tensor(part, dtype=torch.long), self.cache, s, n_logits=1 if last else 0
            )  # [1, V] after the last chunk
            self.tokens += part
        self.timings.n_prompt += len(tokens) - keep
        self.timings.t_prompt += time.perf_counter() - t0
        return check_logits(logits[-1], len(tokens) - 1)  # [V]

    def step(self, token: int) -> torch.Tensor:
        """Append one token; logits [V] for the next."""
        pos = len(self.tokens)
        logits = self.model.forward(torch.tensor([token], dtype=torch.long), self.cache, pos, 1)
        self.tokens.append(token)
        return check_logits(logits[-1], pos)

    def generate(
        self,
        prompt: list[int],
        max_new: int,
        sampler: Sampler,
        stop_ids: set[int] | frozenset[int] = frozenset(),
        ignore_eos: bool = False,
    ) -> Iterator[int]:
        """Yield up to max_new sampled tokens (a stop token ends it and is not yielded).

        Stops early, without error, when the context is full; `finish_reason` says why it
        ended.
        """
        self.timings = Timings()
        self.finish_reason = None
        logits = self.prefill(prompt)
        history = list(prompt)
        t0 = time.perf_counter()
        try:
            for i in range(max_new):
                tok = sampler.sample(logits, history)
                if tok in stop_ids and not ignore_eos:
                    self.finish_reason = "stop"
                    break
                history.append(tok)
                self.timings.n_gen += 1
                self.timings.t_gen = time.perf_counter() - t0
                yield tok
                if i + 1 == max_new:
                    self.finish_reason = "length"
                    break
                if len(self.tokens) >= self.n_ctx:
                    self.finish_reason = "context"
                    break
                logits = self.step(tok)
            else:
                self.finish_reason = "length"  # max_new == 0
        finally:
            self.timings.t_gen = time.perf_counter() - t0
