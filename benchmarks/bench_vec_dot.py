"""vec_dot speed per block format and ISA: GB/s of weight bytes, beside the read ceiling.

    python benchmarks/bench_vec_dot.py [--rows 4096] [--cols 4096] [--reps 5] [--threads 1 2]
                                       [--read-mib 1024 | --read-mib 0]

W is random raw blocks (finite scales) of shape [rows, cols]; one call of vec_dot_rows
runs every row against one quantized activation (with --threads T, T Python threads each
run vec_dot_rows on a contiguous share of the rows; the binding releases the GIL). Best of
--reps. 4096 x 4096 weights (9-34 MB) may sit in L3; use e.g. --rows 32768 for DRAM.

The read ceiling: a plain AVX2 streaming sum over --read-mib MiB (compiled with the system
C compiler at start-up, called through ctypes), split over 1..max(--threads) threads.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import tempfile
import threading
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


READ_SRC = r"""
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
__attribute__((target("avx2"))) uint64_t read_sum(const uint8_t *p, size_t n) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i + 128 <= n; i += 128) {
    a0 = _mm256_add_epi64(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
    a1 = _mm256_add_epi64(a1, _mm256_loadu_si256((const __m256i *)(p + i + 32)));
    a2 = _mm256_add_epi64(a2, _mm256_loadu_si256((const __m256i *)(p + i + 64)));
    a3 = _mm256_add_epi64(a3, _mm256_loadu_si256((const __m256i *)(p + i + 96)));
  }
  a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
  uint64_t o[4];
  _mm256_storeu_si256((__m256i *)o, a0);
  return o[0] + o[1] + o[2] + o[3];
}
"""


def read_fn():
    """The AVX2 streaming-read loop as a ctypes function, or None without a C compiler."""
    d = tempfile.mkdtemp(prefix="numoe_bench_")
    src, lib = os.path.join(d, "read.c"), os.path.join(d, "read.so")
    with open(src, "w") as f:
        f.write(READ_SRC)
    cc = os.environ.get("CC", "cc")
    try:
        subprocess.run([cc, "-O2", "-shared", "-fPIC", src, "-o", lib], check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"read ceiling skipped: {e}")
        return None
    fn = ctypes.CDLL(lib).read_sum
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t], ctypes.c_uint64
    return fn


def run_threads(n_threads, work):
    """work(t) in n_threads threads; seconds for all of them."""
    ts = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.perf_counter() - t0


def read_ceiling(mib, threads, reps):
    fn = read_fn()
    if fn is None:
        return
    buf = np.ones(mib << 20, np.uint8)
    base = buf.ctypes.data
    for n_threads in threads:
        share = (buf.nbytes // n_threads) & ~127
        best = min(
            run_threads(n_threads, lambda t, share=share: fn(base + t * share, share))
            for _ in range(reps)
        )
        print(f"read ceiling, {n_threads} thread(s): {share * n_threads / best / 1e9:.2f} GB/s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--read-mib", type=int, default=1024, help="0: skip the read ceiling")
    a = ap.parse_args()
    if a.read_mib > 0:
        read_ceiling(a.read_mib, sorted({1, *a.threads}), a.reps)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(a.cols).astype(np.float32)
    isas = _cpu.isa_available()
    cols = [(isa, nt) for nt in a.threads for isa in isas]
    from numoe.bench import cpu_simd_flags

    print(f"CPU flags: {' '.join(cpu_simd_flags())}; numoe's ISA at start: {_cpu.isa()}")
    print(f"{a.rows} x {a.cols}, GB/s of weight bytes (best of {a.reps}), ISA/threads")
    print(f"{'type':6} {'MB':>7} " + " ".join(f"{f'{i}/{nt}':>9}" for i, nt in cols))
    prev = _cpu.isa()
    for t in TYPES:
        w = random_weights(t, a.rows, a.cols, rng)
        row_bytes = w.nbytes // a.rows
        row = []
        for isa, nt in cols:
            _cpu.set_isa(isa)
            act = _cpu.quantize_activation(int(t), x)
            bounds = [a.rows * k // nt for k in range(nt + 1)]

            def work(k, t=t, w=w, act=act, bounds=bounds, row_bytes=row_bytes):
                lo, hi = bounds[k], bounds[k + 1]
                _cpu.vec_dot_rows(int(t), w[lo * row_bytes : hi * row_bytes], act, a.cols, hi - lo)

            best = min(run_threads(nt, work) for _ in range(a.reps))
            row.append(w.nbytes / best / 1e9)
        print(f"{t.name:6} {w.nbytes / 1e6:7.1f} " + " ".join(f"{g:9.2f}" for g in row))
    _cpu.set_isa(prev)


if __name__ == "__main__":
    main()
