"""Routers and the routed-experts op.

`Experts` is the one interface the routed experts go through: on the CPU it runs the C++
fused MoE op over the GGUF expert tensors read in place.
"""

from __future__ import annotations

import torch

from .. import _cpu
from ..gguf import GGUFError, GGUFFile
from . import numa_experts
from .linear import Linear, _tensor, as_numpy, cpu_f32, cpu_ops, f32_numpy, linear_many, raw_bytes


def route(
    logits: torch.Tensor,
    k: int,
    gating: str = "softmax",
    norm: bool = False,
    scale: float = 1.0,
    bias: torch.Tensor | None = None,
    n_group: int = 1,
    topk_group: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits [T, E] -> expert ids [T, k] (int64) and weights [T, k] (float32).

    Float32 CPU logits take numoe's C++ op (one call instead of ~8 torch ops, each slow
    between weight streams); the rest `route_torch`, the reference, which documents the
    arguments."""
    if (
        cpu_f32(logits, bias)
        and logits.dim() == 2
        and logits.is_contiguous()
        and (bias is None or bias.is_contiguous())
    ):
        T = logits.shape[0]
        ids, w = _cpu.route(
            logits.detach().numpy(),
            k,
            gating,
            None if bias is None else bias.numpy(),
            n_group,
            topk_group,
            norm,
            scale,
        )
        return torch.from_numpy(ids).view(T, k), torch.from_numpy(w).view(T, k)
    return route_torch(logits, k, gating, norm, scale, bias, n_group, topk_group)


def route_torch(
    logits: torch.Tensor,
    k: int,
    gating: str = "softmax",
    norm: bool = False,
    scale: float = 1.0,
    bias: torch.Tensor | None = None,
    n_group: int = 1,
    topk_group: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits [T, E] -> expert ids [T, k] (int64) and weights [T, k] (float32).

    gating: 'softmax' (Mixtral, Qwen, DeepSeek-V2) or 'sigmoid' (DeepSeek-V3).
    bias: score-correction bias added for the choice only, not to the weights (V3).
    n_group/topk_group: group-limited top-k (DeepSeek): only experts of the best
    topk_group groups compete; a group's score is its best expert (softmax, V2) or the
    sum of its two best (sigmoid, V3), as in the reference implementations.
    norm: weights divided by their sum; scale: routed scaling factor applied last.
    """
    logits = logits.float()
    if gating == "softmax":
        scores = logits.softmax(dim=-1)  # [T, E]
    elif gating == "sigmoid":
        scores = logits.sigmoid()  # [T, E]
    else:
        raise ValueError(f"unknown expert gating function '{gating}'")
    choice = scores if bias is None else scores + bias  # [T, E]
    if n_group > 1 and topk_group < n_group:
        T, E = choice.shape
        grouped = choice.view(T, n_group, E // n_group)  # [T, G, E/G]
        if gating == "sigmoid" or bias is not None:
            group_score = grouped.topk(2, dim=-1).values.sum(-1)  # [T, G]
        else:
            group_score = grouped.max(dim=-1).values  # [T, G]
        keep = group_score.topk(topk_group, dim=-1).indices  # [T, topk_group]
        gmask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, keep, True)
        emask = gmask[:, :, None].expand_as(grouped).reshape(T, E)  # [T, E]
        choice = choice.masked_fill(~emask, float("-inf"))
    ids = choice.topk(k, dim=-1).indices  # [T, k]
    w = scores.gather(1, ids)  # [T, k]
    if norm:
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
    return ids, w * scale


