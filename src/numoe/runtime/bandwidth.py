"""The machine's read bandwidth: the limit a decode step is measured against.

`measure_read_bandwidth` is a STREAM-style read (``numoe._cpu.read_bandwidth_bytes``: the
pool's threads sum a buffer in their own node's memory, one 64-byte load per cache line);
`read_bandwidth` caches its figure per machine so commands need not measure each time.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np

from .. import _cpu
from ..config import cache_dir
from . import pool
from .machine import cpu_model, largest_cache, mem_available
from .memory import NodeBuffer
from .numa import format_ids, plan_threads
from .topology import Topology

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
    allowed = format_ids(os.sched_getaffinity(0))
    return f"{cpu_model()} | {os.cpu_count()} CPUs | allowed {allowed} | {threads} threads"


def read_bandwidth(refresh: bool = False, nbytes: int | None = None) -> Probe:
    """The machine's read bandwidth with the default thread plan (every allowed physical
    core; see measure_read_bandwidth): from the cache file (numoe.config.cache_dir()/
    read_bandwidth.json, one entry per machine_key), or measured (~1 s) and cached when there
    is none or `refresh` (the pool is then left sized with the default plan)."""
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
