"""Decode (tg) tokens/s of numoe beside llama.cpp, and of numoe beside another numoe install
(a "before" build), on the same GGUF files, threads and machine, in alternating rounds, with
the machine's read bandwidth probed just before and just after every decode turn.

    python benchmarks/decode.py -m a.gguf                          # numoe alone
    python benchmarks/decode.py -m a.gguf --peer-python /tmp/peer/bin/python      # + llama.cpp
    python benchmarks/decode.py -m a.gguf --numoe-python /tmp/before-venv/bin/python
                                             # + the numoe installed in that venv ("before")
    python benchmarks/decode.py -m a.gguf -m b.gguf -r 3 -t 2 -p 0 \\
        --peer-python /tmp/peer/bin/python --numoe-python /tmp/before-venv/bin/python
    python benchmarks/decode.py                # the default synthetic models (written once)

Engines. Every engine runs in its own process under its own interpreter (this file with
decode_worker.py): "numoe-now" under this interpreter (the numoe it imports: this tree when installed
editable), "numoe-before" under --numoe-python (its numoe: the new runtime API, else the old
one: numoe.pool.set_threads + models.load(g, Placement)), "llama.cpp" under --peer-python
(llama-cpp-python). Each loads the model once (numoe: prefaulted file map; llama.cpp: mmap,
its CPU repack) and then waits; between its turns it is stopped (SIGSTOP), so its spinning
threads stay off the cores while another engine runs. Why processes that live across rounds
and not one per round: what alternation must make fair is the machine's drift (a shared VM's
read bandwidth moves by 2x within minutes), and turns of a few seconds each, engine after
engine, share it; a process per round would add a model load (seconds to minutes, page
faults, llama.cpp's repack) to every turn without making the turns any closer in time. Both
numoe installs run the same harness in the same kind of process, so neither has the parent's
state (its probe buffers, its pool) and their ratio is like for like.

Rounds. In round r the engines take turns in a rotated order (engine r mod E first), each
turn one untimed warm-up run and --reps timed runs of tgN (N single-token steps from an empty
cache, random tokens, no sampling: llama-bench's tg; numoe through numoe.bench.run_test, as
`numoe bench`). The parent probes the read bandwidth (numoe's probe, this interpreter's
numoe.runtime.bandwidth.measure_read_bandwidth: every allowed physical core) before the first
turn and after every turn, so each tg turn lies between two probes with nothing else between.
Then, unprobed, each engine's ppN turn (-p, prompt of N random tokens into an empty cache in
one batch) and tg at depth (-d: decode after D cached tokens, prefilled untimed).

Figures per model and engine: tg t/s, the median over every timed run (min-max, runs); vs
numoe-now: median over median; bytes/token (numoe.roofline.token_bytes: weight bytes one
token reads at stored sizes, split into the k routed experts of every MoE layer, the other
tensors of the layers, and the output head); GB/s = bytes/token x t/s, and the routed
experts' GB/s on their own; % of bw = a turn's GB/s over the larger of its two probes, median
over turns. Paired ratios: per round, engine A's turn median over engine B's (adjacent in
time), their median and range; "within noise" when that range holds 1.0.

Synthetic models (no -m) are written once to $NUMOE_BENCH_CACHE (default
~/.cache/numoe/bench), outside the repository; --clean deletes them at the end. llama.cpp is
optional and lives in its own virtual environment:
    python3.11 -m venv /tmp/peer
    CMAKE_ARGS="-DGGML_NATIVE=ON" /tmp/peer/bin/pip install llama-cpp-python
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_MODELS = [  # (preset, layers, type): real shapes, fewer layers to fit 24 GiB
    ("qwen3-30b-a3b", 12, "Q4_K_M"),
    ("deepseek-v2-lite", 12, "Q4_K_M"),
]
NOW, BEFORE, LLAMA = "numoe-now", "numoe-before", "llama.cpp"
WORKER = Path(__file__).resolve().parent / "decode_worker.py"


# ---------------------------------------------------------------------------------------------
# The engines' processes (decode_worker.py), driven from here.


class Worker:
    """One engine in its own interpreter, stopped (SIGSTOP) between its turns."""

    def __init__(self, label: str, kind: str, python: str, spec: dict, work: Path):
        self.label, self.tail = label, []
        self.cpp = [0, 0]  # numoe: decode steps through the C++ blocks, decode steps run
        path = work / f"spec-{label}.json"
        path.write_text(json.dumps(spec))
        self.log = work / f"stderr-{label}.txt"
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                [python, str(WORKER), kind, str(path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        atexit.register(self.kill)  # never leave a stopped worker behind
        t0 = time.perf_counter()
        self.info = json.loads(self._reply("READY"))
        self.load_s = time.perf_counter() - t0
        self.proc.send_signal(signal.SIGSTOP)

    def _reply(self, word: str) -> str:
        key = f"WORKER {word}"
        for line in self.proc.stdout:
            if key in line:
                return line[line.index(key) + len(key) :].strip()
            self.tail = (self.tail + [line.rstrip()])[-10:]
        self.proc.wait()
        err = self.log.read_text().strip().splitlines()[-15:] if self.log.exists() else []
        raise RuntimeError(f"{self.label} exited {self.proc.returncode}:\n" + "\n".join(err))

    def run(self, cmd: dict) -> dict:
        self.proc.send_signal(signal.SIGCONT)
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
            return json.loads(self._reply("DONE"))
        finally:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGSTOP)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self._reply("BYE")
            self.proc.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------------------------------
# The parent: this tree's numoe for the probe and the byte accounting.


def ensure_model(cache: Path, preset: str, layers: int, qtype: str) -> Path:
    from numoe.synth import synth

    path = cache / f"{preset}-{layers}L-{qtype}.gguf"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"writing {path} ...", file=sys.stderr)
        tmp = path.with_suffix(".tmp")
        synth(preset, tmp, qtype, layers=layers)
        tmp.rename(path)
    return path


def model_facts(path: Path) -> dict:
    """Architecture, layer count, file size and bytes/token split of a GGUF file."""
    from numoe import models
    from numoe.gguf import open_gguf
    from numoe.roofline import token_bytes

    g = open_gguf(path)
    cfg = models.get(g.arch).config_from_gguf(g)
    k, e = getattr(cfg, "n_expert_used", 0) or 0, getattr(cfg, "n_expert", 0) or 0
    tb = token_bytes(g, k, e)
    n_moe = len({n.split(".")[1] for n in g.tensors if n.startswith("blk.") and "_exps" in n})
    return {"arch": g.arch, "n_layer": tb.n_layer, "n_moe": n_moe, "k": k, "E": e,
            "file_bytes": g.file_size, "tb": tb}  # fmt: skip


def _git(repo: Path, *args: str) -> str:
    r = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    return r.stdout.strip() if r.returncode == 0 else ""


def git_state(src: str) -> str:
    """'/tree, git 01fe3fb' (+ ', N files with uncommitted changes') of the git tree holding
    `src`, or `src` itself when none does."""
    d = Path(src)
    for p in [d, *d.parents]:
        if (p / ".git").exists():
            head = _git(p, "rev-parse", "--short", "HEAD")
            dirty = _git(p, "status", "--porcelain", "--untracked-files=no").splitlines()
            more = f", {len(dirty)} files with uncommitted changes" if dirty else ""
            return f"{p}, git {head or '?'}{more}"
    return src


class Probes:
    """numoe's read-bandwidth probe in this process, each figure with a sequence number."""

    def __init__(self, enabled: bool):
        self.enabled, self.values = enabled, []

    def __call__(self) -> int | None:
        if not self.enabled:
            return None
        from numoe import _cpu
        from numoe.runtime.bandwidth import measure_read_bandwidth

        self.values.append(measure_read_bandwidth())
        _cpu.set_spin_us(0)  # this process's pool: asleep while the engines run
        return len(self.values) - 1


