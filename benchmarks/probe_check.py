"""Is numoe's read-bandwidth probe right? numoe's probe (numoe.runtime.bandwidth.
measure_read_bandwidth over numoe._cpu.read_bandwidth_bytes) beside an independent STREAM-style
reader in plain C (benchmarks/stream_read.c, compiled here with the system `cc -O2
-march=native -pthread`), with and without software prefetch and with and without huge pages,
on the same CPUs and buffer size, in one table.

    python benchmarks/probe_check.py                # 5 rounds of 10 passes per reader
    python benchmarks/probe_check.py -r 3 -p 5 --mib 1024 --distance 4096

Readers (every one reads a fresh anonymous buffer of --mib MiB, default numoe's probe size,
first touched by the threads that read it where the reader does so):
  numoe probe     measure_read_bandwidth() as `numoe bench` runs it: NodeBuffer (MADV_HUGEPAGE,
                  first touch by the pool's threads), the best of >= 3 passes and 0.3 s; one
                  figure per call, --passes calls per round
  numoe reader    read_bandwidth_bytes on the pool, per pass, on a buffer madvised
                  MADV_HUGEPAGE or MADV_NOHUGEPAGE before it is written (by this thread)
  C reader        stream_read.c: one pinned thread per CPU of numoe's plan, each reading its
                  own contiguous share with 64-byte vector loads; prefetch on = prefetcht0 of
                  every line --distance bytes ahead; huge = MADV_HUGEPAGE / MADV_NOHUGEPAGE
The readers take turns round by round (the bandwidth of a shared machine drifts within
minutes); the table gives the median GB/s (1e9 bytes/s) over all passes of a reader, the
range, the huge pages it actually got, and its median against the numoe probe's.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from numoe import _cpu
from numoe.bench import isa_line
from numoe.runtime import bandwidth, pool
from numoe.runtime.machine import cpu_model
from numoe.runtime.numa import plan_threads
from numoe.runtime.topology import Topology

HERE = Path(__file__).resolve().parent
MiB = 1 << 20


def compile_reader(cc: str, out_dir: Path) -> tuple[Path, str]:
    """(the stream_read binary, the compiler's first --version line)."""
    exe = out_dir / "stream_read"
    cmd = [cc, "-O2", "-march=native", "-pthread", str(HERE / "stream_read.c"), "-o", str(exe)]
    subprocess.run(cmd, check=True)
    ver = subprocess.run([cc, "--version"], check=False, capture_output=True, text=True).stdout
    return exe, (ver.splitlines() or ["?"])[0] + " | " + " ".join(cmd[1:4])


def anon_huge_kb() -> int:
    """AnonHugePages of this process (kB), -1 when unknown."""
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return -1


def thp_settings() -> str:
    out = []
    for name in ("enabled", "defrag"):
        try:
            text = Path(f"/sys/kernel/mm/transparent_hugepage/{name}").read_text().split()
            out.append(f"{name} " + next((w.strip("[]") for w in text if w.startswith("[")), "?"))
        except OSError:
            out.append(f"{name} ?")
    return "THP " + ", ".join(out)


def numoe_reader(nbytes: int, huge: bool, passes: int) -> tuple[list[float], int]:
    """GB/s per pass of read_bandwidth_bytes on a fresh anonymous buffer, and the huge pages
    (kB) it got. The pool is numoe's default plan."""
    base = anon_huge_kb()
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_HUGEPAGE if huge else mmap.MADV_NOHUGEPAGE)
    arr = np.frombuffer(m, np.uint8)
    arr[:] = 1  # first touch (one NUMA node here or not: this thread's node)
    got = anon_huge_kb() - base if base >= 0 else -1
    _cpu.read_bandwidth_bytes(arr)  # untimed: TLB, page tables
    out = []
    for _ in range(passes):
        t0 = time.perf_counter()
        _cpu.read_bandwidth_bytes(arr)
        out.append(nbytes / (time.perf_counter() - t0) / 1e9)
    del arr
    m.close()
    return out, got


def node_buffer_huge_kb(nbytes: int, plan) -> int:
    """Huge pages (kB) a NodeBuffer as the probe allocates it gets (the probe frees its
    own before returning, so a second one is made here and looked at)."""
    from numoe.runtime.memory import NodeBuffer

    ln = plan.nodes[0]
    if ln.mem_node is None:
        return -1
    base = anon_huge_kb()
    buf = NodeBuffer(nbytes, ln.mem_node)
    got = anon_huge_kb() - base if base >= 0 else -1
    del buf
    return got


