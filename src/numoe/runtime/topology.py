"""CPU and NUMA topology: nodes, their CPUs and memory, physical cores vs SMT siblings.

The C++ extension reads sysfs (``numoe._cpu.read_topology``); this module wraps the result
in dataclasses and decides which CPUs numoe's threads use. Defaults follow the design:
physical cores only (never SMT siblings), only CPUs the process may use
(``sched_getaffinity``), split across the NUMA nodes in proportion to their cores.

Tests point ``root`` at fixture trees and pass ``allowed_cpus`` / ``allowed_mems`` to
simulate containers, ``taskset`` and ``numactl``. The thread plan itself (logical nodes,
``--numa-nodes``, SMT) lives in ``numoe.runtime.numa``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .. import _cpu
from .machine import system_memory


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
    # Nodes whose memory the process may use (Mems_allowed_list: cpuset, numactl -m), & the
    # nodes of this tree; sorted. Every node when not known (a tree that is not the live /sys).
    allowed_mems: tuple[int, ...] = ()
    live: bool = False  # read from this machine's /sys (not a fixture or a captured copy)

    @classmethod
    def read(
        cls,
        root: str = "/sys",
        allowed_cpus: list[int] | None = None,
        allowed_mems: list[int] | None = None,
        status_path: str = "/proc/self/status",
    ) -> Topology:
        """Read sysfs under ``root``; ``allowed_cpus`` overrides the process affinity and
        ``allowed_mems`` the memory nodes (else ``Mems_allowed_list`` of ``status_path``
        for the live /sys, every node for any other tree).

        Raises ValueError naming the file when sysfs content is malformed.
        """

        d = _cpu.read_topology(str(root), None if allowed_cpus is None else list(allowed_cpus))
        live = os.path.realpath(str(root)) == "/sys"
        if allowed_mems is None and live:
            allowed_mems = read_mems_allowed(status_path)
        return cls.from_dict(d, live=live, allowed_mems=allowed_mems)

    @classmethod
    def from_dict(
        cls, d: dict, live: bool = False, allowed_mems: list[int] | None = None
    ) -> Topology:
        nodes = []
        for n in d["nodes"]:
            mem_total, mem_free = n["mem_total"], n["mem_free"]
            if n.get("synthetic") and live and mem_total == 0:
                # No node directories in this sysfs: the one node holds all the memory.
                mem_total, mem_free = system_memory()
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
        ids = {n.id for n in nodes}
        mems = sorted(ids if allowed_mems is None else ids & {int(m) for m in allowed_mems})
        return cls(
            nodes=tuple(nodes),
            cpus=cpus,
            allowed_cpus=tuple(d["allowed_cpus"]),
            smt=d["smt"],
            allowed_mems=tuple(mems),
            live=live,
        )

    def node(self, node_id: int) -> Node:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(f"node {node_id} does not exist")

    @property
    def online_cpus(self) -> tuple[int, ...]:
        return tuple(c.id for c in self.cpus)

    def packages(self, node_id: int) -> tuple[int, ...]:
        """Packages (sockets) the node's CPUs sit in; () for a memory-only node."""
        return tuple(sorted({c.package for c in self.cpus if c.node == node_id}))

    def distance(self, a: int, b: int) -> int | None:
        """sysfs distance from node a to node b (the line lists the nodes in id order)."""
        ids = [n.id for n in self.nodes]
        d = self.node(a).distances
        if len(d) != len(ids) or b not in ids:
            return None
        return d[ids.index(b)]

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


def read_mems_allowed(status_path: str = "/proc/self/status") -> list[int] | None:
    """Memory nodes this process may allocate on (``Mems_allowed_list``); None if unknown."""

    try:
        with open(status_path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Mems_allowed_list:"):
                    return _cpu.parse_cpulist(line.split(":", 1)[1])
    except OSError:
        return None
    return None