def fmt_range(v: list[float], digits: int = 2) -> str:
    return f"{min(v):.{digits}f}-{max(v):.{digits}f}"


def engine_lines(workers: dict) -> list[str]:
    out = []
    for label, w in workers.items():
        i = w.info
        f = i["flags"]
        if label == LLAMA:
            out.append(
                f"- {label}: llama-cpp-python {i['version']}, libllama {i['llama_version']} "
                f"({', '.join(i['libs']) or 'libs ?'}); system info: {i['system_info']}"
            )
            out.append(
                f"  flags: n_threads {f['n_threads']}, n_threads_batch {f['n_threads_batch']}, "
                f"flash_attn {f['flash_attn']}, n_batch {f['n_batch']}, n_ubatch "
                f"{f['n_ubatch']}, n_ctx {f['n_ctx']}, KV cache {f['kv_cache']}, mmap "
                f"{f['use_mmap']}; loaded in {w.load_s:.1f} s"
            )
        else:
            out.append(
                f"- {label}: numoe {i['version']} from {git_state(i['source'])}; API {i['api']}; "
                f"ISA {i['isa']}"
            )
            steps = w.cpp
            path = f["decode_path"]
            if steps[1]:
                path += f" (C++ decode blocks took {steps[0]} of {steps[1]} decode steps)"
            out.append(
                f"  flags: threads {f['threads']}, NUMA {f['numa']}, torch threads "
                f"{f['torch_threads']}, batch {f['batch']}, decode path {path}, KV cache "
                f"{f['kv_cache']}, attention: {f['attention']}; loaded in {w.load_s:.1f} s"
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-m", "--model", action="append", help="GGUF file (repeatable)")
    ap.add_argument("-t", "--threads", type=int, default=None, help="default: physical cores")
    ap.add_argument("-n", "--n-gen", type=int, default=64, help="tokens of the tg test")
    ap.add_argument("-p", "--n-prompt", type=int, default=0, help="pp test tokens (0: none)")
    ap.add_argument("-d", "--depth", type=int, default=0, help="also tg after D cached tokens")
    ap.add_argument("-r", "--rounds", type=int, default=3, help="alternating rounds")
    ap.add_argument("--reps", type=int, default=2, help="timed runs per turn")
    ap.add_argument("-b", "--batch", type=int, default=512, help="prefill batch (both engines)")
    ap.add_argument("--flash-attn", type=int, choices=(0, 1), default=0, help="llama.cpp's")
    ap.add_argument(
        "--numoe-path", choices=("auto", "cpp", "torch"), default="auto",
        help="numoe's decode path (model.forward(path=...); the old API ignores it)",
    )  # fmt: skip
    ap.add_argument("--peer-python", default=None, help="python of a venv with llama-cpp-python")
    ap.add_argument(
        "--numoe-python", default=None,
        help="python of a venv with another numoe install (the 'before' build)",
    )  # fmt: skip
    ap.add_argument("--no-now", action="store_true", help="leave out this interpreter's numoe")
    ap.add_argument("--no-probe", action="store_true", help="no bandwidth probes (no %% of bw)")
    ap.add_argument("--json", default=None, help="also write every figure to this file")
    ap.add_argument("--cache", default=os.environ.get("NUMOE_BENCH_CACHE"))
    ap.add_argument("--clean", action="store_true", help="delete the synthetic models at the end")
    a = ap.parse_args()

    from numoe import _cpu
    from numoe.bench import Test, isa_line
    from numoe.runtime.machine import cpu_model
    from numoe.runtime.numa import format_ids, plan_threads
    from numoe.runtime.topology import Topology

    threads = plan_threads(Topology.read(), a.threads).threads
    cache = Path(a.cache or Path.home() / ".cache" / "numoe" / "bench")
    paths = (
        [Path(m) for m in a.model] if a.model else [ensure_model(cache, *m) for m in DEFAULT_MODELS]
    )
    engines = []  # (label, kind, python)
    if not a.no_now:
        engines.append((NOW if a.numoe_python else "numoe", "numoe", sys.executable))
    if a.numoe_python:
        engines.append((BEFORE, "numoe", a.numoe_python))
    if a.peer_python:
        engines.append((LLAMA, "llama", a.peer_python))
    if not engines:
        ap.error("no engine left (--no-now without --numoe-python or --peer-python)")
    ref = engines[0][0]
    probe = Probes(not a.no_probe)
    tg = Test(0, a.n_gen)
    tests = [("tg", tg)]
    if a.n_prompt:
        tests.append(("pp", Test(a.n_prompt, 0)))
    if a.depth:
        tests.append(("tgd", Test(0, a.n_gen, a.depth)))
    results, header_done, dump = {}, False, {"models": []}
    load0 = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="numoe_decode_"))

    for path in paths:
        facts = model_facts(path)
        spec = {
            "model": str(path), "threads": threads, "batch": a.batch,
            "n_ctx": max(a.n_prompt, a.depth + a.n_gen) + 8, "flash_attn": a.flash_attn,
            "numoe_path": a.numoe_path,
        }  # fmt: skip
        workers: dict[str, Worker] = {}
        try:
            for label, kind, python in engines:
                print(f"{path.name}: loading {label} ...", file=sys.stderr, flush=True)
                workers[label] = Worker(label, kind, python, spec, work)
            runs = {lb: {k: [] for k, _ in tests} for lb in workers}  # t/s of every run
            turns = {lb: [] for lb in workers}  # tg turns: (round, median t/s, probe i, probe j)
            last = probe()
            for r in range(a.rounds):
                order = list(workers)[r % len(workers) :] + list(workers)[: r % len(workers)]
                for label in order:  # tg turns, each between two probes
                    w = workers[label]
                    cmd = {"n_prompt": 0, "n_gen": a.n_gen, "depth": 0, "reps": a.reps,
                           "seed": r}  # fmt: skip
                    res = w.run(cmd)
                    ts = [a.n_gen / s for s in res["seconds"]]
                    runs[label]["tg"] += ts
                    if "cpp_steps" in res:
                        w.cpp[0] += res["cpp_steps"]
                        w.cpp[1] += res["decode_steps"]
                    nxt = probe()
                    turns[label].append((r, statistics.median(ts), last, nxt))
                    last = nxt
                    print(f"  round {r + 1} {label}: tg {', '.join(f'{x:.2f}' for x in ts)}",
                          file=sys.stderr, flush=True)  # fmt: skip
                for label in order:  # then pp and tg at depth, unprobed
                    for key, t in tests[1:]:
                        cmd = {"n_prompt": t.n_prompt, "n_gen": t.n_gen, "depth": t.n_depth,
                               "reps": a.reps, "seed": r}  # fmt: skip
                        res = workers[label].run(cmd)
                        runs[label][key] += [(t.n_prompt or t.n_gen) / s for s in res["seconds"]]
            for w in workers.values():
                w.close()
        except RuntimeError as e:
            print(f"{path.name}: an engine failed: {e}", file=sys.stderr)
            for w in workers.values():
                w.kill()
            continue

        if not header_done:
            header_done = True
            allowed = format_ids(os.sched_getaffinity(0))
            print(
                f"decode.py: {', '.join(workers)}; {threads} threads; {a.rounds} rounds, "
                f"engines alternating turn by turn (order rotated each round), {a.reps} timed "
                f"runs per turn after one warm-up"
            )
            print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, allowed {allowed}; {isa_line()}")
            for line in engine_lines(workers):
                print(line)
            print(
                "read bandwidth: numoe's probe (numoe.runtime.bandwidth.measure_read_bandwidth, "
                "every allowed physical core, best of >= 3 passes) in the parent process just "
                "before and just after every tg turn; % of bw: a turn's GB/s over the larger of "
                "its two probes, median over turns"
                if probe.enabled
                else "read bandwidth: not probed (--no-probe)"
            )
        tb = facts["tb"]
        print(
            f"\n### {path.name}: {facts['arch']}, {facts['n_layer']} layers "
            f"({facts['n_moe']} MoE, top-{facts['k']} of {facts['E']} experts), "
            f"{facts['file_bytes'] / 1e9:.2f} GB file; bytes/token {tb.total / 1e6:.1f} MB = "
            f"routed experts {tb.routed / 1e6:.1f} + other layers {tb.other / 1e6:.1f} + "
            f"output head {tb.head / 1e6:.1f}"
        )
        print(
            f"| model | layers | engine | test | t/s median | min-max | runs | vs {ref} | "
            "GB/s | routed GB/s | % of bw | probes GB/s |"
        )
        print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for key, t in tests:
            base = statistics.median(runs[ref][key]) if runs[ref][key] else None
            for label in workers:
                v = runs[label][key]
                if not v:
                    continue
                med = statistics.median(v)
                cells = [path.name, str(facts["n_layer"]), label, t.name, f"{med:.2f}",
                         fmt_range(v), str(len(v)), f"{med / base:.3f}x" if base else "-"]  # fmt: skip
                if key == "tg":
                    cells += [f"{tb.total * med / 1e9:.2f}", f"{tb.routed * med / 1e9:.2f}"]
                    if probe.enabled:
                        bws = [max(probe.values[i], probe.values[j]) for _, _, i, j in turns[label]]
                        pct = [100 * tb.total * m / 1e9 / b
                               for (_, m, _, _), b in zip(turns[label], bws, strict=True)]  # fmt: skip
                        flag = "!" if statistics.median(pct) > 100 else ""
                        cells += [f"{statistics.median(pct):.0f} %{flag}", fmt_range(bws, 1)]
                    else:
                        cells += ["-", "-"]
                else:  # pp: one read serves the batch; at depth the cache's reads add
                    cells += ["-", "-", "-", "-"]
                print("| " + " | ".join(cells) + " |")
        labels = list(workers)
        pairs = [(x, y) for i, x in enumerate(labels) for y in labels[i + 1 :]]
        for x, y in pairs:
            rx = {r: m for r, m, _, _ in turns[x]}
            ry = {r: m for r, m, _, _ in turns[y]}
            ratios = [rx[r] / ry[r] for r in sorted(rx) if r in ry]
            if not ratios:
                continue
            lo, hi = min(ratios), max(ratios)
            verdict = (
                "within noise (the range holds 1.00)"
                if lo <= 1.0 <= hi
                else ("faster" if lo > 1 else "slower") + " in every round"
            )
            print(
                f"{tg.name} {x} / {y}, per round: {', '.join(f'{q:.3f}' for q in ratios)}; "
                f"median {statistics.median(ratios):.3f}, range {lo:.3f}-{hi:.3f}: {verdict}"
            )
        spread = ", ".join(
            f"{lb} {100 * (max(runs[lb]['tg']) / min(runs[lb]['tg']) - 1):.0f} %" for lb in labels
        )
        print(f"{tg.name} run-to-run spread (max/min - 1): {spread}")
        if probe.enabled:
            used = sorted({i for lb in labels for _, _, i, j in turns[lb]} |
                          {j for lb in labels for _, _, i, j in turns[lb]})  # fmt: skip
            vals = [probe.values[i] for i in used]
            print(f"read bandwidth probes beside this model's tg turns: {fmt_range(vals, 1)} GB/s "
                  f"({len(vals)} probes)")  # fmt: skip
        results[path.name] = runs
        dump["models"].append({
            "model": str(path), "facts": {**{k: v for k, v in facts.items() if k != "tb"},
                                          "routed": tb.routed, "other": tb.other,
                                          "head": tb.head},
            "runs": runs, "turns": turns,
            "engines": {lb: w.info for lb, w in workers.items()},
        })  # fmt: skip

    load1 = os.getloadavg()[0]
    if results:
        print(f"\nload average {load0:.1f} -> {load1:.1f}; numoe-now ISA {_cpu.isa()}")
    if a.json:
        dump["probes"] = probe.values
        Path(a.json).write_text(json.dumps(dump, indent=1, default=str))
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    if a.clean and not a.model:
        for path in paths:
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
