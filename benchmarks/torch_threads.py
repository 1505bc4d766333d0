"""Should PyTorch's intra-op threads run beside numoe's pool? Measures decode (tg) and
prefill (pp) tokens/s with numoe's pool at N threads and torch's intra-op threads at each of
1..N, on the same model in one process (medians over repetitions, in alternating order so
drift hits every setting alike).

    python benchmarks/torch_threads.py -m model.gguf [-t N] [-p 512] [-n 64] [-r 3]

numoe's pool threads are pinned and spin briefly after each op; torch's OpenMP threads also
spin after each parallel region. When both pools have N threads on N cores, the two spin
on each other's cores between the many small ops of a decode step. The policy numoe uses
(Runtime.torch_threads_decode / torch_threads_prefill, numoe.runtime.settings) comes from this
benchmark: see docs/architecture.md. Each setting is a Runtime with those two fields changed,
which the model applies at its next forward. The decode steps take numoe's default path
(the C++ decode blocks where the model can: torch then runs only the embedding and head).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys

import torch

from numoe.bench import isa_line
from numoe.engine import Session
from numoe.gguf import open_gguf
from numoe.models import load
from numoe.runtime.settings import Runtime
from numoe.sampling import Sampler, SamplingParams


def run_once(model, n_vocab: int, n_pp: int, n_tg: int) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(0)
    toks = torch.randint(100, n_vocab, (n_pp,), generator=gen).tolist()
    s = Session(model, n_ctx=n_pp + 8, chunk=n_pp)
    s.prefill(toks)
    pp = s.timings.prompt_tps
    s = Session(model, n_ctx=n_tg + 8)
    for _ in s.generate(toks[:1], n_tg, Sampler(SamplingParams(temperature=0)), ignore_eos=True):
        pass
    return pp, s.timings.gen_tps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-m", "--model", required=True, help="GGUF file")
    ap.add_argument("-t", "--threads", type=int, default=None, help="pool threads (default: all)")
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=64)
    ap.add_argument("-r", "--reps", type=int, default=3)
    a = ap.parse_args()

    rt = Runtime.create(threads=a.threads)
    n = rt.threads
    cfg, model = load(open_gguf(a.model), runtime=rt)
    settings = sorted({1, max(1, n // 2), n})
    res: dict[tuple[int, int], list[float]] = {(d, p): [] for d in settings for p in (0, 1)}

    def torch_threads(tt: int) -> Runtime:
        return dataclasses.replace(rt, torch_threads_decode=tt, torch_threads_prefill=tt)

    model.runtime = torch_threads(n)
    run_once(model, cfg.n_vocab, min(a.n_prompt, 64), 8)  # warm-up
    steps0 = model.cpp_steps
    for r in range(a.reps):
        for tt in settings if r % 2 == 0 else reversed(settings):
            model.runtime = torch_threads(tt)
            pp, tg = run_once(model, cfg.n_vocab, a.n_prompt, a.n_gen)
            res[(tt, 0)].append(pp)
            res[(tt, 1)].append(tg)
            print(f"rep {r} torch threads {tt}: pp {pp:.2f} tg {tg:.2f}", file=sys.stderr)
    cpp = model.cpp_steps - steps0
    print(
        f"\n{a.model}: numoe pool {n} threads ({rt}); torch intra-op threads varied; "
        f"{cpp} of {a.reps * len(settings) * a.n_gen} decode steps through the C++ blocks"
    )
    print(isa_line() + "\n")
    print(f"| torch threads | pp{a.n_prompt} t/s | tg{a.n_gen} t/s |")
    print("|---:|---:|---:|")
    for tt in settings:
        pp, tg = statistics.median(res[(tt, 0)]), statistics.median(res[(tt, 1)])
        print(f"| {tt} | {pp:.2f} | {tg:.2f} |")


if __name__ == "__main__":
    main()
