"""numoe's fused MoE op beside KTransformers' CPU MoE op (kt-kernel, llamafile/GGUF backend) on
the same quantized experts, routing, activations and threads: time per call, expert weight
GB/s, speed ratio, and how far the outputs are apart.

    python benchmarks/moe_peer.py                                          # numoe alone
    python benchmarks/moe_peer.py --peer-python /work/peers-kt/bin/python  # + kt-kernel

Experts: Qwen3-30B-A3B-shaped (hidden 2048, moe_intermediate 768, 128 experts, top-8),
gate/up Q4_K and down Q6_K as in Q4_K_M, quantized by numoe from Gaussian weights and written
once as raw GGUF blocks to $NUMOE_BENCH_CACHE/moe_peer (default ~/.cache/numoe/bench; 391 MB;
--clean deletes it). Each engine makes --layers private copies of that layer in anonymous
memory on 4 KiB pages (8 x 391 MB, far beyond the 260 MB L3 here) and call i runs on copy
i mod --layers, so weights come from DRAM. Routing: per token 8 distinct random experts of 128
and random positive weights summing to 1, from a fixed seed; the same ids, weights and float32
activations go to both engines.

Time: every call is timed alone, one warm-up call per T first; --rounds alternate numoe and
kt-kernel (each kt configuration in a fresh interpreter) and their calls are pooled, so load
from other processes falls on both. The table gives median (best) ms per call; speedup = the
best kt configuration's median / numoe's median (and best / best). kt-kernel runs with --threads
compute threads and with 1: besides its compute threads it keeps a task-queue thread that spins
without pause and Python spins in CPUInfer.sync(), so on a machine with few cores fewer compute
threads can be faster. GB/s: bytes of the distinct experts a call touches (at T = 1: 8 experts'
gate+up+down) over the median time. Agreement: max |numoe - kt| / max |kt| on the first call's
outputs per T, and each engine's relative Frobenius error against float64 on the dequantized
weights (tokens 0..3 of that call).

The peer runs in its own interpreter (this file with --peer-worker, under --peer-python), a
benchmark-only install and never a numoe dependency:
    python3.11 -m venv /work/peers-kt
    /work/peers-kt/bin/pip install torch numpy && /work/peers-kt/bin/pip install --no-deps kt-kernel
kt-kernel's package __init__ imports safetensors and gguf, which --no-deps leaves out; the
worker then loads the extension through kt-kernel's own CPU-variant loader
(kt_kernel/_cpu_detect.py). API used (kt_kernel_ext): WorkerPoolConfig (one subpool of n
threads) -> CPUInfer(config), as KTMoEWrapper does; moe.MOEConfig(expert_num,
num_experts_per_tok, hidden_size, intermediate_size) with gate/up/down_proj pointers to [E, F, D]
/ [E, D, F] GGUF blocks, gate/up/down_type and hidden_type as ggml type ids (hidden FP32),
m_block 32, group_min_len 10 (below it kt runs token by token), max_len = group_max_len = max T
(LlamafileMoEWrapper's values), pool = cpu.backend_; moe.MOE(config);
submit(load_weights_task()) + sync() (copies the weights into kt's buffers); per call
submit(forward_task(&qlen int32, k, ids int64 [T, k], weights float32 [T, k], x, out, False))
+ sync().
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

E, K, D, F = 128, 8, 2048, 768  # Qwen3-30B-A3B experts
Q4_K, Q6_K, F32 = 12, 14, 0  # ggml type ids
GATE_TYPE, UP_TYPE, DOWN_TYPE = Q4_K, Q4_K, Q6_K
ROW_BYTES = {Q4_K: 144 * D // 256, Q6_K: 210 * F // 256}  # gate/up rows of D, down rows of F
EXPERT_BYTES = 2 * F * ROW_BYTES[Q4_K] + D * ROW_BYTES[Q6_K]
N_REF = 4  # tokens checked against the float64 reference
TOKENS = [1, 8, 64, 512]
CALLS = {1: 6, 8: 3, 64: 1, 512: 0.5}  # timed calls per T and round, in multiples of --layers


def weights_dir(cache: Path) -> Path:
    return cache / "moe_peer" / f"E{E}-D{D}-F{F}-Q4_K-Q4_K-Q6_K"


def ensure_weights(cache: Path, threads: int) -> Path:
    """gate.npy/up.npy [E*F, row bytes] (Q4_K), down.npy [E*D, row bytes] (Q6_K); written once."""
    from numoe import _cpu

    out = weights_dir(cache)
    if (out / "down.npy").exists():
        return out
    tmp = out.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    print(f"quantizing {E} experts to {out} (once) ...", file=sys.stderr, flush=True)
    rng = np.random.default_rng(1234)
    chunk = 16  # experts per quantize call
    mats = (("gate", GATE_TYPE, F, D), ("up", UP_TYPE, F, D), ("down", DOWN_TYPE, D, F))
    for name, qtype, rows, cols in mats:
        mm = np.lib.format.open_memmap(
            tmp / f"{name}.npy", "w+", np.uint8, (E * rows, ROW_BYTES[qtype])
        )
        for e0 in range(0, E, chunk):
            w = rng.standard_normal((chunk * rows, cols), dtype=np.float32)
            w *= 0.02
            mm[e0 * rows : (e0 + chunk) * rows] = _cpu.quantize(qtype, w, threads)
        mm.flush()
        del mm
    tmp.rename(out)
    return out


def make_inputs(tokens: list[int], calls: dict[int, int], seed: int = 0) -> dict:
    """x [T, D] per T, ids/weights [n_calls, T, K] per T."""
    rng = np.random.default_rng(seed)
    arrs = {}
    for t in tokens:
        n = calls[t]
        arrs[f"x{t}"] = rng.standard_normal((t, D), dtype=np.float32)
        ids = np.argsort(rng.random((n, t, E)), axis=-1)[..., :K].astype(np.int64)
        w = rng.random((n, t, K), dtype=np.float32) + 0.1
        arrs[f"ids{t}"] = ids
        arrs[f"w{t}"] = (w / w.sum(-1, keepdims=True)).astype(np.float32)
    return arrs


def run_calls(call, tokens: list[int], layers: int, inp: dict) -> tuple[dict, dict]:
    """call(layer, x, ids, w) -> out; returns ({T: [seconds]}, {T: first call's output})."""
    times, outs = {}, {}
    for t in tokens:
        x, ids, w = inp[f"x{t}"], inp[f"ids{t}"], inp[f"w{t}"]
        call((len(ids) - 1) % layers, x, ids[-1], w[-1])  # warm-up: the last call
        ts = []
        for i in range(len(ids)):
            t0 = time.perf_counter()
            y = call(i % layers, x, ids[i], w[i])
            ts.append(time.perf_counter() - t0)
            if i == 0:
                outs[t] = np.array(y, copy=True)
        times[t] = ts
    return times, outs


# ---------------------------------------------------------------------------------------------
# kt-kernel side: runs under the peer's interpreter, without numoe.


def load_kt():
    """(kt_kernel_ext module, how it was loaded)."""
    try:
        import kt_kernel

        return kt_kernel.kt_kernel_ext, f"kt_kernel {kt_kernel.__version__}"
    except ImportError as e:  # --no-deps: the package __init__ needs safetensors and gguf
        import importlib.util
        from importlib.metadata import version

        spec = importlib.util.find_spec("kt_kernel")
        if spec is None or not spec.submodule_search_locations:
            raise
        det_path = Path(next(iter(spec.submodule_search_locations))) / "_cpu_detect.py"
        det_spec = importlib.util.spec_from_file_location("_kt_cpu_detect", det_path)
        det = importlib.util.module_from_spec(det_spec)
        det_spec.loader.exec_module(det)
        ext, _ = det.initialize()
        return ext, f"kt-kernel {version('kt-kernel')} extension only (package import: {e})"


def peer_worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    ext, how = load_kt()
    threads, layers, tokens = spec["threads"], spec["layers"], spec["tokens"]
    inp = dict(np.load(spec["inputs"]))
    wdir = Path(spec["weights"])
    g, u, d = (np.load(wdir / f"{n}.npy", mmap_mode="r") for n in ("gate", "up", "down"))

    cfg = ext.WorkerPoolConfig()  # as KTMoEWrapper._get_cpu_infer with threadpool_count 1
    cfg.subpool_count = 1
    cfg.subpool_numa_map = [0]
    cfg.subpool_thread_count = [threads]
    cpu = ext.CPUInfer(cfg)
    max_t = max(tokens)
    moes = []
    for layer in range(layers):  # each MOE copies the weights into its own buffers
        c = ext.moe.MOEConfig(E, K, D, F)
        c.layer_idx = layer
        c.pool = cpu.backend_
        c.m_block = 32
        c.group_min_len = 10
        c.max_len = max_t
        c.group_max_len = max_t
        c.gate_proj = g.ctypes.data
        c.up_proj = u.ctypes.data
        c.down_proj = d.ctypes.data
        c.gate_type, c.up_type, c.down_type, c.hidden_type = GATE_TYPE, UP_TYPE, DOWN_TYPE, F32
        moe = ext.moe.MOE(c)
        cpu.submit(moe.load_weights_task())
        cpu.sync()
        moes.append(moe)
    qlen = np.zeros(1, np.int32)
    outs = {t: np.zeros((t, D), np.float32) for t in tokens}

    def call(layer, x, ids, w):
        ids, w = np.ascontiguousarray(ids), np.ascontiguousarray(w)
        out = outs[x.shape[0]]
        qlen[0] = x.shape[0]
        task = moes[layer].forward_task(
            qlen.ctypes.data,
            K,
            ids.ctypes.data,
            w.ctypes.data,
            x.ctypes.data,
            out.ctypes.data,
            False,
        )
        cpu.submit(task)
        cpu.sync()
        return out

    times, first = run_calls(call, tokens, layers, inp)
    res = {f"out{t}": first[t] for t in tokens}
    res.update({f"time{t}": np.array(times[t]) for t in tokens})
    np.savez(spec["result"], **res)
    variant = getattr(ext, "__cpu_variant__", "?")
    info = {"how": how, "variant": variant, "huge_mb": anon_huge_mb()}
    print("PEER-JSON " + json.dumps(info), flush=True)


def bench_peer(peer: str, spec: dict, work: Path) -> dict | None:
    """Run one kt-kernel configuration in a fresh interpreter; None (and a message) on failure."""
    spec_path = work / "peer-spec.json"
    spec_path.write_text(json.dumps(spec))
    args = [peer, os.path.abspath(__file__), "--peer-worker", str(spec_path)]
    p = subprocess.run(args, capture_output=True, text=True, check=False)
    line = [s for s in p.stdout.splitlines() if s.startswith("PEER-JSON ")]
    if p.returncode != 0 or not line:
        tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-15:])
        print(f"kt-kernel failed (exit {p.returncode}):\n{tail}", file=sys.stderr)
        return None
    info = json.loads(line[-1][len("PEER-JSON ") :])
    with np.load(spec["result"]) as z:
        info["out"] = {t: z[f"out{t}"] for t in spec["tokens"]}
        info["time"] = {t: list(z[f"time{t}"]) for t in spec["tokens"]}
    return info


