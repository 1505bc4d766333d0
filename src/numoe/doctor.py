"""`numoe doctor`: topology, what this process may use, the thread plan and NUMA policy numoe
would choose, the memory a model needs per node under each policy, and advice.

:func:`diagnose` returns one JSON-ready dict (the keys are documented in
docs/architecture.md and kept stable); ``numoe.cli.doctor`` prints it as text or JSON.
Advice items carry a stable ``code`` (see :data:`ADVICE`), a ``level`` (info | warn) and
plain-words ``text``.

A topology captured on another machine (:func:`capture`, ``numoe doctor --capture DIR``)
is read back with ``--sysfs DIR``; the process facts of that machine (allowed CPUs and
memory nodes, libnuma, NUMA balancing) come from ``DIR/numoe-process.json`` when present.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import __version__
from .runtime.numa import (
    LibNuma,
    ThreadPlan,
    format_ids,
    libnuma,
    numa_balancing,
    plan_threads,
    resolve_policy,
)
from .runtime.topology import Topology

GiB = 1 << 30
PROCESS_FILE = "numoe-process.json"

# code -> when it is given. The text of each item says what to do.
ADVICE = {
    "one_node": "one NUMA node: nothing to place",
    "many_small_nodes": "4 or more NUMA nodes per socket (one per memory channel / CCD)",
    "smt_threads": "the thread plan includes SMT siblings",
    "confined": "the process may use only part of the CPUs or memory nodes",
    "memoryless_node_cpus": "CPUs on a node without memory",
    "memory_only_node": "a node with memory and no CPUs (CXL, HBM in flat mode)",
    "numa_balancing_on": "automatic NUMA balancing is on, on a machine with several nodes",
    "libnuma_missing": "libnuma is not installed, on a machine with several nodes",
    "libnuma_refused": "libnuma is refused (numa_available() == -1), with several nodes",
    "threads_capped": "-t asks for more threads than this process may run",
    "insufficient_memory": "the model needs more memory than a node / the machine has",
    "config_error": "the config file or a NUMOE_* variable has a bad value (ignored here)",
}


def gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


# --- the model's memory per policy ---------------------------------------------------------


def model_bytes(path) -> dict:
    """Routed-expert and dense (everything else) bytes of a GGUF model (a file, or a split
    model's shard or directory: all its files), at stored size."""
    # Here, not at the top: numoe.gguf imports torch, which `numoe doctor` without -m
    # never needs (start-up time).
    from .gguf import open_gguf
    from .roofline import is_routed_expert

    g = open_gguf(path)
    experts = sum(t.nbytes for n, t in g.tensors.items() if is_routed_expert(n))
    dense = sum(t.nbytes for n, t in g.tensors.items() if not is_routed_expert(n))
    shard = None  # -m names one shard of a split model: which, of how many
    if len(g.paths) > 1 and Path(path).is_file():
        files = [Path(p).resolve() for p in g.paths]
        given = Path(path).resolve()
        if given in files:
            shard = {"index": files.index(given) + 1, "count": len(files), "first": str(g.path)}
    return {
        "path": str(path),
        "files": [str(p) for p in g.paths],  # a split model: its shards
        "shard": shard,
        "arch": g.arch,
        "expert_bytes": experts,
        "dense_bytes": dense,
    }


def memory_by_policy(plan: ThreadPlan, expert_bytes: int, dense_bytes: int) -> dict:
    """policy -> {"per_node": {node: bytes}, "map": bytes, "total": bytes}.

    per_node: node-bound memory (expert slices or copies, on each logical node's mem_node);
    map: bytes used straight from the file's memory map (page cache: the kernel puts each
    page on the node of the thread that first reads it). Dense weights (attention, shared
    experts, norms, head) stay in the map under every policy (or go to the GPU).
    """
    n = len(plan.nodes)
    shard: dict[int, int] = {}
    for ln in plan.nodes:
        if ln.mem_node is not None:
            shard[ln.mem_node] = shard.get(ln.mem_node, 0) + expert_bytes // n
    replicate: dict[int, int] = {}  # a copy per logical node (numoe.layers.numa_experts)
    for ln in plan.nodes:
        if ln.mem_node is not None:
            replicate[ln.mem_node] = replicate.get(ln.mem_node, 0) + expert_bytes
    out = {"off": {"per_node": {}, "map": expert_bytes + dense_bytes}}
    out["shard"] = {"per_node": shard, "map": dense_bytes}
    out["replicate"] = {"per_node": replicate, "map": dense_bytes}
    for v in out.values():
        v["total"] = v["map"] + sum(v["per_node"].values())
    return out


def page_cache_placement(path) -> dict | None:
    """Where the page cache holds the file's weights now (live machine only):
    {"per_node": {node: bytes}, "not_resident": bytes, "unknown_node": bytes}; None when the
    query fails. What policy off reads from; see numoe.runtime.memory.placement."""
    from .runtime.memory import NOT_RESIDENT, UNKNOWN_NODE, placement  # imports torch: above

    try:
        p = placement(path, map_cached=True)
    except (OSError, ValueError, RuntimeError):
        return None
    return {
        "per_node": {k: v for k, v in p.items() if isinstance(k, int)},
        "not_resident": p.get(NOT_RESIDENT, 0),
        "unknown_node": p.get(UNKNOWN_NODE, 0),
    }


# --- the report ----------------------------------------------------------------------------


def _process_facts(topo_root: Path | None) -> dict:
    """Process facts saved beside a captured tree (allowed CPUs/mems, libnuma, balancing)."""
    if topo_root is None:
        return {}
    p = topo_root / PROCESS_FILE
    if not p.is_file():
        return {}
    try:
        facts = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{p}: not a numoe doctor capture ({e})") from e
    return facts if isinstance(facts, dict) else {}


def diagnose(
    sysfs: str | None = None,
    allowed_cpus: list[int] | None = None,
    allowed_mems: list[int] | None = None,
    threads: int | None = None,
    numa_nodes: list[int] | None = None,
    smt: bool = False,
    numa: str = "auto",
    model: str | None = None,
    settings: dict | None = None,
) -> dict:
    """The doctor's report for this machine (sysfs=None) or a captured tree. `settings`: the
    effective settings and their sources (numoe.config.resolve), reported as given."""
    root = Path(sysfs) if sysfs is not None else None
    facts = _process_facts(root)
    if allowed_cpus is None and root is not None:
        allowed_cpus = facts.get("allowed_cpus")
    if allowed_mems is None and root is not None:
        allowed_mems = facts.get("allowed_mems")
    if root is not None and allowed_cpus is None:
        # a captured tree: the whole machine, unless told otherwise
        allowed_cpus = Topology.read(str(root), allowed_cpus=[]).online_cpus
    topo = Topology.read("/sys" if root is None else str(root), allowed_cpus, allowed_mems)
    if root is None:
        lib: LibNuma | None = libnuma()
        balancing = numa_balancing()
    else:
        saved = facts.get("libnuma")
        lib = LibNuma(saved["status"], saved["text"]) if isinstance(saved, dict) else None
        balancing = facts.get("numa_balancing")
    plan = plan_threads(topo, threads, numa_nodes, smt)
    policy = resolve_policy(numa, plan)
    mb = model_bytes(model) if model is not None else None
    if mb is not None:
        mb["policies"] = memory_by_policy(plan, mb["expert_bytes"], mb["dense_bytes"])
        if root is None:
            mb["page_cache"] = page_cache_placement(model)

    smt_of = {c.id: not c.primary for c in topo.cpus}
    nodes = []
    for n in topo.nodes:
        cores = [c for c in n.cpus if not smt_of.get(c, False)]
        nodes.append(
            {
                "id": n.id,
                "cpus": list(n.cpus),
                "cores": cores,  # one CPU (the lowest thread) per physical core
                "smt_siblings": [c for c in n.cpus if smt_of.get(c, False)],
                "packages": list(topo.packages(n.id)),
                "mem_total": n.mem_total,
                "mem_free": n.mem_free,
                "distances": list(n.distances),
                "allowed_cpus": [c for c in n.cpus if c in topo.allowed_cpus],
                "memory_allowed": n.id in topo.allowed_mems,
            }
        )
    report = {
        "numoe": __version__,
        "source": "/sys" if root is None else str(root),
        "live": root is None,
        "packages": sorted({c.package for c in topo.cpus}),
        "nodes": nodes,
        "online_cpus": list(topo.online_cpus),
        "allowed_cpus": list(topo.allowed_cpus),
        "allowed_mems": list(topo.allowed_mems),
        "smt": topo.smt,
        "libnuma": None if lib is None else {"status": lib.status, "text": lib.text},
        "numa_balancing": balancing,
        "thread_plan": {
            "threads": plan.threads,
            "requested": plan.requested,
            "smt": plan.smt,
            "numa_nodes": None if plan.numa_nodes is None else list(plan.numa_nodes),
            "smt_cpus": list(plan.smt_cpus),
            "groups": [
                {
                    "index": ln.index,
                    "node": ln.node,
                    "mem_node": ln.mem_node,
                    "split": list(ln.split),
                    "cpus": list(ln.cpus),
                    "cores": ln.cores,
                }
                for ln in plan.nodes
            ],
            "text": plan.describe(),
        },
        "policy": {
            "requested": policy.requested,
            "name": policy.name,
            "reason": policy.reason,
        },
        "model": mb,
        "settings": settings,
    }
    report["advice"] = advise(topo, plan, policy.name, lib, balancing, mb)
    return report


def advise(topo: Topology, plan: ThreadPlan, policy: str, lib, balancing, mb) -> list[dict]:
    out: list[dict] = []

    def add(code: str, level: str, text: str) -> None:
        assert code in ADVICE, code
        out.append({"code": code, "level": level, "text": text})

    cpu_nodes = [n for n in topo.nodes if n.cpus]
    mem_nodes = [n for n in topo.nodes if n.mem_total > 0]
    multi = len(topo.nodes) > 1
    n_cores = len(topo.physical_cores(allowed_only=False))
    if len(topo.nodes) == 1 and len(plan.nodes) == 1:
        add(
            "one_node",
            "info",
            f"One NUMA node: nothing to place. numoe runs {plan.threads} thread{'' if plan.threads == 1 else 's'}, one per "
            "physical core, and reads the weights in place from the memory map.",
        )

    per_pkg: dict[int, int] = {}
    for n in cpu_nodes:
        for p in topo.packages(n.id):
            per_pkg[p] = per_pkg.get(p, 0) + 1
    most = max(per_pkg.values(), default=0)
    if most >= 4:
        add(
            "many_small_nodes",
            "warn",
            f"{len(cpu_nodes)} NUMA nodes on {len(per_pkg)} socket(s), up to {most} per socket "
            "(one per memory channel or per CCD). Sharding over that many nodes cuts each "
            "expert into thin slices and makes every token wait on the slowest node; one node "
            "per socket is usually faster. In the BIOS set 'NUMA nodes per socket' to NPS1 "
            "(AMD; and 'L3 cache as NUMA domain' off) or disable Sub-NUMA Clustering (Intel): "
            "the socket's memory channels are then interleaved in hardware. Without the BIOS: "
            "`numactl --interleave=all numoe run --numa off ...` spreads the weights over all "
            "channels (evict the file from the page cache first so it is read again).",
        )
    if plan.smt_cpus:
        add(
            "smt_threads",
            "warn",
            f"{len(plan.smt_cpus)} of the {plan.threads} threads are SMT siblings "
            f"(CPUs {format_ids(plan.smt_cpus)}) of cores already in use. Decode is bound by "
            "memory bandwidth, which a sibling does not add, and the pair share one core's "
            "caches: usually slower. Leave out --smt and keep -t at or below "
            f"{len(topo.physical_cores())} (the physical cores this process may use).",
        )
    online, allowed = set(topo.online_cpus), set(topo.allowed_cpus)
    mem_ids = [n.id for n in mem_nodes]
    limited_mems = [m for m in mem_ids if m not in topo.allowed_mems]
    if allowed < online or limited_mems:
        parts = []
        if allowed < online:
            parts.append(
                f"{len(allowed)} of the {len(online)} online CPUs ({format_ids(allowed)}: "
                f"{len(topo.physical_cores())} of {n_cores} physical cores)"
            )
        if limited_mems:
            parts.append(f"the memory of nodes {format_ids(topo.allowed_mems)} only")
        add(
            "confined",
            "info",
            "This process may use " + " and ".join(parts) + " (taskset, numactl, or a "
            "container's cpuset); numoe plans its threads within that. If the limit is not "
            "meant: run without taskset/numactl, or widen the container (docker --cpuset-cpus "
            "/ --cpuset-mems, Kubernetes CPU manager).",
        )
    for n in cpu_nodes:
        if n.mem_total == 0:
            used = [ln for ln in plan.nodes if ln.node == n.id]
            served = used[0].mem_node if used and used[0].mem_node is not None else None
            from_ = f" from node {served}" if served is not None else ""
            add(
                "memoryless_node_cpus",
                "warn",
                f"Node {n.id} has CPUs ({format_ids(n.cpus)}) and no memory: its threads read "
                f"every byte{from_} across the interconnect. Usually a BIOS memory population "
                "or NPS setting; check that each socket's DIMMs are fitted. Or leave the node "
                "out with --numa-nodes.",
            )
    for n in topo.nodes:
        if not n.cpus and n.mem_total > 0:
            add(
                "memory_only_node",
                "info",
                f"Node {n.id} has {gib(n.mem_total)} of memory and no CPUs (CXL memory or HBM "
                "in flat mode). numoe runs no threads there and does not place weights there; "
                "with --numa off the page cache may still land on it when other nodes fill.",
            )
    if multi and balancing:
        add(
            "numa_balancing_on",
            "warn",
            f"Automatic NUMA balancing is on (kernel.numa_balancing = {balancing}): the "
            "kernel unmaps pages to sample accesses and migrates weights and threads, which "
            "costs time and fights numoe's placement. Turn it off: `echo 0 | sudo tee "
            "/proc/sys/kernel/numa_balancing` (or sysctl kernel.numa_balancing=0).",
        )
    if multi and lib is not None and not lib.ok:
        if lib.status == "refused":
            add(
                "libnuma_refused",
                "info",
                "libnuma is installed but refused (numa_available() == -1): the memory policy "
                "system calls are blocked, as under a container's default seccomp profile. "
                "numoe falls back to sysfs and first touch from pinned threads, which places "
                "memory right but cannot bind it or report it. To allow them: docker run "
                "--cap-add SYS_NICE, or a seccomp profile that permits get_mempolicy, mbind "
                "and move_pages.",
            )
        else:
            add(
                "libnuma_missing",
                "info",
                "libnuma is not installed: numoe falls back to sysfs and first touch from "
                "pinned threads, which places memory right but cannot bind it (mbind) or "
                "report where it is (move_pages). Install it: apt install libnuma1 (Debian/"
                "Ubuntu), dnf install numactl-libs (Fedora/RHEL).",
            )
    if plan.requested is not None and plan.requested > plan.threads:
        add(
            "threads_capped",
            "info",
            f"-t {plan.requested} asks for more threads than this plan can run: "
            f"{plan.threads} (one per allowed CPU of the chosen nodes). numoe runs "
            f"{plan.threads}.",
        )
    if mb is not None:
        _advise_memory(topo, plan, policy, mb, add)
    return out


def _advise_memory(topo: Topology, plan: ThreadPlan, policy: str, mb: dict, add) -> None:
    need = mb["policies"][policy]
    usable = sum(n.mem_total for n in topo.nodes if n.id in topo.allowed_mems)
    short = [
        (m, b, topo.node(m).mem_total)
        for m, b in sorted(need["per_node"].items())
        if b > topo.node(m).mem_total
    ]
    if short:
        m, b, has = short[0]
        add(
            "insufficient_memory",
            "warn",
            f"Under --numa {policy} node {m} needs {gib(b)} for its experts but has "
            f"{gib(has)} ({len(short)} node(s) short). Use --numa shard (one copy in total) "
            "or fewer, larger nodes.",
        )
    elif need["total"] > usable > 0:
        add(
            "insufficient_memory",
            "warn",
            f"The model needs {gib(need['total'])} under --numa {policy}; this process may "
            f"use {gib(usable)} of memory. Pages will be read from disk again and again "
            "(very slow): use a smaller quantization or a machine with more memory.",
        )


# --- capture -------------------------------------------------------------------------------

_CPU_FILES = ("physical_package_id", "core_id", "die_id", "thread_siblings_list", "core_cpus_list")
_NODE_FILES = ("cpulist", "meminfo", "distance")


def capture(dst: str, src: str = "/sys") -> int:
    """Copy the sysfs files numoe reads (and this process's facts) under dst; returns the
    number of files written. ``numoe doctor --sysfs dst`` reads them back anywhere."""
    out, srcp = Path(dst), Path(src)
    n = 0

    def copy(rel: str) -> None:
        nonlocal n
        try:
            text = (srcp / rel).read_text()
        except (OSError, UnicodeDecodeError):
            return
        p = out / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        n += 1

    for f in ("online", "present", "possible"):
        copy(f"devices/system/cpu/{f}")
    for f in ("online", "possible", "has_cpu", "has_memory"):
        copy(f"devices/system/node/{f}")
    for d in sorted((srcp / "devices/system/cpu").glob("cpu[0-9]*")):
        for f in _CPU_FILES:
            copy(f"devices/system/cpu/{d.name}/topology/{f}")
    for d in sorted((srcp / "devices/system/node").glob("node[0-9]*")):
        for f in _NODE_FILES:
            copy(f"devices/system/node/{d.name}/{f}")
    topo = Topology.read(src)
    lib = libnuma()
    facts = {
        "numoe": __version__,
        "hostname": os.uname().nodename,
        "allowed_cpus": list(topo.allowed_cpus),
        "allowed_mems": list(topo.allowed_mems),
        "numa_balancing": numa_balancing(),
        "libnuma": {"status": lib.status, "text": lib.text},
    }
    (out / PROCESS_FILE).write_text(json.dumps(facts, indent=1) + "\n")
    return n + 1
