"""numoe's CPU thread pool (``numoe._cpu``): the one place that sizes it.

The pool runs the quantized linear and MoE ops: one pinned worker per CPU of
``numoe.topology.thread_plan`` (physical cores, grouped per NUMA node), the calling thread
taking the first slot. Until :func:`set_threads` is called, the first CPU op sizes the pool
with the default plan (every allowed physical core).
"""

from __future__ import annotations

import torch

from . import _cpu
from .topology import Topology, thread_plan

_configured = False
# torch intra-op threads while numoe runs decode steps (1 token) and prefill chunks; None =
# the pool's thread count. See benchmarks/torch_threads.py and docs/architecture.md.
_torch_threads: dict[str, int | None] = {"decode": 1, "prefill": None}
# How long idle pool workers spin (us) before sleeping: through the Python gaps between the
# ops of a decode step (torch has 1 thread then, so nothing else wants those cores); briefly
# in prefill, where torch's own threads need the cores between numoe's ops.
SPIN_US = {"decode": 5000, "prefill": 100}


def set_threads(n: int | None = None, topology: Topology | None = None) -> int:
    """Size the pool for n threads (None: every allowed physical core); returns the count."""
    global _configured
    plan = thread_plan(topology if topology is not None else Topology.read(), n)
    _cpu.set_threads(plan)
    _configured = True
    return _cpu.num_threads()


def set_plan(plan) -> int:
    """Size the pool from a ``numoe.numa.ThreadPlan`` (one CPU group per logical node:
    ``--numa-nodes``, ``--smt``); returns the thread count."""
    global _configured
    _cpu.set_threads(plan.groups)
    _configured = True
    return _cpu.num_threads()


def set_torch_threads(decode: int | None = 1, prefill: int | None = None) -> None:
    """torch intra-op threads for decode steps and for prefill chunks (None: as many as the
    pool). Applied by :func:`torch_threads_for` before each forward."""
    for k, v in (("decode", decode), ("prefill", prefill)):
        if v is not None and v < 1:
            raise ValueError(f"torch threads for {k} must be >= 1, got {v}")
    _torch_threads.update(decode=decode, prefill=prefill)


def torch_threads_for(n_tokens: int) -> None:
    """Set torch's intra-op threads and the pool's spin time for a forward over n_tokens
    (the policy above)."""
    phase = "decode" if n_tokens <= 1 else "prefill"
    n = _torch_threads[phase]
    n = n if n is not None else _cpu.num_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    _cpu.set_spin_us(SPIN_US[phase])


def ensure() -> None:
    """Size the pool with the default plan unless someone already did."""
    if not _configured:
        set_threads()


def num_threads() -> int:
    """Threads of the pool, the caller included."""
    return _cpu.num_threads()


def thread_groups() -> list[list[int]]:
    """CPU lists the pool runs on, one per NUMA node."""
    return _cpu.thread_groups()
