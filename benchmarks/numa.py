"""Decode (tg) and prefill (pp) tokens/s and memory of numoe under --numa off / shard /
replicate, one fresh process per policy, on one GGUF file and one thread plan.

    python benchmarks/numa.py -m model.gguf --numa-nodes 0,0      # 2 logical nodes on node 0
    python benchmarks/numa.py -m model.gguf --numa-nodes 0,1 -t 32
    python benchmarks/numa.py -m model.gguf --sweep   # default plan vs -t 1..all cores

Per policy: load time; pp and tg tok/s (median of --reps rounds after a warm-up; prefill
touches every expert); RSS growth over load + run (file pages of the map included: off holds
the file's pages, shard its copies instead, replicate N copies); peak RSS (VmHWM: the load
copies tensor by tensor while the map's pages are released after each layer); node memory
from the allocator's own accounting (numoe._cpu.node_allocated).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

POLICIES = ("off", "shard", "replicate")


def status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def one(path: Path, policy: str, nodes: str, threads: int | None, n_pp: int, n_tg: int, reps: int):
    import torch

    from numoe import _cpu
    from numoe.engine import Session
    from numoe.gguf import open_gguf
    from numoe.models import load
    from numoe.runtime import numa
    from numoe.runtime.settings import Runtime
    from numoe.sampling import Sampler, SamplingParams

    nodes_list = numa.parse_numa_nodes(nodes) if nodes else None
    rt = Runtime.create(threads=threads, numa_nodes=nodes_list, numa=policy)
    plan = rt.plan
    rss0 = status_bytes("VmRSS")
    t0 = time.perf_counter()
    cfg, model = load(open_gguf(path), runtime=rt)
    load_s = time.perf_counter() - t0
    toks = torch.randint(100, cfg.n_vocab, (n_pp,), generator=torch.Generator().manual_seed(0))
    toks = toks.tolist()
    greedy = Sampler(SamplingParams(temperature=0))
    pp, tg = [], []
    for r in range(reps + 1):  # round 0: warm-up
        s = Session(model, n_ctx=n_pp + n_tg + 8, chunk=n_pp)
        s.prefill(toks)
        s2 = Session(model, n_ctx=n_pp + n_tg + 8)
        for _ in s2.generate(toks[:1], n_tg, greedy, ignore_eos=True):
            pass
        if r:
            pp.append(s.timings.prompt_tps)
            tg.append(s2.timings.gen_tps)
    out = {
        "policy": policy,
        "resolved": rt.policy.name,
        "isa": _cpu.isa(),
        "threads": plan.threads,
        "groups": len(plan.groups),
        "load_s": load_s,
        "pp": statistics.median(pp),
        "tg": statistics.median(tg),
        "rss": status_bytes("VmRSS") - rss0,
        "peak": status_bytes("VmHWM"),
        "allocated": sum(_cpu.node_allocated().values()),
    }
    del model, s, s2
    gc.collect()
    return out


def child(a, policy: str, nodes: str, threads: int | None) -> dict | None:
    """Run one configuration in a fresh process; its result dict, or None (reason printed)."""
    args = [sys.executable, __file__, "-m", str(a.model), "--numa-nodes", nodes]
    args += ["--pp", str(a.pp), "--tg", str(a.tg), "--reps", str(a.reps), "--one", policy]
    if threads:
        args += ["-t", str(threads)]
    p = subprocess.run(args, check=False, capture_output=True, text=True)
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode or not line:
        print(f"{policy} -t {threads}: failed: {p.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return json.loads(line[0][7:])


def sweep(a) -> None:
    from numoe.runtime import numa
    from numoe.runtime.topology import Topology

    cores = numa.plan_threads(Topology.read(), None, None).threads  # the default: all cores
    print(f"{a.model.name}: thread sweep, policy off, default plan", flush=True)
    print(f"{'threads':>9} {'pp tok/s':>9} {'tg tok/s':>9}", flush=True)
    rows = {}
    for t in [*range(1, cores + 1), None]:
        r = child(a, "off", "", t)
        if r:
            rows[t] = r
            name = f"default ({r['threads']})" if t is None else str(t)
            print(f"{name:>9} {r['pp']:9.1f} {r['tg']:9.2f}", flush=True)
    if None in rows and len(rows) > 1:
        for key in ("tg", "pp"):
            best = max(r[key] for r in rows.values())
            print(f"default {key}: {100 * rows[None][key] / best:.0f} % of the best", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", type=Path, required=True)
    ap.add_argument("--numa-nodes", default="0,0")
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--pp", type=int, default=32)
    ap.add_argument("--tg", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument(
        "--sweep", action="store_true",
        help="policy off, default thread plan (no --numa-nodes) at -t 1..all physical cores "
        "and at the default (no -t): is the default within 5%% of the best?",
    )  # fmt: skip
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child: one policy
    a = ap.parse_args()
    if a.one:
        r = one(a.model, a.one, a.numa_nodes, a.threads, a.pp, a.tg, a.reps)
        print("RESULT " + json.dumps(r), flush=True)
        return
    from numoe.bench import isa_line
    from numoe.gguf import open_gguf

    if a.sweep:
        print(isa_line(), flush=True)
        sweep(a)
        return
    size = open_gguf(a.model).file_size  # all the files of a split model
    print(f"{a.model.name}: {size / 2**30:.2f} GiB, --numa-nodes {a.numa_nodes}", flush=True)
    print(isa_line(), flush=True)
    print(
        f"{'policy':>10} {'load s':>7} {'pp tok/s':>9} {'tg tok/s':>9} {'RSS +GiB':>9} "
        f"{'peak GiB':>9} {'node mem GiB':>13}",
        flush=True,
    )
    for policy in a.policies.split(","):
        r = child(a, policy, a.numa_nodes, a.threads)
        if r is None:
            continue
        name = policy if r["resolved"] == policy else f"{policy}->{r['resolved']}"
        print(
            f"{name:>10} {r['load_s']:7.1f} {r['pp']:9.1f} {r['tg']:9.2f} "
            f"{r['rss'] / 2**30:9.2f} {r['peak'] / 2**30:9.2f} {r['allocated'] / 2**30:13.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
