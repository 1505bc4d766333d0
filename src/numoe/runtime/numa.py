"""NUMA at run time: the thread plan (logical nodes), the weight policy, libnuma's status.

No build flag: libnuma is opened with dlopen (``ctypes``) when needed; where it is missing
or refused (``numa_available() == -1``, e.g. under a container's default seccomp profile)
numoe falls back to sysfs (``numoe.runtime.topology``) plus first touch from pinned threads,
and the CLI says so (:func:`fallback_notice`).

Thread plan (:func:`plan_threads`): one logical node per chosen NUMA node (``--numa-nodes``
picks them; a node listed k times becomes k logical nodes that split its physical cores),
each a group of CPUs, one pinned pool worker per CPU: physical cores first, SMT siblings
only when asked (``smt=True``, or more threads than physical cores). ``-t N`` is split over
the logical nodes in proportion to their cores. Each logical node records its physical node
and the node whose memory serves it (``mem_node``): what the shard/replicate placement
binds its slice or copy to.

Policy (:func:`resolve_policy`): ``auto`` = shard on more than one logical node, else off.
``shard`` (experts split across the logical nodes, one copy in total), ``replicate`` (a copy
per logical node, for comparison) and ``off`` (weights straight from the memory map); the
routed experts follow them (``numoe.layers.numa_experts``).
"""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass, field

from .topology import Topology

POLICIES = ("auto", "shard", "replicate", "off")


class PlanError(ValueError):
    """A thread plan that cannot be made (bad --numa-nodes for this machine)."""


