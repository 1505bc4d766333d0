"""CPU and NUMA topology: nodes, their CPUs and memory, physical cores vs SMT siblings.

The C++ extension reads sysfs (``numoe._cpu.read_topology``); this module wraps the result
in dataclasses and decides which CPUs numoe's threads use. Defaults follow the design:
physical cores only (never SMT siblings), only CPUs the process may use
(``sched_getaffinity``), split evenly across the NUMA nodes that have such cores.

Tests point ``root`` at fixture trees and pass ``allowed_cpus`` to simulate containers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Node:
    id: int
    cpus: tuple[int, ...]  # online CPUs; empty for a memory-only node
    mem_total: int  # bytes; 0 for a CPU-only node (or unknown)
    mem_free: int  # bytes
    distances: tuple[int, ...]  # the node's sysfs `distance` line (one per online node)
    synthetic: bool = False  # made up: sysfs has no node directories


@dataclass(frozen=True)
class Cpu:
    id: int
    node: int  # -1 when no node lists this CPU
    package: int
    die: int
    core: int  # sysfs core_id (unique only within a package/die)
    siblings: tuple[int, ...]  # hardware threads of the same physical core, incl. this one
    primary: bool  # lowest CPU of its sibling group
    allowed: bool  # the process may run here


@dataclass(frozen=True)
class Topology:
    nodes: tuple[Node, ...]  # sorted by id
    cpus: tuple[Cpu, ...]  # online CPUs, sorted by id
    allowed_cpus: tuple[int, ...]  # sorted; affinity (or override) & online CPUs
    smt: bool  # some core has more than one online thread

    @classmethod
    def read(cls, root: str = "/sys", allowed_cpus: list[int] | None = None) -> Topology:
        """Read sysfs under ``root``; ``allowed_cpus`` overrides the process affinity.

        Raises ValueError naming the file when sysfs content is malformed.
        """
        from . import _cpu

        d = _cpu.read_topology(str(root), None if allowed_cpus is None else list(allowed_cpus))
        live = os.path.realpath(str(root)) == "/sys"
        return cls.from_dict(d, live=live)

    @classmethod
    def from_dict(cls, d: dict, live: bool = False) -> Topology:
        nodes = []
        for n in d["nodes"]:
            mem_total, mem_free = n["mem_total"], n["mem_free"]
            if n.get("synthetic") and live and mem_total == 0:
                # No node directories in this sysfs: the one node holds all the memory.
                mem_total, mem_free = _system_memory()
            nodes.append(
                Node(
                    id=n["id"],
                    cpus=tuple(n["cpus"]),
                    mem_total=mem_total,
                    mem_free=mem_free,
                    distances=tuple(n["distances"]),
                    synthetic=bool(n.get("synthetic", False)),
                )
            )
        cpus = tuple(
            Cpu(
                id=c["id"],
                node=c["node"],
                package=c["package"],
                die=c.get("die", 0),
                core=c["core"],
                siblings=tuple(c["siblings"]),
                primary=c["primary"],
                allowed=c.get("allowed", c["id"] in d["allowed_cpus"]),
            )
            for c in d["cpus"]
        )
        return cls(
            nodes=tuple(nodes),
            cpus=cpus,
            allowed_cpus=tuple(d["allowed_cpus"]),
            smt=d["smt"],
        )

    def cpu(self, cpu_id: int) -> Cpu:
        for c in self.cpus:
            if c.id == cpu_id:
                return c
        raise KeyError(f"CPU {cpu_id} is not online")

    def physical_cores(self, allowed_only: bool = True) -> list[int]:
        """One CPU per physical core, sorted.

        With ``allowed_only`` (the default): only cores with at least one allowed thread,
        represented by their lowest allowed thread. Otherwise every core's primary thread.
        """
        allowed = set(self.allowed_cpus)
        out = []
        for c in self.cpus:
            if not c.primary:
                continue
            if allowed_only:
                threads = [s for s in c.siblings if s in allowed]
                if threads:
                    out.append(threads[0])
            else:
                out.append(c.id)
        return sorted(out)

    def cores_by_node(self, allowed_only: bool = True) -> dict[int, list[int]]:
        """Node id -> its physical cores (as in physical_cores), in node order.

        Nodes without (allowed) cores are left out; CPUs no node lists go under -1, last.
        """
        by_node: dict[int, list[int]] = {}
        node_of = {c.id: c.node for c in self.cpus}
        for cpu in self.physical_cores(allowed_only):
            by_node.setdefault(node_of[cpu], []).append(cpu)
        order = [n.id for n in self.nodes if n.id in by_node]
        if -1 in by_node:
            order.append(-1)
        return {n: by_node[n] for n in order}

    def default_threads(self) -> int:
        """Number of allowed physical cores (at least 1): numoe's default thread count."""
        return max(1, len(self.physical_cores(allowed_only=True)))

    def smt_threads_by_node(self) -> dict[int, list[int]]:
        """Node id -> allowed CPUs that are not the chosen thread of their core."""
        chosen = set(self.physical_cores(allowed_only=True))
        out: dict[int, list[int]] = {}
        for c in self.cpus:
            if c.allowed and c.id not in chosen:
                out.setdefault(c.node, []).append(c.id)
        return out


def _system_memory() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0, 0


def _round_robin(capacity: list[int], n: int) -> list[int]:
    """Deal n items one at a time over bins in order, skipping full bins."""
    take = [0] * len(capacity)
    while n > 0:
        progressed = False
        for i, cap in enumerate(capacity):
            if n > 0 and take[i] < cap:
                take[i] += 1
                n -= 1
                progressed = True
        if not progressed:
            break
    return take


def thread_plan(topology: Topology, n_threads: int | None = None) -> list[list[int]]:
    """CPUs for n_threads worker threads, one list per NUMA node (node order).

    Physical cores the process may use, split as evenly as their count allows across the
    nodes that have such cores; the first nodes get the remainder, and within a node the
    lowest CPUs are used. Nodes that get no thread are left out. ``n_threads=None`` uses
    every allowed physical core. Asking for more threads than physical cores adds SMT
    siblings (again node by node); never more than the allowed CPUs.
    """
    if n_threads is None:
        n_threads = topology.default_threads()
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    cores = topology.cores_by_node(allowed_only=True)
    if not cores:
        raise ValueError("no allowed CPU is online")
    nodes = list(cores)
    take = _round_robin([len(cores[n]) for n in nodes], n_threads)
    plan = {n: cores[n][:k] for n, k in zip(nodes, take, strict=True)}
    extra = n_threads - sum(take)
    if extra > 0:
        smt = topology.smt_threads_by_node()
        spare = [smt.get(n, []) for n in nodes]
        for n, s, k in zip(nodes, spare, _round_robin([len(s) for s in spare], extra), strict=True):
            plan[n] = plan[n] + s[:k]
    return [plan[n] for n in nodes if plan[n]]
