"""numoe's CPU thread pool (``numoe._cpu``): the one place that sizes it.

The pool runs the quantized linear and MoE ops: one pinned worker per CPU of
``numoe.topology.thread_plan`` (physical cores, grouped per NUMA node), the calling thread
taking the first slot. Until :func:`set_threads` is called, the first CPU op sizes the pool
with the default plan (every allowed physical core).
"""

from __future__ import annotations

from . import _cpu
from .topology import Topology, thread_plan

_configured = False


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
