"""Decode is bound by memory bandwidth: the bytes of weights one token reads, and the
machine's read bandwidth to compare them with.

Per token, decode reads every dense weight once (attention, dense FFNs, shared experts,
norms, routers, the output head), one row of the embedding table, and the k routed experts
it was sent to in each MoE layer, all at their stored (quantized) sizes: for the routed
experts that is layers x hidden x moe_intermediate x k x (bytes of a gate + up + down
element), as KTransformers' users count it. Achieved bandwidth = bytes_per_token x tokens/s;
:func:`read_bandwidth` (a ~1 s probe, cached per machine) says how close that is to the
limit.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .gguf import GGUFFile


def is_routed_expert(name: str) -> bool:
    """Merged 'blk.N.ffn_up_exps.weight' or per-expert 'blk.N.ffn_up.E.weight' (old Mixtral)."""
    parts = name.split(".")
    return "_exps" in name or (len(parts) == 5 and parts[3].isdigit())


def bytes_per_token(g: GGUFFile, n_expert_used: int, n_expert: int) -> int:
    """Weight bytes one decoded token reads (the KV cache is not counted)."""
    total = 0.0
    for name, t in g.tensors.items():
        if name.startswith("token_embd."):
            # the lookup reads one row; a tied output head reads the whole table
            total += t.nbytes if not g.has("output.weight") else t.nbytes / t.shape[0]
        elif is_routed_expert(name):
            total += t.nbytes * n_expert_used / n_expert
        else:
            total += t.nbytes
    return int(total)


def n_params(g: GGUFFile, n_expert_used: int, n_expert: int) -> tuple[int, int]:
    """(total, active per token) weights: active counts k of the E routed experts and every
    other tensor in full (the embedding table too, as model cards count 'A3B')."""
    total = routed = 0
    for name, t in g.tensors.items():
        total += t.n_elements
        if is_routed_expert(name):
            routed += t.n_elements
    idle = routed - routed * n_expert_used // n_expert if n_expert else 0
    return total, total - idle


# --- the machine's read bandwidth ----------------------------------------------------------

PROBE_FILE = "read_bandwidth.json"
MiB = 1 << 20


@dataclass(frozen=True)
class Probe:
    gbps: float  # best read rate over the repetitions, 1e9 bytes/s
    threads: int  # pool threads that read
    nbytes: int  # buffer size
    key: str  # the machine it was measured on (machine_key)
    measured: str  # when (local time, ISO 8601)
    cached: bool  # read from the cache file rather than measured now


def largest_cache(root: str = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """Bytes of CPU 0's largest cache (sysfs), 0 when unknown."""
    best = 0
    for d in Path(root).glob("index*"):
        try:
            text = (d / "size").read_text().strip()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            best = max(best, int(digits) * mult)
    return best


def proc_bytes(path: str, key: str) -> int | None:
    """A 'Key:   N kB' field of a /proc file (meminfo, self/status) in bytes; None if absent."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def mem_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes; None if unknown."""
    return proc_bytes("/proc/meminfo", "MemAvailable")


def probe_bytes() -> int:
    """Buffer size: twice the largest CPU cache (so most reads come from memory), 256 to 512
    MiB, and no more than an eighth of the available memory."""
    n = min(max(2 * largest_cache(), 256 * MiB), 512 * MiB)
    avail = mem_available()
    if avail:
        n = min(n, max(avail // 8, 16 * MiB))
    return n // MiB * MiB


def _best_rate(buf: np.ndarray, seconds: float, reps: int) -> float:
    """GB/s of the pool reading `buf` (uint8): the best of at least `reps` reads and `seconds`."""
    from . import _cpu

    _cpu.read_bandwidth_bytes(buf)  # first read: page tables, TLB
    best, t_end, n = float("inf"), time.perf_counter() + seconds, 0
    while n < reps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        _cpu.read_bandwidth_bytes(buf)
        best = min(best, time.perf_counter() - t0)
        n += 1
    return buf.nbytes / best / 1e9


def measure_read_bandwidth(nbytes: int | None = None, seconds: float = 0.3, reps: int = 3) -> float:
    """GB/s (1e9 bytes/s) the default thread plan reads (STREAM-style, numoe._cpu.
    read_bandwidth_bytes): per NUMA node of the plan, its threads read a buffer in their node's
    memory (NodeBuffer); the machine's figure is the sum over the nodes, what a run that
    keeps every node on its own memory (--numa shard) could reach. Leaves the pool sized with
    the default plan."""
    from . import _cpu, pool
    from .numa import plan_threads
    from .numa_mem import NodeBuffer
    from .topology import Topology

    n = nbytes or probe_bytes()
    plan = plan_threads(Topology.read())
    total = 0.0
    try:
        for ln in plan.nodes:
            _cpu.set_threads([list(ln.cpus)])
            if ln.mem_node is not None:
                buf = NodeBuffer(n, ln.mem_node)  # first touched by the node's threads
                arr = buf.array
            else:
                buf, arr = None, np.full(n, 1, np.uint8)
            total += _best_rate(arr, seconds, reps)
            del arr, buf
    finally:
        pool.set_plan(plan)
    return total


def machine_key(threads: int) -> str:
    """CPU model, online CPUs, the CPUs this process may use and the threads that read."""
    from .numa import format_ids

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model
            )
    except OSError:
        pass
    allowed = format_ids(os.sched_getaffinity(0))
    return f"{model} | {os.cpu_count()} CPUs | allowed {allowed} | {threads} threads"


def read_bandwidth(refresh: bool = False, nbytes: int | None = None) -> Probe:
    """The machine's read bandwidth with the default thread plan (every allowed physical
    core; see measure_read_bandwidth): from the cache file (numoe.config.cache_dir()/
    read_bandwidth.json, one entry per machine_key), or measured (~1 s) and cached when there
    is none or `refresh` (the pool is then left sized with the default plan)."""
    from .config import cache_dir
    from .numa import plan_threads
    from .topology import Topology

    threads = plan_threads(Topology.read()).threads
    key = machine_key(threads)
    path = cache_dir() / PROBE_FILE
    try:
        table = json.loads(path.read_text())
        table = table if isinstance(table, dict) else {}
    except (OSError, ValueError):
        table = {}
    entry = table.get(key)
    if not refresh and isinstance(entry, dict) and isinstance(entry.get("gbps"), (int, float)):
        return Probe(float(entry["gbps"]), threads, int(entry.get("bytes", 0)), key,
                     str(entry.get("measured", "?")), cached=True)  # fmt: skip
    n = nbytes or probe_bytes()
    gbps = measure_read_bandwidth(n)
    when = time.strftime("%Y-%m-%dT%H:%M:%S")
    table[key] = {"gbps": round(gbps, 3), "bytes": n, "measured": when}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache: measure again next time
    return Probe(gbps, threads, n, key, when, cached=False)
