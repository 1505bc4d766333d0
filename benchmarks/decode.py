"""Decode (tg) and prefill (pp) tokens/s of numoe beside llama.cpp, on the same GGUF files,
thread count and machine, in one run; with bytes/token, GB/s and % of the read bandwidth
(numoe's probe, numoe.roofline.measure_read_bandwidth). numoe's pp/tg runs are `numoe bench`'s
(numoe.bench.run_test: random tokens, no sampling, as llama-bench and the peer script).

    python benchmarks/decode.py                       # the default synthetic models
    python benchmarks/decode.py -m a.gguf -m b.gguf   # your files
    python benchmarks/decode.py --peer-python /work/peers/bin/python   # + llama.cpp
    python benchmarks/decode.py -d 2048     # + decode with 2048 tokens already in the cache

Synthetic models are written once to $NUMOE_BENCH_CACHE (default ~/.cache/numoe/bench),
outside the repository; delete them when done (--clean). The peer, llama.cpp through
llama-cpp-python, lives in its own virtual environment and is optional:
    python3.11 -m venv /work/peers
    CMAKE_ARGS="-DGGML_NATIVE=ON" /work/peers/bin/pip install llama-cpp-python
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from numoe.bench import ModelInfo, Test, rss_bytes, run_test
from numoe.gguf import open_gguf
from numoe.models import load
from numoe.numa_mem import format_placement, placement
from numoe.placement import Placement
from numoe.pool import set_threads
from numoe.roofline import measure_read_bandwidth
from numoe.synth import synth

DEFAULT_MODELS = [  # (preset, layers, type): real shapes, fewer layers to fit 24 GiB
    ("qwen3-30b-a3b", 12, "Q4_K_M"),
    ("deepseek-v2-lite", 8, "Q4_K_M"),
]

PEER_SCRIPT = r"""
import json, sys, time, random
from llama_cpp import Llama
path, threads, n_pp, n_tg, reps, depth = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:7])
llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads,
            n_ctx=max(n_pp, depth) + n_tg + 8, n_batch=n_pp, n_ubatch=n_pp, verbose=False)
rng = random.Random(0)
toks = [rng.randrange(100, llm.n_vocab()) for _ in range(max(n_pp, depth))]
pp, tg, tgd = [], [], []
for r in range(reps + 1):  # first round is warm-up
    llm.reset(); t0 = time.perf_counter(); llm.eval(toks[:n_pp]); dt = time.perf_counter() - t0
    if r: pp.append(n_pp / dt)
    llm.reset(); llm.eval(toks[:1]); t0 = time.perf_counter()
    for i in range(n_tg):
        llm.eval([toks[(i + 1) % n_pp]])
    dt = time.perf_counter() - t0
    if r: tg.append(n_tg / dt)
    if depth:  # decode after `depth` tokens (their prefill not timed)
        llm.reset(); llm.eval(toks[:depth]); t0 = time.perf_counter()
        for i in range(n_tg):
            llm.eval([toks[i]])
        dt = time.perf_counter() - t0
        if r: tgd.append(n_tg / dt)
print(json.dumps({"pp": pp, "tg": tg, "tgd": tgd}))
"""


def ensure_model(cache: Path, preset: str, layers: int, qtype: str) -> Path:
    path = cache / f"{preset}-{layers}L-{qtype}.gguf"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"writing {path} ...", file=sys.stderr)
        tmp = path.with_suffix(".tmp")
        synth(preset, tmp, qtype, layers=layers)
        tmp.rename(path)
    return path


def probe(threads: int) -> float:
    """The machine's read bandwidth now (GB/s), leaving the pool at `threads` threads."""
    bw = measure_read_bandwidth()
    set_threads(threads)
    return bw


def bench_numoe(path: Path, threads: int, n_pp: int, n_tg: int, reps: int, depth: int) -> dict:
    set_threads(threads)
    rss0 = rss_bytes()
    g = open_gguf(path)
    cfg, model = load(g, Placement.parse("cpu"))
    pp = [n_pp / t for t in run_test(model, Test(n_pp, 0), cfg.n_vocab, n_pp, reps)]
    # each tg run between two bandwidth probes: the machine's bandwidth drifts within minutes
    # (14-24 GB/s on a 2-core VM), so each run is set against the probes beside it
    run_test(model, Test(0, n_tg), cfg.n_vocab, n_pp, 0)  # warm-up run
    tg, bw = [], [probe(threads)]
    for _ in range(reps):
        tg += [n_tg / t for t in run_test(model, Test(0, n_tg), cfg.n_vocab, n_pp, 1, False)]
        bw.append(probe(threads))
    tgd = (
        [n_tg / t for t in run_test(model, Test(0, n_tg, depth), cfg.n_vocab, n_pp, reps)]
        if depth
        else []
    )
    bpt = ModelInfo.of(g, cfg).bytes_per_token
    # every weight has been read by now (prefill touches all experts): RSS growth over the
    # run vs the file size shows that no float copy of the weights was made
    rss = rss_bytes() - rss0
    where = placement(g)  # policy off: the weights' pages in this process, per node
    del model, g
    gc.collect()
    return {
        "pp": pp,
        "tg": tg,
        "tgd": tgd,
        "bw": bw,
        "bytes_per_token": bpt,
        "file_bytes": path.stat().st_size,
        "rss": rss,
        "placement": where,
    }