class Experts:
    """Routed SwiGLU experts; gate/up [E, F, D], down [E, D, F], always on the CPU: numoe's
    fused C++ MoE op (``numoe._cpu.MoE``) over the GGUF tensors read in place (no float
    copy), or under ``--numa shard|replicate`` over copies in node memory
    (``numoe.layers.numa_experts``). Its float reference: `ref_moe` in
    tests/test_linear_moe.py."""

    def __init__(self, op: _cpu.MoE, buffers: list | None = None, policy: str = "off"):
        self.op = op
        # NUMA policy carried out (numoe.layers.numa_experts) and its node buffers (kept alive).
        self.buffers, self.policy = buffers or [], policy

    @classmethod
    def load(
        cls, g: GGUFFile, blk: int, n_expert: int, n_embd: int, n_ff: int, numa=None
    ) -> Experts:
        """Merged 'blk.N.ffn_{gate,up,down}_exps' or per-expert 'blk.N.ffn_gate.E' tensors.
        `numa`: the run's ``NumaPolicy`` (``numoe.runtime.numa``); None or 'off' reads the
        experts from the memory map."""
        shapes = {"gate": (n_ff, n_embd), "up": (n_ff, n_embd), "down": (n_embd, n_ff)}
        merged = f"blk.{blk}.ffn_gate_exps.weight"
        if g.has(merged) or not g.has(f"blk.{blk}.ffn_gate.0.weight"):
            ts = {
                p: [_tensor(g, f"blk.{blk}.ffn_{p}_exps.weight", (n_expert, *s))]
                for p, s in shapes.items()
            }
        else:  # older Mixtral files: one tensor per expert
            ts = {
                p: [_tensor(g, f"blk.{blk}.ffn_{p}.{e}.weight", s) for e in range(n_expert)]
                for p, s in shapes.items()
            }
        types = {}
        for p, v in ts.items():
            kinds = {t.qtype for t in v}
            if len(kinds) != 1:
                names = ", ".join(sorted(f"{t.name}: {t.qtype.name}" for t in v))
                raise GGUFError(f"blk.{blk}: per-expert {p} tensors differ in type ({names})")
            types[p] = int(v[0].qtype)
        if numa is not None and numa.name in ("shard", "replicate"):
            op, buffers = numa_experts.build(
                ts, types, n_expert, n_ff, n_embd, numa.name, numa.nodes
            )
            return cls(op, buffers, numa.name)
        op = _cpu.MoE(
            [raw_bytes(t) for t in ts["gate"]],
            [raw_bytes(t) for t in ts["up"]],
            [raw_bytes(t) for t in ts["down"]],
            types["gate"],
            types["up"],
            types["down"],
            n_expert,
            n_ff,
            n_embd,
        )
        return cls(op)

    def __call__(self, x: torch.Tensor, ids: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x [T, D], ids [T, k], w [T, k] -> sum_j w[t, j] * expert_{ids[t, j]}(x[t]), [T, D]."""
        ids_np = ids.detach().to("cpu", torch.int64).contiguous().numpy()
        out = self.op.forward(as_numpy(x), ids_np, as_numpy(w))  # [T, D]
        return torch.from_numpy(out).to(x.device)


def check_experts(n_expert: int, n_used: int, where: str) -> None:
    if not 0 < n_used <= n_expert:
        raise GGUFError(f"{where}: expert_used_count {n_used} not in 1..{n_expert}")


class SparseMoE:
    """Router + routed experts (+ optional shared expert, optionally sigmoid-gated).

    Tensors: 'blk.N.ffn_gate_inp' [E, D] router, experts (see Experts.load), and for
    shared experts 'blk.N.ffn_{gate,up,down}_shexp' and 'blk.N.ffn_gate_inp_shexp' [D].
    """

    def __init__(
        self,
        router: Linear,
        experts: Experts,
        k: int,
        gating: str = "softmax",
        norm: bool = False,
        scale: float = 1.0,
        bias: torch.Tensor | None = None,
        n_group: int = 1,
        topk_group: int = 1,
        shared=None,
        shared_gate: torch.Tensor | None = None,
    ):
        self.router, self.experts, self.shared, self.shared_gate = (
            router,
            experts,
            shared,
            shared_gate,
        )
        self.route_args = {
            "k": k,
            "gating": gating,
            "norm": norm,
            "scale": scale,
            "bias": bias,
            "n_group": n_group,
            "topk_group": topk_group,
        }

    def set_step(self, db: _cpu.DecodeBlock) -> bool:
        """Give a C++ decode block (models/base.py) this MoE; False when it cannot run there."""
        a, sh = self.route_args, self.shared
        if (
            not cpu_ops(self.router, self.experts)
            or not isinstance(self.experts.op, _cpu.MoE)
            or not cpu_f32(a["bias"], self.shared_gate)
            or (sh is not None and not cpu_ops(sh.gate, sh.up, sh.down))
        ):
            return False
        db.set_moe(
            router=self.router.op,
            experts=self.experts.op,
            k=a["k"],
            gating=a["gating"],
            bias=f32_numpy(a["bias"]),
            n_group=a["n_group"],
            topk_group=a["topk_group"],
            norm=a["norm"],
            scale=a["scale"],
            sh_gate=sh and sh.gate.op,
            sh_up=sh and sh.up.op,
            sh_down=sh and sh.down.op,
            sh_gate_vec=f32_numpy(self.shared_gate),
        )
        return True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # [T, D] -> [T, D]
        if self.shared is None:
            logits = self.router(x)  # [T, E]
        else:  # the router and the shared expert's gate and up read x in one pool call
            logits, g, u = linear_many([self.router, self.shared.gate, self.shared.up], x)
        ids, w = route(logits, **self.route_args)  # [T, k], [T, k]
        out = self.experts(x, ids, w)  # [T, D]
        if self.shared is not None:
            s = self.shared.finish(g, u)  # [T, D]
            if self.shared_gate is not None:
                s = s * torch.sigmoid(x @ self.shared_gate)[:, None]
            out = out + s
        return out
