"""numoe's fused MoE op beside KTransformers' CPU MoE op (kt-kernel, llamafile/GGUF backend) on
the same quantized experts, routing, activations and threads: time per call, expert weight
GB/s, speed ratio, and how far the outputs are apart.

    python benchmarks/moe_peer.py                                          # numoe alone
    python benchmarks/moe_peer.py --peer-python /work/peers-kt/bin/python  # + kt-kernel

Experts: Qwen3-30B-A3B-shaped (hidden 2048, moe_intermediate 768, 128 experts, top-8),
gate/up Q4_K and down Q6_K as in Q4_K_M, quantized by numoe from Gaussian weights and written
once as raw GGUF blocks to $NUMOE_BENCH_CACHE/moe_peer (default ~/.cache/numoe/bench; 391 MB;
--clean deletes it). Each engine makes --layers private copies of that layer in anonymous
memory on 4 KiB pages (6 x 391 MB, far beyond the 260 MB L3 here) and call i runs on copy
i mod --layers, so weights come from DRAM. Routing: per token 8 distinct random experts of 128
and random positive weights summing to 1, from a fixed seed; the same ids, weights and float32
activations go to both engines.

Time: every call is timed alone. The calls of each T are split into --rounds blocks, and the
engines take turns block by block (numoe, kt configuration 1, 2, ..., next block), each block
after one untimed warm-up call; the kt configurations live in their own interpreters, stopped
with SIGSTOP while another engine runs, so their spinning threads stay off the CPUs and load
from other processes falls on every engine alike. The table gives median (best) ms per call;
speedup = the best kt configuration's median / numoe's median (and best / best). kt-kernel
runs with --threads compute threads and with 1: besides them it keeps a task-queue thread that
spins without pause, and Python spins in CPUInfer.sync(), so on a machine with few cores fewer
compute threads can be faster. GB/s: bytes of the distinct experts a call touches (at T = 1:
8 experts' gate+up+down) over the median time. Agreement: max |numoe - kt| / max |kt| on the
first call's outputs per T, and each engine's relative Frobenius error against float64 on the
dequantized weights (tokens 0..3 of that call).

The peer runs in its own interpreter (this file with --peer-worker, under --peer-python), a
benchmark-only install and never a numoe dependency:
    python3.11 -m venv /work/peers-kt
    /work/peers-kt/bin/pip install torch numpy
    /work/peers-kt/bin/pip install --no-deps kt-kernel
kt-kernel's package __init__ imports safetensors and gguf, which --no-deps leaves out; the
worker then loads the extension through kt-kernel's own CPU-variant loader
(kt_kernel/_cpu_detect.py). API used (kt_kernel_ext): WorkerPoolConfig (one subpool of n
threads) -> CPUInfer(config), as KTMoEWrapper does; moe.MOEConfig(expert_num,
num_experts_per_tok, hidden_size, intermediate_size) with gate/up/down_proj pointers to [E, F, D]
/ [E, D, F] GGUF blocks, gate/up/down_type and hidden_type as ggml type ids (hidden FP32),
m_block 32, group_min_len 10 (--kt-group-min-len; below it kt runs token by token), max_len =
group_max_len = max T (LlamafileMoEWrapper's values), pool = cpu.backend_; moe.MOE(config);
submit(load_weights_task()) + sync() (copies the weights into kt's buffers); per call
submit(forward_task(&qlen int32, k, ids int64 [T, k], weights float32 [T, k], x, out, False))
+ sync().
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
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
CALLS = {1: 96, 8: 48, 64: 16, 512: 8}  # timed calls per T, split over the rounds


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


def run_block(call, t: int, idx: range, layers: int, inp: dict) -> tuple[list[float], object]:
    """Calls idx of T (call(layer, x, ids, w) -> out), after one untimed warm-up call (the
    block's last, so the pool is awake); returns (seconds per call, output of call 0 or None)."""
    x, ids, w = inp[f"x{t}"], inp[f"ids{t}"], inp[f"w{t}"]
    call(idx[-1] % layers, x, ids[idx[-1]], w[idx[-1]])
    ts, first = [], None
    for i in idx:
        t0 = time.perf_counter()
        y = call(i % layers, x, ids[i], w[i])
        ts.append(time.perf_counter() - t0)
        if i == 0:
            first = np.array(y, copy=True)
    return ts, first


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
    """Load kt-kernel and the experts, say READY, then run blocks of calls on request:
    stdin 'run T start stop' -> stdout 'DONE [seconds...]'; 'quit' -> first outputs to
    spec['result'], 'BYE'. kt-kernel prints to stdout too, so replies carry a prefix."""
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
        c.group_min_len = spec["group_min_len"]
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

    info = {"how": how, "variant": getattr(ext, "__cpu_variant__", "?"), "huge_mb": anon_huge_mb()}
    print("PEER READY " + json.dumps(info), flush=True)
    first = {}
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "run":
            t, a, b = map(int, cmd[1:])
            ts, y = run_block(call, t, range(a, b), layers, inp)
            if y is not None:
                first[f"out{t}"] = y
            print("PEER DONE " + json.dumps(ts), flush=True)
        elif cmd[0] == "quit":
            np.savez(spec["result"], **first)
            print("PEER BYE", flush=True)
            return


class Peer:
    """One kt-kernel configuration in its own interpreter, stopped (SIGSTOP) between blocks so
    that its spinning threads stay off the CPUs while numoe runs."""

    def __init__(self, python: str, spec: dict, work: Path):
        self.spec, self.tail = spec, []
        path = work / f"peer-spec-{spec['threads']}.json"
        path.write_text(json.dumps(spec))
        self.proc = subprocess.Popen(
            [python, os.path.abspath(__file__), "--peer-worker", str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.info = json.loads(self._reply("READY"))
        self.proc.send_signal(signal.SIGSTOP)

    def _reply(self, word: str) -> str:
        key = f"PEER {word}"  # anywhere in the line: kt's C stdout shares the pipe
        for line in self.proc.stdout:
            if key in line:
                return line[line.index(key) + len(key) :].strip()
            self.tail = (self.tail + [line.rstrip()])[-15:]
        self.proc.wait()
        raise RuntimeError(f"exit {self.proc.returncode}:\n" + "\n".join(self.tail))

    def run(self, t: int, idx: range) -> list[float]:
        self.proc.send_signal(signal.SIGCONT)
        self.proc.stdin.write(f"run {t} {idx.start} {idx.stop}\n")
        self.proc.stdin.flush()
        ts = json.loads(self._reply("DONE"))
        self.proc.send_signal(signal.SIGSTOP)
        return ts

    def finish(self) -> dict:
        self.proc.send_signal(signal.SIGCONT)
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self._reply("BYE")
        self.proc.wait()
        with np.load(self.spec["result"]) as z:
            return {int(k[3:]): z[k] for k in z.files}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


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
        "-L", "--layers", type=int, default=6, help="weight copies cycled (391 MB each)"
    )
    ap.add_argument("--calls", type=float, default=1.0, help="scale the timed calls per T")
    ap.add_argument("--rounds", type=int, default=4, help="blocks per T and engine, interleaved")
    ap.add_argument("--peer-python", default=None, help="python of a venv with kt-kernel")
    ap.add_argument(
        "--kt-threads",
        type=int,
        nargs="+",
        default=None,
        help="kt-kernel compute threads to try (default: --threads and 1)",
    )
    ap.add_argument(
        "--kt-group-min-len",
        type=int,
        default=10,
        help="kt-kernel runs T below it token by token (default 10, LlamafileMoEWrapper's)",
    )
    ap.add_argument("--cache", default=os.environ.get("NUMOE_BENCH_CACHE"))
    ap.add_argument("--clean", action="store_true", help="delete the cached experts at the end")
    ap.add_argument("--peer-worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.peer_worker:
        peer_worker(a.peer_worker)
        return

    from numoe import _cpu
    from numoe.runtime import pool

    threads = pool.set_threads(a.threads)
    kt_threads = a.kt_threads or sorted({threads, 1}, reverse=True)
    cache = Path(a.cache or Path.home() / ".cache" / "numoe" / "bench")
    wdir = ensure_weights(cache, threads)
    tokens = sorted(set(a.tokens))
    calls = {t: max(a.rounds, round(CALLS.get(t, 8) * a.calls)) for t in tokens}
    inp = make_inputs(tokens, calls)
    work = cache / "moe_peer"
    np.savez(work / "inputs.npz", **inp)
    load0 = os.getloadavg()[0]

    peers: dict[int, Peer] = {}
    if a.peer_python:
        for n in kt_threads:
            spec = {
                "threads": n,
                "group_min_len": a.kt_group_min_len,
                "layers": a.layers,
                "tokens": tokens,
                "inputs": str(work / "inputs.npz"),
                "weights": str(wdir),
                "result": str(work / f"peer-result-{n}.npz"),
            }
            try:
                peers[n] = Peer(a.peer_python, spec, work)
                atexit.register(peers[n].kill)  # never leave a stopped peer behind
            except (RuntimeError, OSError) as e:
                print(f"kt-kernel ({n} threads) failed to start: {e}", file=sys.stderr)
                for p in peers.values():
                    p.kill()
                peers = {}
                break

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
    ours_out: dict[int, np.ndarray] = {}
    kt_time: dict[int, dict[int, list[float]]] = {n: {t: [] for t in tokens} for n in peers}
    try:
        for r in range(a.rounds):
            for t in tokens:
                blocks = np.array_split(np.arange(calls[t]), a.rounds)
                idx = range(int(blocks[r][0]), int(blocks[r][-1]) + 1)
                ts, y = run_block(numoe_call, t, idx, a.layers, inp)
                ours[t] += ts
                if y is not None:
                    ours_out[t] = y
                for n, p in peers.items():
                    kt_time[n][t] += p.run(t, idx)
        kt_out = {n: p.finish() for n, p in peers.items()}
    except (RuntimeError, OSError) as e:
        print(f"kt-kernel failed while running: {e}", file=sys.stderr)
        for p in peers.values():
            p.kill()
        peers, kt_out, kt_time = {}, {}, {}
    ops.clear()  # free the copies
    load1 = os.getloadavg()[0]

    total_gb = a.layers * E * EXPERT_BYTES / 1e9
    print(
        f"MoE op, Qwen3-30B-A3B experts (D {D}, F {F}, {E} experts, top-{K}; gate/up Q4_K, "
        f"down Q6_K: {EXPERT_BYTES / 1e6:.2f} MB/expert), {a.layers} layer copies cycled "
        f"({total_gb:.1f} GB per engine); numoe {threads} threads, ISA {_cpu.isa()}; "
        f"{a.rounds} interleaved rounds; load average {load0:.1f} -> {load1:.1f}"
    )
    from numoe.bench import isa_line

    print(isa_line())
    if peers:
        info = next(iter(peers.values())).info
        print(
            f"peer: {info['how']}, CPU variant {info['variant']}; CPUInfer submit + sync per "
            f"call; group_min_len {a.kt_group_min_len}"
        )
        print(f"transparent huge pages: numoe {numoe_huge:.0f} MB, kt {info['huge_mb']:.0f} MB")
    elif a.peer_python:
        print("peer: kt-kernel FAILED (see the message above); numoe alone")
    else:
        print("peer: none (--peer-python PATH to add kt-kernel)")
    print(
        "ms: median (best) per call; speedup: the best kt configuration's median / numoe's "
        "median (best / best); GB/s: distinct experts' bytes per call / median time"
    )
    print("agreement: max|numoe - kt| / max|kt| (first call); rel. Frobenius error vs float64\n")
    kt_cols = "".join(f" kt {n} thr ms |" for n in peers)
    print(
        f"| T | calls | numoe ms |{kt_cols} speedup | numoe GB/s | kt GB/s "
        "| numoe vs kt | numoe vs f64 | kt vs f64 |"
    )
    print("|---:|---:|---:|" + "---:|" * len(peers) + "---:|---:|---:|---:|---:|---:|")
    for t in tokens:
        ids, w, x = inp[f"ids{t}"], inp[f"w{t}"], inp[f"x{t}"]
        nb = distinct_bytes(ids)
        o = statistics.median(ours[t])
        n_ref = min(N_REF, t)
        ref = reference(wdir, x[:n_ref], ids[0][:n_ref], w[0][:n_ref])
        cells = [str(t), str(len(ours[t])), fmt_ms(ours[t])]
        cells += [fmt_ms(kt_time[n][t]) for n in peers]
        if peers:
            p = min(statistics.median(kt_time[n][t]) for n in peers)
            p_best = min(min(kt_time[n][t]) for n in peers)
            diff = max(
                float(np.abs(ours_out[t] - kt_out[n][t]).max() / np.abs(kt_out[n][t]).max())
                for n in peers
            )
            kt_err = max(rel_fro(kt_out[n][t][:n_ref], ref) for n in peers)
            cells += [f"{p / o:.2f}x ({p_best / min(ours[t]):.2f}x)"]
            cells += [f"{nb / o / 1e9:.1f}", f"{nb / p / 1e9:.1f}"]
            cells += [f"{diff:.1e}", f"{rel_fro(ours_out[t][:n_ref], ref):.1e}", f"{kt_err:.1e}"]
        else:
            cells += ["-", f"{nb / o / 1e9:.1f}", "-", "-"]
            cells += [f"{rel_fro(ours_out[t][:n_ref], ref):.1e}", "-"]
        print("| " + " | ".join(cells) + " |", flush=True)

    for f in work.glob("peer-*"):
        f.unlink(missing_ok=True)
    (work / "inputs.npz").unlink(missing_ok=True)
    if a.clean:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
