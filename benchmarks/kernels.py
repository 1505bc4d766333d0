"""Linear / MoE op speed at T = 1 (decode): GB/s of weight bytes read, beside a STREAM-style
read bandwidth measured in the same run, for 1..all threads of numoe's pool; with --tokens,
also prefill (T > 1) tables.

    python benchmarks/kernels.py [--threads 1 2] [--reps 7] [--mib 512] [--types Q4_K Q8_0]
                                 [--tokens 1 64 512] [--no-moe] [--no-read]

Shapes: a 4096 x 4096 matrix, and expert-shaped 768 x 2048 matrices (Qwen3-30B-A3B gate/up),
one Linear op each, called one after another. Each case cycles through enough copies of
its weights (--mib in total) that they come from DRAM, not L3. The MoE row is the fused
MoE op at T = 1 on a Qwen3-30B-A3B-shaped layer (top-8, D 2048, F 768; 32 experts or enough
to be twice the largest cache, each
call routed to 8 not used by the previous calls; gate/up in the type, down Q6_K for the
K-types as in Q4_K_M, else the same type), bytes = the 8 experts' gate+up+down. Read bandwidth: every pool thread sums its share of a 1 GiB array
(numoe._cpu.read_bandwidth_bytes), and numpy's sum over the same array for reference.
Figures are medians of --reps passes.

Prefill (--tokens T, T > 1): the same shapes and MoE layer called with T tokens (one copy of
the weights: T tokens make it compute-bound, and a copy's weights are re-read from cache T
times per call anyway). Each cell is tokens/s and, in brackets, the effective weight
bandwidth weight bytes x T / s (what T = 1 would need to match it). The MoE op routes the T
tokens over all 32 experts (top-8, uniform at random). T = 1 in --tokens prints the decode
table above.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from gguf import GGMLQuantizationType as Q

from numoe import _cpu
from numoe.kernels import quant_type
from numoe.runtime.machine import largest_cache

# every weight type the kernels read (csrc/quant/registry.cpp)
TYPES = [Q(t).name for t in _cpu.weight_types()]
K_TYPES = {Q.Q4_K, Q.Q5_K, Q.Q6_K}
HALF_FIELDS = {  # the fp16 scale fields of a block, set to finite values in random blocks
    Q.Q4_K: (0, 2),
    Q.Q5_K: (0, 2),
    Q.Q6_K: (208,),
    Q.Q8_0: (0,),
    Q.Q4_0: (0,),
    Q.Q2_K: (80, 82),
    Q.Q3_K: (108,),
    Q.IQ4_XS: (0,),
    Q.IQ2_XXS: (0,),
    Q.IQ2_XS: (0,),
    Q.IQ2_S: (0,),
    Q.Q4_1: (0, 2),
    Q.Q5_0: (0,),
    Q.Q5_1: (0, 2),
    Q.IQ4_NL: (0,),
    Q.IQ3_XXS: (0,),
    Q.IQ3_S: (0,),
    Q.IQ1_S: (0,),
}


def random_bytes(qtype: Q, n_elems: int, rng) -> np.ndarray:
    """Random raw blocks with finite, small scales (values do not matter for speed)."""
    info = _cpu.quant_type_info(int(qtype))
    nb = n_elems // info["block_size"]
    if qtype in (Q.F32, Q.F16, Q.BF16):
        x = rng.standard_normal(n_elems, dtype=np.float32)
        if qtype == Q.F32:
            return x.view(np.uint8)
        if qtype == Q.F16:
            return x.astype(np.float16).view(np.uint8)
        return (x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    raw = rng.integers(0, 256, (nb, info["type_size"]), dtype=np.uint8)
    if qtype == Q.IQ1_M:  # d = 2^-7 in the top nibbles of its 4 scale words (0x2000)
        raw[:, 49:56:2] = (raw[:, 49:56:2] & 0x0F) | np.array([0, 0, 0, 0x20], np.uint8)
    for off in HALF_FIELDS.get(qtype, ()):
        raw[:, off : off + 2] = np.full(nb, 0.01, np.float16).view(np.uint8).reshape(-1, 2)
    return raw.reshape(-1)


def median_time(fn, reps: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def linear_case(qtype: Q, rows: int, cols: int, total_bytes: int, rng):
    """(fn running every copy once, weight bytes per pass)."""
    one = random_bytes(qtype, rows * cols, rng)
    n = max(1, total_bytes // one.nbytes)
    ops = [_cpu.Linear(one.copy(), int(qtype), rows, cols) for _ in range(n)]
    x = rng.standard_normal((1, cols), dtype=np.float32)

    def run():
        for op in ops:
            op.forward(x)

    return run, n * one.nbytes


def moe_case(qtype: Q, rng, k=8, D=2048, Fd=768):
    """One MoE layer of E experts; successive calls route to disjoint sets of k experts, so
    a pass reads every expert once. E: at least 32, and enough that the E * 3 matrices are
    twice the largest CPU cache (else a pass comes from L3: 260 MiB on some Xeons)."""
    down_t = Q.Q6_K if qtype in K_TYPES else qtype
    per_expert = 2 * quant_type(qtype).row_bytes(Fd * D) + quant_type(down_t).row_bytes(D * Fd)
    E = max(32, -(-2 * largest_cache() // per_expert))
    E = -(-E // k) * k  # whole groups of k
    g = random_bytes(qtype, E * Fd * D, rng)
    u = random_bytes(qtype, E * Fd * D, rng)
    d = random_bytes(down_t, E * D * Fd, rng)
    op = _cpu.MoE([g], [u], [d], int(qtype), int(qtype), int(down_t), E, Fd, D)
    x = rng.standard_normal((1, D), dtype=np.float32)
    perm = rng.permutation(E).astype(np.int64)
    ids = [perm[i : i + k][None].copy() for i in range(0, E, k)]
    w = np.full((1, k), 1.0 / k, np.float32)

    def run():
        for i in ids:
            op.forward(x, i, w)

    return run, len(ids) * k * op.expert_nbytes


def linear_prefill_case(qtype: Q, rows: int, cols: int, T: int, rng):
    """(fn running one call with T tokens, weight bytes)."""
    one = random_bytes(qtype, rows * cols, rng)
    op = _cpu.Linear(one, int(qtype), rows, cols)
    x = rng.standard_normal((T, cols), dtype=np.float32)
    return (lambda: op.forward(x)), one.nbytes


def moe_prefill_case(qtype: Q, T: int, rng, E=32, k=8, D=2048, Fd=768):
    """(fn running one MoE call with T tokens routed over E experts, weight bytes one token
    reads: its k experts')."""
    down_t = Q.Q6_K if qtype in K_TYPES else qtype
    g = random_bytes(qtype, E * Fd * D, rng)
    u = random_bytes(qtype, E * Fd * D, rng)
    d = random_bytes(down_t, E * D * Fd, rng)
    op = _cpu.MoE([g], [u], [d], int(qtype), int(qtype), int(down_t), E, Fd, D)
    x = rng.standard_normal((T, D), dtype=np.float32)
    ids = np.stack([rng.permutation(E)[:k] for _ in range(T)]).astype(np.int64)
    w = np.full((T, k), 1.0 / k, np.float32)
    return (lambda: op.forward(x, ids, w)), k * op.expert_nbytes


def prefill_table(args, plans: dict, T: int, rng) -> None:
    cols = [f"{n} thr" for n in args.threads]
    print(f"\nprefill, T = {T}: tokens/s (weight GB/s x T)")
    print(f"{'case':<28}" + "".join(f"{c:>20}" for c in cols))
    for name in args.types:
        qtype = Q[name]
        cases = [
            (f"{name} 4096x4096", linear_prefill_case(qtype, 4096, 4096, T, rng)),
            (f"{name} 768x2048 (expert)", linear_prefill_case(qtype, 768, 2048, T, rng)),
        ]
        if not args.no_moe:
            down = "Q6_K" if qtype in K_TYPES else name
            cases.append((f"{name}/{down} MoE 8 of 32", moe_prefill_case(qtype, T, rng)))
        for label, (fn, nbytes) in cases:
            cells = []
            for n in args.threads:
                _cpu.set_threads(plans[n])
                t = median_time(fn, args.reps)
                cells.append(f"{T / t:>9.0f} ({nbytes * T / t / 1e9:>6.1f})")
            print(f"{label:<28}" + "".join(f"{c:>20}" for c in cells), flush=True)
        del cases


def read_bandwidth(threads: list[int], plans: dict, reps: int) -> None:
    big = np.full(1 << 30, 1, np.uint8)  # written: resident
    row = []
    for n in threads:
        _cpu.set_threads(plans[n])
        t = median_time(lambda: _cpu.read_bandwidth_bytes(big), reps)
        row.append(big.nbytes / t / 1e9)
    print(f"{'read bandwidth (pool)':<28}" + "".join(f"{v:>10.1f}" for v in row))
    t = median_time(lambda: big.view(np.uint64).sum(), reps)
    print(f"{'read bandwidth (numpy, 1)':<28}{big.nbytes / t / 1e9:>10.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cpus = sorted(_cpu.sched_getaffinity())
    ap.add_argument("--threads", type=int, nargs="+", default=list(range(1, len(cpus) + 1)))
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--mib", type=int, default=512, help="weight bytes cycled per case")
    ap.add_argument("--types", nargs="+", default=TYPES)
    ap.add_argument("--no-moe", action="store_true")
    ap.add_argument("--no-read", action="store_true", help="skip the read-bandwidth rows")
    ap.add_argument(
        "--tokens",
        type=int,
        nargs="+",
        default=[1],
        help="T values: 1 = the decode table, T > 1 = a prefill table each",
    )
    args = ap.parse_args()
    from numoe.runtime.numa import plan_threads
    from numoe.runtime.topology import Topology

    topo = Topology.read()
    rng = np.random.default_rng(0)
    total = args.mib << 20
    from numoe.bench import isa_line

    print(f"numoe kernels; CPUs {cpus}; medians of {args.reps}; {isa_line()}")
    plans = {n: plan_threads(topo, n).groups for n in args.threads}
    if 1 in args.tokens:
        decode_table(args, plans, total, rng)
    for T in args.tokens:
        if T > 1:
            prefill_table(args, plans, T, rng)


def decode_table(args, plans: dict, total: int, rng) -> None:
    cols = [f"{n} thr" for n in args.threads]
    print("\ndecode, T = 1")
    print(f"{'case':<28}" + "".join(f"{c:>10}" for c in cols) + "   (GB/s)")
    if not args.no_read:
        read_bandwidth(args.threads, plans, args.reps)

    square = {}  # type -> GB/s per thread count on the 4096x4096 matrix
    for name in args.types:
        qtype = Q[name]
        cases = [
            (f"{name} 4096x4096", linear_case(qtype, 4096, 4096, total, rng)),
            (f"{name} 768x2048 (expert)", linear_case(qtype, 768, 2048, total, rng)),
        ]
        if not args.no_moe:
            down = "Q6_K" if qtype in K_TYPES else name
            cases.append((f"{name}/{down} MoE top-8 (>2x LLC)", moe_case(qtype, rng)))
        for label, (fn, nbytes) in cases:
            row = []
            for n in args.threads:
                _cpu.set_threads(plans[n])
                row.append(nbytes / median_time(fn, args.reps) / 1e9)
            print(f"{label:<28}" + "".join(f"{v:>10.1f}" for v in row), flush=True)
            square.setdefault(name, row)
        del cases
    if "Q4_K" in square:  # the target: every type >= 80 % of Q4_K's GB/s
        print("\n% of Q4_K's GB/s, 4096x4096 (target >= 80 %)")
        print(f"{'type':<28}" + "".join(f"{c:>10}" for c in cols))
        for name, row in square.items():
            cells = [100 * v / q for v, q in zip(row, square["Q4_K"], strict=True)]
            flag = "" if min(cells) >= 80 else "   < 80 %"
            print(f"{name:<28}" + "".join(f"{v:>9.0f}%" for v in cells) + flag)


if __name__ == "__main__":
    main()