# ---------------------------------------------------------------------------------------------
# numoe side and the report.


def reference(wdir: Path, x: np.ndarray, ids: np.ndarray, w: np.ndarray) -> np.ndarray:
    """float64 MoE on the dequantized experts for the given tokens."""
    from numoe import _cpu

    mats = {n: np.load(wdir / f"{n}.npy", mmap_mode="r") for n in ("gate", "up", "down")}

    def deq(name, qtype, e, rows, cols):
        raw = np.ascontiguousarray(mats[name][e * rows : (e + 1) * rows]).reshape(-1)
        return _cpu.dequantize(qtype, raw, rows * cols).reshape(rows, cols).astype(np.float64)

    out = np.zeros((len(x), D))
    for t in range(len(x)):
        xt = x[t].astype(np.float64)
        for j in range(K):
            e = int(ids[t, j])
            gx = deq("gate", GATE_TYPE, e, F, D) @ xt
            h = gx / (1 + np.exp(-gx)) * (deq("up", UP_TYPE, e, F, D) @ xt)
            out[t] += w[t, j] * (deq("down", DOWN_TYPE, e, D, F) @ h)
    return out


def rel_fro(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def anon_huge_mb() -> float:
    """Transparent huge pages backing this process's anonymous memory, MB (Linux)."""
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def distinct_bytes(ids: np.ndarray) -> float:
    """Mean over calls of the bytes of the distinct experts a call touches."""
    return float(np.mean([len(np.unique(c)) for c in ids])) * EXPERT_BYTES


def fmt_ms(ts: list[float]) -> str:
    return f"{statistics.median(ts) * 1e3:.2f} ({min(ts) * 1e3:.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-t", "--threads", type=int, default=None, help="default: physical cores")
    ap.add_argument("-T", "--tokens", type=int, nargs="+", default=TOKENS, help="tokens per call")
    ap.add_argument(
        "-L", "--layers", type=int, default=8, help="weight copies cycled (391 MB each)"
    )
    ap.add_argument("--calls", type=float, default=1.0, help="scale the timed calls per T")
    ap.add_argument("--rounds", type=int, default=2, help="numoe, kt, numoe, kt, ...: pooled")
    ap.add_argument("--peer-python", default=None, help="python of a venv with kt-kernel")
    ap.add_argument(
        "--kt-threads",
        type=int,
        nargs="+",
        default=None,
        help="kt-kernel compute threads to try (default: --threads and 1)",
    )
    ap.add_argument("--cache", default=os.environ.get("NUMOE_BENCH_CACHE"))
    ap.add_argument("--clean", action="store_true", help="delete the cached experts at the end")
    ap.add_argument("--peer-worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.peer_worker:
        peer_worker(a.peer_worker)
        return

    from numoe import _cpu, pool

    threads = pool.set_threads(a.threads)
    kt_threads = a.kt_threads or sorted({threads, 1}, reverse=True)
    cache = Path(a.cache or Path.home() / ".cache" / "numoe" / "bench")
    wdir = ensure_weights(cache, threads)
    tokens = sorted(set(a.tokens))
    calls = {t: max(1, round(CALLS.get(t, 0.5) * a.layers * a.calls)) for t in tokens}
    inp = make_inputs(tokens, calls)
    work = cache / "moe_peer"
    np.savez(work / "inputs.npz", **inp)
    load0 = os.getloadavg()[0]

    # numoe: private copies of the layer in anonymous memory like kt's own buffers, and on
    # 4 KiB pages like them (numpy would madvise huge pages for big arrays; numoe's own weights
    # are a file mmap, without them)
    mod = getattr(np, "_core", None) or np.core
    mod.multiarray._set_madvise_hugepage(False)
    src = [np.load(wdir / f"{n}.npy", mmap_mode="r") for n in ("gate", "up", "down")]
    ops = [
        _cpu.MoE(*([np.array(m).reshape(-1)] for m in src), GATE_TYPE, UP_TYPE, DOWN_TYPE, E, F, D)
        for _ in range(a.layers)
    ]
    del src
    assert ops[0].expert_nbytes == EXPERT_BYTES
    numoe_huge = anon_huge_mb()

    def numoe_call(layer, x, ids, w):
        return ops[layer].forward(x, ids, w)

    ours: dict[int, list[float]] = {t: [] for t in tokens}
    kt: dict[int, dict] = {}  # kt threads -> {"time": {T: [s]}, "out": {T: out}, ...}
    failed = False
    for _ in range(a.rounds):
        times, ours_out = run_calls(numoe_call, tokens, a.layers, inp)
        for t in tokens:
            ours[t] += times[t]
        if not a.peer_python or failed:
            continue
        for n in kt_threads:
            spec = {
                "threads": n,
                "layers": a.layers,
                "tokens": tokens,
                "inputs": str(work / "inputs.npz"),
                "weights": str(wdir),
                "result": str(work / "peer-result.npz"),
            }
            r = bench_peer(a.peer_python, spec, work)
            if r is None:
                failed = True
                break
            if n in kt:
                for t in tokens:
                    kt[n]["time"][t] += r["time"][t]
            else:
                kt[n] = r
    ops.clear()  # free the copies
    if failed:
        kt = {}
    load1 = os.getloadavg()[0]

    total_gb = a.layers * E * EXPERT_BYTES / 1e9
    print(
        f"MoE op, Qwen3-30B-A3B experts (D {D}, F {F}, {E} experts, top-{K}; gate/up Q4_K, "
        f"down Q6_K: {EXPERT_BYTES / 1e6:.2f} MB/expert), {a.layers} layer copies cycled "
        f"({total_gb:.1f} GB per engine); numoe {threads} threads, ISA {_cpu.isa()}; "
        f"{a.rounds} rounds; load average {load0:.1f} -> {load1:.1f}"
    )
    if kt:
        r = next(iter(kt.values()))
        print(f"peer: {r['how']}, CPU variant {r['variant']}; CPUInfer submit + sync per call")
        print(f"transparent huge pages: numoe {numoe_huge:.0f} MB, kt {r['huge_mb']:.0f} MB")
    elif a.peer_python:
        print("peer: kt-kernel FAILED (see the message above); numoe alone")
    else:
        print("peer: none (--peer-python PATH to add kt-kernel)")
    print(
        "ms: median (best) per call over all rounds; speedup: the best kt configuration's "
        "median / numoe's median (best / best); GB/s: distinct experts' bytes per call / median"
    )
    print("agreement: max|numoe - kt| / max|kt| (first call); rel. Frobenius error vs float64\n")
    kt_cols = "".join(f" kt {n} thr ms |" for n in kt)
    print(
        f"| T | calls | numoe ms |{kt_cols} speedup | numoe GB/s | kt GB/s "
        "| numoe vs kt | numoe vs f64 | kt vs f64 |"
    )
    print("|---:|---:|---:|" + "---:|" * len(kt) + "---:|---:|---:|---:|---:|---:|")
    for t in tokens:
        ids, w, x = inp[f"ids{t}"], inp[f"w{t}"], inp[f"x{t}"]
        nb = distinct_bytes(ids)
        o = statistics.median(ours[t])
        n_ref = min(N_REF, t)
        ref = reference(wdir, x[:n_ref], ids[0][:n_ref], w[0][:n_ref])
        cells = [str(t), str(len(ours[t])), fmt_ms(ours[t])]
        cells += [fmt_ms(r["time"][t]) for r in kt.values()]
        if kt:
            p = min(statistics.median(r["time"][t]) for r in kt.values())
            p_best = min(min(r["time"][t]) for r in kt.values())
            diff = max(
                float(np.abs(ours_out[t] - r["out"][t]).max() / np.abs(r["out"][t]).max())
                for r in kt.values()
            )
            kt_err = max(rel_fro(r["out"][t][:n_ref], ref) for r in kt.values())
            cells += [f"{p / o:.2f}x ({p_best / min(ours[t]):.2f}x)"]
            cells += [f"{nb / o / 1e9:.1f}", f"{nb / p / 1e9:.1f}"]
            cells += [f"{diff:.1e}", f"{rel_fro(ours_out[t][:n_ref], ref):.1e}", f"{kt_err:.1e}"]
        else:
            cells += ["-", f"{nb / o / 1e9:.1f}", "-", "-"]
            cells += [f"{rel_fro(ours_out[t][:n_ref], ref):.1e}", "-"]
        print("| " + " | ".join(cells) + " |", flush=True)

    for f in ("inputs.npz", "peer-result.npz", "peer-spec.json"):
        (work / f).unlink(missing_ok=True)
    if a.clean:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
