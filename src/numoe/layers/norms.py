"""Normalisation layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _cpu
from .linear import cpu_f32


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last dimension, in float32.

    Float32 CPU tensors take numoe's C++ op (a decode step calls this 2-4 times per layer,
    and a torch op between weight streams costs several times its warm time); anything
    else takes torch's fused op (`rms_norm_torch`, the reference)."""
    if (
        cpu_f32(x, weight)
        and x.dim() >= 1
        and weight.is_contiguous()
        and (x.dim() == 2 or x.is_contiguous())  # 2-D: rows may be apart (a column slice)
    ):
        y = _cpu.rms_norm(x.detach().numpy(), weight.numpy(), eps)  # [rows, n]
        return torch.from_numpy(y).view(x.shape)
    return rms_norm_torch(x, weight, eps)


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The torch reference of `rms_norm` (one fused op, any device)."""
    y = F.rms_norm(x.float(), (x.shape[-1],), weight.float(), eps)
    return y.to(x.dtype)


def add_rms_norm(
    x: torch.Tensor, y: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + y, rms_norm(x + y)) for x, y [T, D]: a residual add and the next norm, one C++
    call for float32 CPU tensors (two fewer ops between weight streams), else torch's add and
    `rms_norm`. The same values either way. y None: nothing to add, (x, rms_norm(x))."""
    if y is None:
        return x, rms_norm(x, weight, eps)
    if (
        cpu_f32(x, y, weight)
        and x.dim() == 2
        and x.shape == y.shape
        and x.is_contiguous()
        and y.is_contiguous()
        and weight.is_contiguous()
    ):
        s, n = _cpu.add_rms_norm(x.detach().numpy(), y.detach().numpy(), weight.numpy(), eps)
        return torch.from_numpy(s), torch.from_numpy(n)
    s = x + y
    return s, rms_norm(s, weight, eps)
