"""Token sampling with llama.cpp's parameters, defaults and order.

Order (llama.cpp's default chain): repetition penalty -> top-k -> top-p -> min-p ->
temperature -> draw. top-p and min-p look at the softmax of the logits left after the
previous steps, before temperature, as llama.cpp does. ``temperature <= 0`` is greedy: the
argmax of the penalized logits.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Sampler", "SamplingParams"]


@dataclass
class SamplingParams:
    """llama.cpp names and defaults.

    temperature: <= 0 means greedy. top_k: 0 (or -1) disables. top_p: 1.0 disables.
    min_p: 0.0 disables. repeat_penalty: 1.0 disables. repeat_last_n: how many of the last
    tokens the penalty looks at (0 disables, -1 = the whole history). seed: None = random.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None

    def validate(self) -> SamplingParams:
        def num(name: str) -> float:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
                raise ValueError(f"sampling: {name} must be a number, got {v!r}")
            return float(v)

        def integer(name: str) -> int:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"sampling: {name} must be an integer, got {v!r}")  # noqa: TRY004
            return v

        num("temperature")
        if integer("top_k") < -1:
            raise ValueError(f"sampling: top_k must be >= 0 (0 or -1 = off), got {self.top_k}")
        if not 0.0 <= num("top_p") <= 1.0:
            raise ValueError(f"sampling: top_p must be in [0, 1], got {self.top_p}")
        if not 0.0 <= num("min_p") <= 1.0:
            raise ValueError(f"sampling: min_p must be in [0, 1], got {self.min_p}")
        if not (num("repeat_penalty") > 0.0 and math.isfinite(self.repeat_penalty)):
            raise ValueError(f"sampling: repeat_penalty must be > 0, got {self.repeat_penalty}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2.0 <= num(name) <= 2.0:
                raise ValueError(f"sampling: {name} must be in [-2, 2], got {getattr(self, name)}")
        if integer("repeat_last_n") < -1:
            raise ValueError(
                f"sampling: repeat_last_n must be >= 0 (-1 = all), got {self.repeat_last_n}"
            )
        if self.seed is not None:
            integer("seed")
        return self


class Sampler:
    """Draws the next token from logits. Owns a CPU `torch.Generator` seeded from
    ``params.seed``: the same seed, logits and history give the same tokens."""

    def __init__(self, params: SamplingParams | None = None) -> None:
        self.params = (params or SamplingParams()).validate()
        seed = self.params.seed
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        self.seed = seed & 0xFFFF_FFFF_FFFF_FFFF
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(self.seed)

    def apply_penalty(self, logits: torch.Tensor, history: Sequence[int]) -> torch.Tensor:
        """llama.cpp's penalties over the last ``repeat_last_n`` tokens: the repetition
        penalty (positive logits divided by it, negative ones multiplied, each token once),
        then frequency and presence (c * frequency + presence subtracted, c = the count)."""
        p = self.params
        rep = p.repeat_penalty != 1.0
        freq = p.frequency_penalty != 0.0 or p.presence_penalty != 0.0
        if not (rep or freq) or p.repeat_last_n == 0 or len(history) == 0:
            return logits
        recent = list(history) if p.repeat_last_n < 0 else list(history)[-p.repeat_last_n :]
        n = logits.shape[0]
        counts: dict[int, int] = {}
        for t in recent:
            if 0 <= int(t) < n:
                counts[int(t)] = counts.get(int(t), 0) + 1
        if not counts:
            return logits
        ids = sorted(counts)
        idx = torch.tensor(ids, dtype=torch.long)
        v = logits[idx]
        logits = logits.clone()
        if rep:
            v = torch.where(v > 0, v / p.repeat_penalty, v * p.repeat_penalty)
        if freq:
            c = torch.tensor([counts[i] for i in ids], dtype=logits.dtype)
            v = v - c * p.frequency_penalty - p.presence_penalty
        logits[idx] = v
        return logits

    def filter(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """top-k, top-p, min-p. Returns (candidate ids, their logits), best first."""
        p = self.params
        n = logits.shape[0]
        if 0 < p.top_k < n:
            vals, ids = torch.topk(logits, p.top_k)
        else:
            vals, ids = torch.sort(logits, descending=True)
        if p.top_p < 1.0:
            probs = torch.softmax(vals, dim=0)
            cum = torch.cumsum(probs, dim=0)
            # keep the smallest prefix whose probability reaches top_p (at least one token)
            keep = int(torch.searchsorted(cum, torch.tensor([p.top_p]), right=False)[0]) + 1
            keep = max(1, min(keep, vals.shape[0]))
            vals, ids = vals[:keep], ids[:keep]
        if p.min_p > 0.0 and vals.shape[0] > 1:
            # p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p)
            keep = int((vals >= vals[0] + math.log(p.min_p)).sum())
            keep = max(1, keep)
            vals, ids = vals[:keep], ids[:keep]
        return ids, vals

    def sample(self, logits: torch.Tensor, history: Sequence[int] = ()) -> int:
        """Next token id from ``logits`` [V] (any device/dtype) given the ``history`` of
        token ids so far (prompt + generated)."""
        x = logits.detach().reshape(-1).to(device="cpu", dtype=torch.float32)
        if x.numel() == 0:
            raise ValueError("sampling: empty logits")
        x = self.apply_penalty(x, history)
        if self.params.temperature <= 0:
            return int(torch.argmax(x))
        ids, vals = self.filter(x)
        if ids.shape[0] == 1:
            return int(ids[0])
        probs = torch.softmax(vals / self.params.temperature, dim=0)
        k = int(torch.multinomial(probs, 1, generator=self.generator)[0])
        return int(ids[k])
