"""The batched step a server's scheduler runs (DecoderModel.forward_batch): decode step time
and aggregate tokens/s for N streams, each its own cache at a position of about --depth, and
prompt-chunk (prefill) tokens/s through forward_batch against forward()'s torch path.

    python benchmarks/batch_decode.py -m /tmp/q3-12L.gguf            # all allowed cores
    python benchmarks/batch_decode.py -m FILE -t 2 -n 1,2,4,8 -r 4 -s 3 --chunk 256
    python benchmarks/batch_decode.py -m FILE -ctk f32 -ctv f32       # float32 KV caches

A decode step of N streams: N tokens (random ids), one per cache, logits of all N (as a
server samples every stream each step); positions advance by one per step. "tg (forward)" is
the single-stream figure through forward() (the C++ one-token path `numoe bench` measures),
the baseline of the "x 1 stream" column. The configurations take turns in rounds (-r, after a
warm-up round), -s steps each, rotating who goes first, so a shared machine's drift falls on
all alike; a figure is the median step over the rounds. Prefill: one --chunk-token prompt chunk
at each position of --chunk-at (into an empty cache, or after that many cached tokens), logits
of its last token, best of r/2 runs each way (after a warm-up).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from numoe.gguf import open_gguf
from numoe.models import load
from numoe.runtime.settings import Runtime

CACHE_TYPES: tuple[str, str] = ("f16", "f16")  # -ctk, -ctv


def new_cache(model, n_ctx):
    return model.new_cache(n_ctx, *CACHE_TYPES)


def clone_cache(model, cache, n_ctx):
    """A new cache holding what `cache` holds (the streams start from one prefill)."""
    c = new_cache(model, n_ctx)
    n = min(n_ctx, cache.capacity)
    c.reserve(n)
    for name in c._names:
        getattr(c, name)[:, :n] = getattr(cache, name)[:, :n]
    return c


def decode_steps(model, caches, pos, steps, rng, single=False) -> list[float]:
    """Seconds of each of `steps` steps of len(caches) tokens at positions pos, pos + 1, ..."""
    N, V = len(caches), model.cfg.n_vocab
    times = []
    for i in range(steps):
        toks = rng.integers(0, V, N).tolist()
        t0 = time.perf_counter()
        if single:
            model.forward(torch.tensor(toks), caches[0], pos + i, 1)
        else:
            model.forward_batch(toks, caches, [pos + i] * N, list(range(N)))
        times.append(time.perf_counter() - t0)
    return times


def prefill(model, start, chunk, runs, rng, batch: bool) -> float:
    """Best tokens/s of a chunk-token prompt chunk at positions start.. (the cache holding
    start tokens before it; first run a warm-up)."""
    base = new_cache(model, start + chunk)
    if start:
        prompt = rng.integers(0, model.cfg.n_vocab, start).tolist()
        model.forward(torch.tensor(prompt), base, 0, n_logits=0)
    best = 0.0
    for i in range(runs + 1):
        toks = rng.integers(0, model.cfg.n_vocab, chunk).tolist()
        cache = clone_cache(model, base, start + chunk)
        t0 = time.perf_counter()
        if batch:
            pos = list(range(start, start + chunk))
            model.forward_batch(toks, [cache] * chunk, pos, [chunk - 1])
        else:
            model.forward(torch.tensor(toks), cache, start, n_logits=1, path="torch")
        dt = time.perf_counter() - t0
        if i > 0:
            best = max(best, chunk / dt)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("-n", "--streams", default="1,2,4,8")
    ap.add_argument("-r", "--rounds", type=int, default=4, help="timed rounds (+1 warm-up)")
    ap.add_argument("-s", "--steps", type=int, default=3, help="decode steps per turn")
    ap.add_argument("--depth", type=int, default=100, help="cached tokens per stream")
    ap.add_argument("--chunk", type=int, default=256, help="prefill chunk tokens (0: skip)")
    ap.add_argument("--chunk-at", default="0,2048", help="positions of the prefill chunks")
    ap.add_argument("-ctk", "--cache-type-k", default="f16", choices=("f32", "f16"))
    ap.add_argument("-ctv", "--cache-type-v", default="f16", choices=("f32", "f16"))
    args = ap.parse_args()
    global CACHE_TYPES
    CACHE_TYPES = (args.cache_type_k, args.cache_type_v)
    streams = [int(s) for s in args.streams.split(",")]
    rng = np.random.default_rng(0)

    runtime = Runtime.create(threads=args.threads)
    _, model = load(open_gguf(args.model), runtime)
    n_ctx = args.depth + (args.rounds + 1) * args.steps + 1
    base = new_cache(model, max(n_ctx, args.chunk + 1))
    prompt = rng.integers(0, model.cfg.n_vocab, args.depth).tolist()
    model.forward(torch.tensor(prompt), base, 0, n_logits=0)
    print(
        f"{args.model}: {runtime}; streams at position ~{args.depth}; KV cache "
        f"-ctk {CACHE_TYPES[0]} -ctv {CACHE_TYPES[1]}"
    )

    # Rounds: every configuration takes a turn of --steps steps per round (the first round's
    # turns are warm-ups), so a shared machine's drift falls on all of them alike; a figure is
    # the median step time over the timed rounds' steps.
    configs = [("tg", 1)] + [("batch", n) for n in streams]
    caches = {c: [clone_cache(model, base, n_ctx) for _ in range(c[1])] for c in configs}
    times: dict = {c: [] for c in configs}
    for r in range(args.rounds + 1):
        for c in configs[r % len(configs) :] + configs[: r % len(configs)]:
            pos = args.depth + r * args.steps
            t = decode_steps(model, caches[c], pos, args.steps, rng, single=c[0] == "tg")
            if r > 0:
                times[c] += t
    tg = 1.0 / statistics.median(times[("tg", 1)])
    print(f"\ntg (forward, 1 token): {tg:.2f} tok/s\n")
    print("| N streams | step ms | aggregate tok/s | x 1 stream (tg) |")
    print("|---:|---:|---:|---:|")
    for c in configs[1:]:
        dt, N = statistics.median(times[c]), c[1]
        print(f"| {N} | {dt * 1e3:.1f} | {N / dt:.2f} | {N / dt / tg:.2f} |")

    if args.chunk:
        runs = max(1, args.rounds // 2)
        print(
            f"\n| prefill chunk of {args.chunk} tokens at position | forward_batch (C++ blocks) "
            "tok/s | forward (torch path) tok/s |"
        )
        print("|---:|---:|---:|")
        for start in (int(p) for p in args.chunk_at.split(",")):
            pb = prefill(model, start, args.chunk, runs, rng, batch=True)
            pt = prefill(model, start, args.chunk, runs, rng, batch=False)
            print(f"| {start} | {pb:.1f} | {pt:.1f} |")


if __name__ == "__main__":
    main()