def c_reader(exe: Path, mib: int, cpus: list[int], passes: int, pf: bool, huge: bool, dist: int):
    args = [str(exe), str(mib), ",".join(map(str, cpus)), str(passes), str(int(pf))]
    args += [str(int(huge)), str(dist)]
    p = subprocess.run(args, capture_output=True, text=True, check=True)
    d = json.loads(p.stdout)
    return d["gbps"], d["anon_huge_kb"], d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-r", "--rounds", type=int, default=5, help="turns of every reader")
    ap.add_argument("-p", "--passes", type=int, default=10, help="timed passes per turn")
    ap.add_argument("--mib", type=int, default=None, help="buffer MiB (default: numoe's probe's)")
    ap.add_argument("--distance", type=int, default=2048, help="C prefetch distance, bytes")
    ap.add_argument("--cc", default=os.environ.get("CC", "cc"))
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    a = ap.parse_args()

    plan = plan_threads(Topology.read())
    cpus = [c for grp in plan.groups for c in grp]
    threads = pool.set_plan(plan)
    mib = a.mib or bandwidth.probe_bytes() // MiB
    nbytes = mib * MiB
    with tempfile.TemporaryDirectory(prefix="numoe_probe_check_") as tmp:
        exe, cc_line = compile_reader(a.cc, Path(tmp))
        readers = {  # name -> (prefetch, pages, run() -> (GB/s list, huge kB))
            "numoe probe": ("no", "MADV_HUGEPAGE", None),
            "numoe reader": ("no", "MADV_HUGEPAGE", True),
            "numoe reader ": ("no", "MADV_NOHUGEPAGE", False),
        }
        for pf in (False, True):
            for huge in (True, False):
                name = f"C reader{' ' * (2 * pf + (not huge))}"  # unique keys, same label
                pages = "MADV_HUGEPAGE" if huge else "MADV_NOHUGEPAGE"
                readers[name] = (f"{a.distance} B" if pf else "no", pages, (pf, huge))
        res = {k: [] for k in readers}  # GB/s of every pass (probe: of every call)
        best = {k: [] for k in readers}  # the best of each turn
        huge_got: dict[str, list[int]] = {k: [] for k in readers}
        vec = "?"
        load0 = os.getloadavg()[0]
        for r in range(a.rounds):
            order = list(readers) if r % 2 == 0 else list(reversed(readers))
            for name in order:
                _, _, how = readers[name]
                n0 = len(res[name])
                if name == "numoe probe":
                    for _ in range(a.passes):
                        res[name].append(bandwidth.measure_read_bandwidth(nbytes))
                    if not huge_got[name]:
                        huge_got[name].append(node_buffer_huge_kb(nbytes, plan))
                elif isinstance(how, bool):
                    v, got = numoe_reader(nbytes, how, a.passes)
                    res[name] += v
                    huge_got[name].append(got)
                else:
                    v, got, d = c_reader(exe, mib, cpus, a.passes, *how, a.distance)
                    res[name] += v
                    huge_got[name].append(got)
                    vec = f"{d['vector_bytes'] * 8}-bit vectors"
                turn = res[name][n0:]  # the probe: each call is a best-of already
                best[name].append(statistics.median(turn) if name == "numoe probe" else max(turn))
            print(f"round {r + 1}/{a.rounds} done", file=sys.stderr, flush=True)
        load1 = os.getloadavg()[0]

    pool.set_plan(plan)
    ref = statistics.median(res["numoe probe"])
    print(
        f"read bandwidth check on {cpu_model()} ({platform.machine()}), {threads} threads on "
        f"CPUs {','.join(map(str, cpus))}, buffer {mib} MiB (numoe's probe size: "
        f"{bandwidth.probe_bytes() // MiB} MiB), {a.rounds} rounds x {a.passes} passes per "
        f"reader, alternating; load average {load0:.1f} -> {load1:.1f}"
    )
    print(isa_line())
    print(f"C reader: {cc_line} ({vec}); {thp_settings()}")
    print(
        "GB/s = 1e9 bytes/s; median (min-max) over every pass; numoe probe: one best-of figure "
        "per call (>= 3 passes, 0.3 s), its median over the calls; turn best: the median over "
        "the turns of each turn's best pass (the probe: of its calls' median; like with like for "
        "the probe's best-of); huge MB: "
        "AnonHugePages the reader's buffer got\n"
    )
    print(
        "| reader | sw prefetch | pages | huge MB | threads | GB/s median | min-max | "
        "vs numoe probe | turn best | vs numoe probe |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    table = []
    for name, (pf, pages, _) in readers.items():
        v = res[name]
        med = statistics.median(v)
        got = huge_got[name]
        got_mb = "?" if not got or min(got) < 0 else f"{statistics.median(got) / 1024:.0f}"
        print(
            f"| {name.strip()} | {pf} | {pages} | {got_mb} | {threads} | {med:.1f} | "
            f"{min(v):.1f}-{max(v):.1f} | {med / ref:.2f}x | {statistics.median(best[name]):.1f} | "
            f"{statistics.median(best[name]) / ref:.2f}x |"
        )
        table.append({"reader": name.strip(), "prefetch": pf, "pages": pages, "huge_mb": got_mb,
                      "threads": threads, "gbps": v, "median": med,
                      "turn_best": best[name]})  # fmt: skip
    if a.json:
        Path(a.json).write_text(
            json.dumps({"isa": _cpu.isa(), "mib": mib, "cpus": cpus, "rows": table}, indent=1)
        )


if __name__ == "__main__":
    main()
