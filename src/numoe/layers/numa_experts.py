"""Routed experts in node memory: the ``--numa shard`` and ``--numa replicate`` policies.

shard: the intermediate dimension F of every expert is cut into blocks of 256 columns (when F
is a multiple of 256; else blocks of the down type's block size, at least 32: Q8_0/Q4_0
experts with a small F) and the blocks are dealt out to the logical nodes in contiguous runs
in proportion to their threads (equal runs for equal nodes). Node k holds, for every expert, gate/up rows [f0, f1) and the down sub-rows of
columns [f0, f1) (whole quantized blocks, so each sub-row is a valid row of its type) in one
``NodeBuffer`` per layer on its memory node, first-touched by its threads; its pool group
computes that slice (``MoE`` slices, csrc/moe.hpp) and the slices' outputs are summed in node
order. Expert memory: 1x in total.

replicate (the older engines' scheme, kept for the benchmark): every logical node holds a full
copy of the layer's experts; the work is split exactly as for shard (node k computes columns
[f0, f1), reading them from its own copy), so outputs equal shard's bit for bit and the
benchmark isolates the cost of the copies. Expert memory: Nx.

In both, the memory-map pages of the copied tensors are released afterwards
(``memory.release``), so the resident memory counts the copies, not the file too.
"""

from __future__ import annotations

import numpy as np

from .. import _cpu
from ..kernels import quant_type
from ..runtime import memory
from .linear import raw_bytes

SHARD_BLOCK = 256


def row_bytes(qtype: int, n: int) -> int:
    """Bytes of a row of n elements of type `qtype` (whole blocks; ValueError otherwise)."""
    return quant_type(qtype).row_bytes(n)


def shard_granule(n_ff: int, down_type: int) -> int:
    """Columns per shard block: 256 when F is a multiple of 256, else the down type's block
    size (at least 32, the Q8_0 activation block); F itself when that does not divide F."""
    if n_ff % SHARD_BLOCK == 0:
        return SHARD_BLOCK
    g = max(32, quant_type(down_type).block_size)
    return g if n_ff % g == 0 else n_ff


def shard_bounds(n_ff: int, weights, down_type: int) -> list[tuple[int, int]]:
    """[f0, f1) per logical node: contiguous runs of whole blocks in proportion to `weights`
    (a node count: equal shares; or the nodes' thread counts, so that no group waits for a
    bigger share on fewer threads), rounded at the cumulative boundaries; a node may get an
    empty range when F has fewer blocks than there are nodes."""
    w = [1] * weights if isinstance(weights, int) else list(weights)
    g = shard_granule(n_ff, down_type)
    nb, total = n_ff // g, sum(w)
    cuts = [0]
    for k in range(len(w)):
        cuts.append((2 * nb * sum(w[: k + 1]) + total) // (2 * total))
    return [(cuts[k] * g, cuts[k + 1] * g) for k in range(len(w))]


def _expert_bytes(ts, n_expert: int) -> list[np.ndarray]:
    """Per expert, its bytes (views into the map) from one merged tensor or E tensors."""
    if len(ts) == 1:
        return list(raw_bytes(ts[0]).reshape(n_expert, -1))
    return [raw_bytes(t) for t in ts]


def build(ts: dict, types: dict, n_expert: int, n_ff: int, n_embd: int, policy: str, nodes):
    """The sliced ``_cpu.MoE`` for `policy` ('shard' | 'replicate') over the logical `nodes`
    (numoe.runtime.numa.LogicalNode: .index = pool group, .mem_node); returns (op, buffers). `ts`:
    {'gate'|'up'|'down': [TensorInfo...]}, `types`: {part: GGML type id}."""
    E, F, D = n_expert, n_ff, n_embd
    gb, ub = row_bytes(types["gate"], D), row_bytes(types["up"], D)
    dbF = row_bytes(types["down"], F)
    src = {p: _expert_bytes(ts[p], E) for p in ("gate", "up", "down")}
    bounds = shard_bounds(F, [len(n.cpus) for n in nodes], types["down"])
    slices, buffers = [], []
    for node, (f0, f1) in zip(nodes, bounds):
        mem = node.mem_node if node.mem_node is not None else max(node.node, 0)
        if policy == "replicate":
            buf = memory.NodeBuffer(E * F * (gb + ub) + E * D * dbF, mem)
            a = buf.array
            parts = {"gate": (0, F * gb), "up": (E * F * gb, F * ub), "down": (E * F * (gb + ub),)}
            parts["down"] += (D * dbF,)
            for p, (base, per) in parts.items():
                dst = a[base : base + E * per].reshape(E, per)
                for e in range(E):
                    dst[e] = src[p][e]
            buffers.append(buf)
            if f1 == f0:
                continue
            c0 = row_bytes(types["down"], f0) if f0 else 0
            offs = (
                [e * F * gb + f0 * gb for e in range(E)],
                [E * F * gb + e * F * ub + f0 * ub for e in range(E)],
                [E * F * (gb + ub) + e * D * dbF + c0 for e in range(E)],
            )
            slices.append((a, *offs, f0, f1 - f0, dbF, node.index))
            continue
        if f1 == f0:
            continue
        n = f1 - f0
        dbn = row_bytes(types["down"], n)
        c0 = row_bytes(types["down"], f0) if f0 else 0
        buf = memory.NodeBuffer(E * n * (gb + ub) + E * D * dbn, mem)
        a = buf.array
        g = a[: E * n * gb].reshape(E, n * gb)
        u = a[E * n * gb : E * n * (gb + ub)].reshape(E, n * ub)
        d = a[E * n * (gb + ub) : E * n * (gb + ub) + E * D * dbn].reshape(E, D, dbn)
        for e in range(E):
            g[e] = src["gate"][e][f0 * gb : f1 * gb]
            u[e] = src["up"][e][f0 * ub : f1 * ub]
            d[e] = src["down"][e].reshape(D, dbF)[:, c0 : c0 + dbn]
        buffers.append(buf)
        offs = (
            [e * n * gb for e in range(E)],
            [E * n * gb + e * n * ub for e in range(E)],
            [E * n * (gb + ub) + e * D * dbn for e in range(E)],
        )
        slices.append((a, *offs, f0, n, 0, node.index))
    op = _cpu.MoE(slices, types["gate"], types["up"], types["down"], E, F, D)
    for p in src:  # the copies serve now: drop the map's pages from RSS
        for t in ts[p]:
            release(t)
    return op, buffers


def release(t) -> int:
    """Release the map pages of tensor `t` (0 when its bytes are not a read-only file map)."""
    try:
        return memory.release(raw_bytes(t))
    except ValueError:
        return 0
