"""Rotary position embeddings: interleaved ("norm") and half-split ("neox") layouts, YaRN.

GGUF `llama` and `deepseek2` weights expect interleaved pairs (x[2i], x[2i+1]); `qwen2moe`
and `qwen3moe` expect half-split pairs (x[i], x[i + d/2]), as in llama.cpp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import _cpu
from .linear import cpu_f32


def base_inv_freq(dim: int, base: float) -> torch.Tensor:  # [dim/2]
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))


def yarn_mscale(scale: float, log_mul: float = 0.1) -> float:
    """YaRN's attention-temperature correction, log_mul * ln(s) + 1 (1 when s <= 1).
    transformers' mscale m is log_mul = 0.1 * m; GGUF stores log_mul itself
    (rope.scaling.yarn_log_multiplier)."""
    return 1.0 if scale <= 1.0 else log_mul * math.log(scale) + 1.0


def yarn_inv_freq(
    dim: int,
    base: float,
    factor: float,
    original_ctx: int,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
) -> torch.Tensor:  # [dim/2]
    """YaRN frequency blend (Peng et al. 2023): extrapolate high, interpolate low freqs."""

    def correction_dim(n_rot: float) -> float:
        return (dim * math.log(original_ctx / (n_rot * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1.0 - ramp  # 1 = keep original frequency
    inv = base_inv_freq(dim, base)
    return inv / factor * (1 - extrapolation) + inv * extrapolation


@dataclass
class Rope:
    """Rotation over the first `dim` features of each head."""

    dim: int
    inv_freq: torch.Tensor  # [dim/2] float64
    neox: bool  # half-split pairs if True, interleaved pairs if False
    attention_factor: float = 1.0  # multiplies cos and sin (YaRN)

    @classmethod
    def plain(cls, dim: int, base: float, neox: bool) -> Rope:
        return cls(dim, base_inv_freq(dim, base), neox)

    def cos_sin(
        self, pos: int, n: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:  # [n, dim/2] each, float32
        """cos and sin of positions pos..pos+n-1. On the CPU, rows of a table kept for the
        positions seen so far (`_cpu_table`): a decode step then costs two views, not eight
        torch ops after the output head."""
        if torch.device(device).type != "cpu":
            return tuple(t.to(device) for t in self._table(pos, pos + n))
        tab = self._cpu_table(pos + n)
        return tab[0][pos : pos + n], tab[1][pos : pos + n]

    def cos_sin_at(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin rows [len(positions), dim/2] each (CPU, contiguous) of any positions:
        a batched step's tokens, each at its own. The same values as cos_sin's rows."""
        tab = self._cpu_table(max(positions) + 1)
        idx = torch.tensor(positions, dtype=torch.long)
        return tab[0][idx], tab[1][idx]

    def _cpu_table(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:  # [>= n, dim/2] each
        """The CPU table of cos, sin for positions 0..n-1 at least: grown by doubling, in
        blocks of 256 positions each computed on its own, so a row's value never depends on
        how large the table was when it was made."""
        tab = getattr(self, "_tab", None)
        if tab is None or tab[0].shape[0] < n:
            have = 0 if tab is None else tab[0].shape[0]
            size = -(-max(256, n, 2 * have) // 256) * 256
            new = [self._table(p, p + 256) for p in range(have, size, 256)]
            cos = torch.cat(([tab[0]] if tab else []) + [c for c, _ in new])
            sin = torch.cat(([tab[1]] if tab else []) + [s for _, s in new])
            self._tab = tab = (cos, sin)
        return tab

    def _table(self, p0: int, p1: int) -> tuple[torch.Tensor, torch.Tensor]:  # [p1 - p0, dim/2]
        t = torch.arange(p0, p1, dtype=torch.float64)
        ang = torch.outer(t, self.inv_freq)
        f = self.attention_factor
        return (ang.cos() * f).float(), (ang.sin() * f).float()

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [T, H, dim] -> rotated [T, H, dim] (same layout as the input).

        Float32 CPU tensors take numoe's C++ op (one call instead of ~7 torch
        ops, each slow between weight streams); the rest `apply_torch`, the reference."""
        if (
            cpu_f32(x, cos, sin)  # x: any strides but the last (MLA's rope part of a row)
            and x.dim() == 3
            and cos.is_contiguous()
            and sin.is_contiguous()
        ):
            y = _cpu.rope(x.detach().numpy(), cos.numpy(), sin.numpy(), self.dim, self.neox)
            return torch.from_numpy(y).view(x.shape)  # [T, H, dim]
        return self.apply_torch(x, cos, sin)

    def apply_torch(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The torch reference of `apply` (any device, any layout)."""
        c, s = cos[:, None, :], sin[:, None, :]  # [T, 1, dim/2]
        if self.neox:
            a, b = x[..., : self.dim // 2], x[..., self.dim // 2 :]
            return torch.cat([a * c - b * s, a * s + b * c], dim=-1)
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2)
