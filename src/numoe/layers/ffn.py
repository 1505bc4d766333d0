"""SwiGLU feed-forward: dense layers and shared experts."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _cpu
from ..gguf import GGUFFile
from .linear import Linear, cpu_f32, cpu_ops, linear_many


def silu_mul(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """silu(g) * u. One token's float32 CPU rows take one C++ call (g / (1 + exp(-g)) * u, as
    the MoE op computes it for the routed experts: two fewer torch ops between weight
    streams); more tokens take torch's threaded, vectorised ops."""
    if (
        g.dim() == 2
        and g.shape[0] == 1
        and cpu_f32(g, u)
        and g.shape == u.shape
        and g.is_contiguous()
        and u.is_contiguous()
    ):
        return torch.from_numpy(_cpu.silu_mul(g.detach().numpy(), u.detach().numpy())).view(g.shape)
    return F.silu(g) * u


class FeedForward:
    """down(silu(gate(x)) * up(x)); weights 'ffn_gate', 'ffn_up' [F, D], 'ffn_down' [D, F]."""

    def __init__(self, gate: Linear, up: Linear, down: Linear):
        self.gate, self.up, self.down = gate, up, down

    @classmethod
    def load(
        cls,
        g: GGUFFile,
        prefix: str,
        n_embd: int,
        n_ff: int,
        device: torch.device,
        suffix="",
    ) -> FeedForward:
        """prefix 'blk.3.ffn', suffix '' (dense) or '_shexp' (shared expert)."""
        return cls(
            Linear.load(g, f"{prefix}_gate{suffix}", n_ff, n_embd, device),
            Linear.load(g, f"{prefix}_up{suffix}", n_ff, n_embd, device),
            Linear.load(g, f"{prefix}_down{suffix}", n_embd, n_ff, device),
        )

    def set_step(self, db: _cpu.DecodeBlock) -> bool:
        """Give a C++ decode block (models/base.py) this FFN; False when it cannot run there."""
        if not cpu_ops(self.gate, self.up, self.down):
            return False
        db.set_dense(gate=self.gate.op, up=self.up.op, down=self.down.op)
        return True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # [T, D] -> [T, D]
        return self.finish(*linear_many([self.gate, self.up], x))

    def finish(self, g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:  # [T, F] x2 -> [T, D]
        """down(silu(g) * u) from gate and up outputs computed elsewhere (a shared expert's
        share the router's pool call)."""
        return self.down(silu_mul(g, u))