def format_ids(ids) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (the kernel's list format); '' for none."""
    ids = sorted(set(ids))
    out, i = [], 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(out)


def parse_numa_nodes(text: str) -> list[int]:
    """'0,1' / '0-3' / '0,0' -> node ids in the given order, duplicates kept."""
    out: list[int] = []
    for item in text.split(","):
        item = item.strip()
        a, sep, b = item.partition("-")
        if not a.isdigit() or (sep and not b.isdigit()):
            raise ValueError(f"expected node ids such as 0,1 or 0-3 or 0,0, got {text!r}")
        lo, hi = int(a), int(b) if sep else int(a)
        if hi < lo:
            raise ValueError(f"descending range {item!r} in {text!r}")
        if hi - lo > 65535 or len(out) > 65536:
            raise ValueError(f"too many nodes in {text!r}")
        out.extend(range(lo, hi + 1))
    return out


# --- the thread plan -----------------------------------------------------------------------


@dataclass(frozen=True)
class LogicalNode:
    index: int  # position in the plan = the pool's group index
    node: int  # physical NUMA node of its CPUs (-1: CPUs that no node lists)
    mem_node: int | None  # node whose memory serves it (None: no allowed node has memory)
    cpus: tuple[int, ...]  # pinned CPUs: physical cores first, then SMT siblings
    cores: int  # physical cores among cpus
    split: tuple[int, int] = (0, 1)  # (part, parts) of its node when the node is split


@dataclass(frozen=True)
class ThreadPlan:
    nodes: tuple[LogicalNode, ...]  # logical nodes that got at least one thread
    smt: bool  # SMT siblings asked for (--smt)
    requested: int | None  # -t N (None: the default)
    numa_nodes: tuple[int, ...] | None  # --numa-nodes as given (None: every node)
    smt_cpus: tuple[int, ...] = field(default=())  # CPUs of the plan that are SMT siblings

    @property
    def groups(self) -> list[list[int]]:
        """CPU lists for ``numoe._cpu.set_threads``: one per logical node."""
        return [list(n.cpus) for n in self.nodes]

    @property
    def threads(self) -> int:
        return sum(len(n.cpus) for n in self.nodes)

    @property
    def physical_nodes(self) -> tuple[int, ...]:
        return tuple(sorted({n.node for n in self.nodes}))

    @property
    def mem_nodes(self) -> tuple[int, ...]:
        return tuple(sorted({n.mem_node for n in self.nodes if n.mem_node is not None}))

    def describe(self) -> str:
        parts = []
        for n in self.nodes:
            where = f"node {n.node}" if n.node >= 0 else "no node"
            if n.split[1] > 1:
                where += f" part {n.split[0] + 1}/{n.split[1]}"
            if n.mem_node is not None and n.mem_node != n.node:
                where += f", memory of node {n.mem_node}"
            parts.append(f"[{where}: CPUs {format_ids(n.cpus)}]")
        smt = f", {len(self.smt_cpus)} SMT siblings" if self.smt_cpus else ""
        threads = f"{self.threads} thread{'' if self.threads == 1 else 's'}"
        return f"{threads}{smt} in {len(self.nodes)} group(s) " + " ".join(parts)


def _proportional(n: int, caps: list[int]) -> list[int]:
    """n items over bins in proportion to their capacities (largest remainder, ties to the
    earlier bin); never above a bin's capacity. n is capped at the total."""
    total = sum(caps)
    n = min(n, total)
    if total == 0 or n == 0:
        return [0] * len(caps)
    take = [n * c // total for c in caps]
    rest = n - sum(take)
    order = sorted(range(len(caps)), key=lambda i: (-(n * caps[i] % total), i))
    for i in order[:rest]:
        take[i] += 1
    return take


def _mem_node(topo: Topology, node: int) -> int | None:
    """The node itself when it has memory the process may use, else the nearest such node."""
    with_mem = [n.id for n in topo.nodes if n.mem_total > 0 and n.id in topo.allowed_mems]
    if node in with_mem:
        return node
    if not with_mem:
        return None
    if node < 0:
        return with_mem[0]
    return min(with_mem, key=lambda m: (topo.distance(node, m) or 1 << 30, m))


def plan_threads(
    topo: Topology,
    n_threads: int | None = None,
    numa_nodes: list[int] | None = None,
    smt: bool = False,
) -> ThreadPlan:
    """The plan numoe's pool runs: see the module docstring.

    Raises PlanError (a ValueError) for node lists this machine cannot honour, naming the
    problem; ValueError for n_threads < 1.
    """
    if n_threads is not None and n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    cores = topo.cores_by_node(allowed_only=True)  # node -> one CPU per allowed core
    if not cores:
        raise ValueError("no allowed CPU is online")
    allowed = set(topo.allowed_cpus)
    siblings = {
        r: [s for s in topo.cpu(r).siblings if s in allowed and s != r]
        for c in cores.values()
        for r in c
    }

    if numa_nodes is None:
        chosen = list(cores)
    else:
        chosen = list(numa_nodes)
        ids = [n.id for n in topo.nodes]
        for nid in dict.fromkeys(chosen):
            if nid not in ids:
                raise PlanError(f"this machine has nodes {format_ids(ids)}")
            if not topo.node(nid).cpus:
                raise PlanError(f"node {nid} has no CPUs (memory only)")
            if nid not in cores:
                raise PlanError(
                    f"node {nid} has no CPU this process may use "
                    f"(allowed CPUs: {format_ids(topo.allowed_cpus)})"
                )
            k = chosen.count(nid)
            if k > len(cores[nid]):
                raise PlanError(
                    f"node {nid} is listed {k} times but has {len(cores[nid])} physical "
                    "cores this process may use"
                )

    # Logical nodes: a node listed k times splits its cores into k runs (first runs larger).
    units: list[tuple[int, tuple[int, int], list[int]]] = []
    seen: dict[int, int] = {}
    for nid in chosen:
        k, part = chosen.count(nid), seen.get(nid, 0)
        seen[nid] = part + 1
        c = cores[nid]
        size, extra = divmod(len(c), k)
        start = part * size + min(part, extra)
        units.append((nid, (part, k), c[start : start + size + (part < extra)]))

    n_cores = sum(len(u[2]) for u in units)
    n_sib = sum(len(siblings[r]) for u in units for r in u[2])
    n = n_threads if n_threads is not None else (n_cores + n_sib if smt else n_cores)
    take = _proportional(min(n, n_cores), [len(u[2]) for u in units])
    used = [u[2][:k] for u, k in zip(units, take, strict=True)]
    # siblings join only once every core has a thread, each in its own core's group
    spare = [sorted(s for r in u[2] for s in siblings[r]) for u in units]
    more = _proportional(max(0, n - n_cores), [len(s) for s in spare])
    plan_nodes = []
    smt_cpus: list[int] = []
    for (nid, split, _), us, sp, k in zip(units, used, spare, more, strict=True):
        cpus = us + sp[:k]
        if not cpus:
            continue
        smt_cpus += sp[:k]
        plan_nodes.append(
            LogicalNode(
                index=len(plan_nodes),
                node=nid,
                mem_node=_mem_node(topo, nid),
                cpus=tuple(cpus),
                cores=len(us),
                split=split,
            )
        )
    return ThreadPlan(
        nodes=tuple(plan_nodes),
        smt=smt,
        requested=n_threads,
        numa_nodes=None if numa_nodes is None else tuple(numa_nodes),
        smt_cpus=tuple(sorted(smt_cpus)),
    )


# --- the weight policy ---------------------------------------------------------------------


@dataclass(frozen=True)
class NumaPolicy:
    """What ``--numa`` resolved to for a plan (``numoe.layers.numa_experts`` carries it out)."""

    requested: str  # auto | shard | replicate | off
    name: str  # shard | replicate | off
    reason: str
    nodes: tuple[LogicalNode, ...]  # logical nodes the weights are spread over / copied to


def resolve_policy(requested: str, plan: ThreadPlan) -> NumaPolicy:
    if requested not in POLICIES:
        raise ValueError(f"--numa must be one of {', '.join(POLICIES)}, got {requested!r}")
    n = len(plan.nodes)
    if requested == "auto":
        name = "shard" if n > 1 else "off"
        reason = f"auto: {n} logical node{'s' if n != 1 else ''}"
    else:
        name, reason = requested, "asked"
    return NumaPolicy(requested=requested, name=name, reason=reason, nodes=plan.nodes)


# --- the system: libnuma, automatic NUMA balancing -----------------------------------------


@dataclass(frozen=True)
class LibNuma:
    status: str  # ok | missing | refused
    text: str  # for people: "ok (...)", "not installed", "refused (numa_available() == -1)"
    path: str | None = None
    max_node: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def probe_libnuma(name: str = "libnuma.so.1", lib=None) -> LibNuma:
    """dlopen libnuma and call numa_available(). ``lib`` replaces the loaded library (tests)."""
    if lib is None:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            return LibNuma("missing", f"not installed ({name} not found)")
    try:
        available = lib.numa_available()
    except AttributeError:
        return LibNuma("missing", f"not usable ({name} has no numa_available)")
    if available == -1:
        return LibNuma("refused", "refused (numa_available() == -1)")
    path = _loaded_path(name)
    max_node = None
    if hasattr(lib, "numa_max_node"):
        max_node = int(lib.numa_max_node())
    where = f", {path}" if path else ""
    return LibNuma("ok", f"ok (libnuma API v2{where})", path=path, max_node=max_node)


def _loaded_path(name: str) -> str | None:
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as f:
            for line in f:
                p = line.split()[-1] if line.split() else ""
                if os.path.basename(p).startswith(name):
                    return p
    except OSError:
        pass
    return None


@functools.cache
def libnuma() -> LibNuma:
    """This process's libnuma status (probed once)."""
    return probe_libnuma()


def numa_balancing(path: str = "/proc/sys/kernel/numa_balancing") -> int | None:
    """The kernel's automatic NUMA balancing mode (0 off, 1 on, 2 tiering, 3 both); None if
    the kernel has no such file."""
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def fallback_notice(status: LibNuma | None = None) -> str | None:
    """The line that says NUMA placement falls back to sysfs + first touch because libnuma is
    missing or refused; None when libnuma is usable."""
    status = status if status is not None else libnuma()
    if status.ok:
        return None
    why = "not installed" if status.status == "missing" else status.text
    return (
        f"numoe: libnuma {why}: NUMA placement falls back to sysfs and first touch from "
        "pinned threads (`numoe doctor` says more)"
    )
