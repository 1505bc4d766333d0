"""Single-thread vec_dot speed per block format and ISA: GB/s of weight bytes.

    python benchmarks/bench_vec_dot.py [--rows 4096] [--cols 4096] [--reps 5]

W is random raw blocks (finite scales) of shape [rows, cols]; one call of vec_dot_rows
runs every row against one quantized activation. Best of --reps.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from gguf import GGMLQuantizationType as T

from numoe import _cpu

TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_K, T.Q5_K, T.Q6_K]


def random_weights(qtype, rows, cols, rng):
    info = _cpu.quant_type_info(int(qtype))
    nb = rows * cols // info["block_size"]
    if qtype in (T.F32, T.F16, T.BF16):
        x = rng.standard_normal(rows * cols).astype(np.float32)
        if qtype == T.F32:
            return x.view(np.uint8)
        if qtype == T.F16:
            return x.astype(np.float16).view(np.uint8)
        return (x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    raw = rng.integers(0, 256, (nb, info["type_size"]), dtype=np.uint8)
    d = np.full(nb, 1e-3, np.float16).view(np.uint8).reshape(-1, 2)
    offs = {T.Q8_0: (0,), T.Q4_0: (0,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}[qtype]
    for o in offs:
        raw[:, o : o + 2] = d
    return raw.ravel()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(a.cols).astype(np.float32)
    isas = _cpu.isa_available()
    print(f"{a.rows} x {a.cols}, single thread, GB/s of weight bytes (best of {a.reps})")
    print(f"{'type':6} {'MB':>7} " + " ".join(f"{i:>8}" for i in isas))
    prev = _cpu.isa()
    for t in TYPES:
        w = random_weights(t, a.rows, a.cols, rng)
        row = []
        for isa in isas:
            _cpu.set_isa(isa)
            act = _cpu.quantize_activation(int(t), x)
            best = float("inf")
            for _ in range(a.reps):
                t0 = time.perf_counter()
                _cpu.vec_dot_rows(int(t), w, act, a.cols, a.rows)
                best = min(best, time.perf_counter() - t0)
            row.append(w.nbytes / best / 1e9)
        print(f"{t.name:6} {w.nbytes / 1e6:7.1f} " + " ".join(f"{g:8.2f}" for g in row))
    _cpu.set_isa(prev)


if __name__ == "__main__":
    main()
