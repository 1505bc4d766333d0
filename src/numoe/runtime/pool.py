"""numoe's CPU thread pool (``numoe._cpu``) and torch's intra-op threads.

The pool runs the quantized linear and MoE ops: one pinned worker per CPU of a thread plan
(``numoe.runtime.numa.plan_threads``: physical cores, grouped per NUMA node), the calling
thread taking the first slot. The C++ pool is the process's (its threads are the machine's
cores); a `numoe.runtime.settings.Runtime` applies its plan here before each forward, so
nothing in this module remembers a run's settings.
"""

from __future__ import annotations

import torch

from .. import _cpu
from .numa import plan_threads
from .topology import Topology

# How long idle pool workers spin (us) before sleeping: through the Python gaps between the
# C++ decode blocks (torch has 1 thread then, so nothing else wants those cores); briefly in
# prefill, where torch's own threads need the cores between numoe's ops.
SPIN_US = {"decode": 5000, "prefill": 100}


def apply(groups: list[list[int]]) -> int:
    """Size the pool to `groups` (one CPU list per logical node) unless it already is;
    returns the thread count."""
    groups = [list(g) for g in groups]
    if _cpu.thread_groups() != groups:
        _cpu.set_threads(groups)
    return _cpu.num_threads()


def apply_torch_threads(n_threads: int, phase: str) -> None:
    """torch's intra-op threads (n_threads) and the pool's spin time for a forward of
    `phase` ('decode': one token, 'prefill': more)."""
    if torch.get_num_threads() != n_threads:
        torch.set_num_threads(n_threads)
    _cpu.set_spin_us(SPIN_US[phase])


def num_threads() -> int:
    """Threads of the pool, the caller included."""
    return _cpu.num_threads()


def thread_groups() -> list[list[int]]:
    """CPU lists the pool runs on, one per NUMA node."""
    return _cpu.thread_groups()


def set_plan(plan) -> int:
    """Size the pool from a ``numa.ThreadPlan`` (tests and benchmarks; a model's runtime
    applies its own plan); returns the thread count."""
    return apply(plan.groups)


def set_threads(n: int | None = None) -> int:
    """Size the pool with the default plan for n threads (None: every allowed physical
    core); returns the thread count."""
    return set_plan(plan_threads(Topology.read(), n))
