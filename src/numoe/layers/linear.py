"""The one interface every dense matmul with a stored weight goes through.

For now weights are dequantized to float32 at load (allowed by the foundation issue);
the C++ quantized kernels replace the body of `Linear` without changing its callers.
"""

from __future__ import annotations

import torch

from ..gguf import GGUFFile, dequantize


def load_weight(
    g: GGUFFile, name: str, shape: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    """Dequantized float32 copy of one tensor, checked against the expected shape.

    Leading unit dimensions are ignored ([1, D] matches (D,)), as llama.cpp does."""
    t = g.tensor(name)
    if _strip_ones(t.shape) != _strip_ones(shape):
        g.tensor(name, shape)  # raises the standard wrong-shape error
    return dequantize(t).reshape(shape).to(device)


def _strip_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    i = 0
    while i < len(shape) - 1 and shape[i] == 1:
        i += 1
    return tuple(shape[i:])


class Linear:
    """y = x @ W.T (+ b). W is [out, in] as stored in GGUF (numpy order)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight = weight  # [out, in]
        self.bias = bias  # [out] or None

    @classmethod
    def load(
        cls,
        g: GGUFFile,
        name: str,
        n_out: int,
        n_in: int,
        device: torch.device,
        bias: bool = False,
    ) -> Linear:
        """Load '<name>.weight' [n_out, n_in] and, if asked, '<name>.bias' [n_out]."""
        w = load_weight(g, f"{name}.weight", (n_out, n_in), device)
        b = load_weight(g, f"{name}.bias", (n_out,), device) if bias else None
        return cls(w, b)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # [T, in] -> [T, out]
        y = x @ self.weight.T
        if self.bias is not None:
            y = y + self.bias
        return y