def bench_peer(peer: str, path: Path, threads: int, n_pp: int, n_tg: int, reps: int, depth: int):
    args = [peer, "-c", PEER_SCRIPT, str(path), *map(str, (threads, n_pp, n_tg, reps, depth))]
    p = subprocess.run(args, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        print(f"llama.cpp failed on {path.name}: {tail}", file=sys.stderr)
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-m", "--model", action="append", help="GGUF file (repeatable)")
    ap.add_argument("-t", "--threads", type=int, default=None, help="default: physical cores")
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument(
        "-d", "--depth", type=int, default=0,
        help="also decode with this many tokens already in the cache (prefilled, not timed)",
    )  # fmt: skip
    ap.add_argument("--peer-python", default=None, help="python of a venv with llama-cpp-python")
    ap.add_argument("--cache", default=os.environ.get("NUMOE_BENCH_CACHE"))
    ap.add_argument("--clean", action="store_true", help="delete the synthetic models at the end")
    a = ap.parse_args()

    cache = Path(a.cache or Path.home() / ".cache" / "numoe" / "bench")
    paths = (
        [Path(m) for m in a.model] if a.model else [ensure_model(cache, *m) for m in DEFAULT_MODELS]
    )
    # The read bandwidth of a shared machine drifts (14-24 GB/s within minutes on a 2-core
    # VM): each tg run's % uses the larger of the probes just before and just after it (every
    # allowed physical core, each node on its memory); the table gives the median over runs.
    probes = []
    print("| model | size GB | test | numoe t/s | llama.cpp t/s | ratio | numoe GB/s | % of bw |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for path in paths:
        threads = set_threads(a.threads)
        ours = bench_numoe(path, threads, a.n_prompt, a.n_gen, a.reps, a.depth)
        bw = ours["bw"]
        probes += bw
        # % of bw per tg run, against the larger probe beside it
        pct = [100 * ours["bytes_per_token"] * t / 1e9 / max(bw[i], bw[i + 1])
               for i, t in enumerate(ours["tg"])]  # fmt: skip
        peer = (
            bench_peer(a.peer_python, path, threads, a.n_prompt, a.n_gen, a.reps, a.depth)
            if a.peer_python
            else None
        )
        rows = [("pp", Test(a.n_prompt, 0).name), ("tg", Test(0, a.n_gen).name)]
        if a.depth:  # GB/s and % left out: the cache's reads come on top of the weights'
            rows.append(("tgd", Test(0, a.n_gen, a.depth).name))
        for test, name in rows:
            o = statistics.median(ours[test])
            p = statistics.median(peer[test]) if peer else None
            gbps = ours["bytes_per_token"] * o / 1e9 if test == "tg" else None
            print(
                f"| {path.name} | {ours['file_bytes'] / 1e9:.2f} | {name} | {o:.2f} | "
                + (f"{p:.2f} | {o / p:.2f}x |" if p else "- | - |")
                + (f" {gbps:.1f} | {statistics.median(pct):.0f} % |" if gbps else " - | - |")
            )
        print(
            f"|  | bytes/token {ours['bytes_per_token'] / 1e6:.1f} MB; numoe RSS growth "
            f"{ours['rss'] / 1e9:.2f} GB = {ours['rss'] / ours['file_bytes']:.2f}x the file; "
            f"weights: {format_placement(ours['placement'])}; tg runs at "
            f"{', '.join(f'{p:.0f}' for p in pct)} % of the read bandwidth probed beside each "
            f"({', '.join(f'{b:.1f}' for b in bw)} GB/s) |  |  |  |  |  |  |"
        )
    print(
        f"\nread bandwidth probes (numoe's, all physical cores): {min(probes):.1f}-"
        f"{max(probes):.1f} GB/s; % of bw: the median over tg runs of each against the larger "
        "probe beside it"
    )
    if a.clean and not a.model:
        for path in paths:
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
