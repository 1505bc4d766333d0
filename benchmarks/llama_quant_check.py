"""numoe on files made by llama.cpp's own quantizer: does it load them, does it agree with
llama.cpp on them, how fast does it decode them beside llama.cpp.

    python benchmarks/llama_quant_check.py --peer-python /tmp/peer/bin/python
    python benchmarks/llama_quant_check.py --full --types Q4_K_M,Q2_K      # 12 real layers
    python benchmarks/llama_quant_check.py --arch qwen3moe --types Q4_K_M,IQ2_XXS --keep

Per architecture (qwen3moe, deepseek2, llama: Mixtral-shaped) numoe synth's random weights
are written once as F16 (default: small shapes whose rows are all multiples of 256, so each
tensor gets the type its ftype asks for; --full: 12 layers of Qwen3-30B-A3B and
DeepSeek-V2-Lite, whose 128-, 1408- and 10944-wide rows get llama.cpp's fallback types),
then quantized by llama.cpp (llama_cpp.llama_model_quantize under --peer-python) to each of
--types: Q4_K_M Q5_K_M Q3_K_M Q2_K Q4_0, and IQ4_XS IQ2_XXS (any IQ* type) with a random
importance matrix (uniform 0.1-2, ne0 x n_expert values per tensor) passed in the params'
`imatrix` array (llama_model_imatrix_data, null-terminated).

A row per file: its tensor types; whether numoe loads it (if not, the types it lacks); on
one random token sequence (--seq positions, teacher-forced), top-1 agreement with llama.cpp's
batched logits (one eval, logits_all) of numoe one token per call (its decode path), numoe in
one forward, and llama.cpp one token per eval (llama.cpp against itself: numoe's target; its
two paths share its float ops and F16 KV cache, so their activations round alike: a high
bar); |logit difference| / std of llama.cpp's batched logits at the position, mean / max;
against "exact" (llama.cpp batched on the weights dequantized to an F32 file: no quantized
activations), top-1 and mean |Δ|/σ of numoe one-token and llama.cpp batched: whose
arithmetic is nearer the weights' own; decode tgN t/s, each engine a process of its own
(decode.py's Worker, stopped between turns) taking turns in a rotated order, medians, and
numoe / llama.cpp per round (median, range). Targets: numoe's top-1 >= llama.cpp's own;
decode >= 1.2x llama.cpp on Q4_K_M and Q2_K (small shapes time per-token overheads, not
memory: judge the --full rows). Files live in --dir (/tmp/llq), deleted at the end unless
--keep (kept files are reused).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import decode  # (Worker: one engine process, stopped between its turns)

decode.WORKER = HERE / "llama_quant_worker.py"  # decode's Worker, this file's engines
TYPES = ["Q4_K_M", "Q5_K_M", "Q3_K_M", "Q2_K", "Q4_0", "IQ4_XS", "IQ2_XXS"]
SPEED_TARGET = {"Q4_K_M": 1.2, "Q2_K": 1.2}
SMALL = {  # arch: (numoe synth preset, layers, shape overrides): rows multiples of 256
    "qwen3moe": ("qwen3-30b-a3b", 2, {"n_vocab": 2048, "n_embd": 256, "n_head": 4,
                 "n_head_kv": 2, "head_dim": 64, "n_expert": 16, "n_expert_used": 4,
                 "n_ff_exp": 256}),
    "deepseek2": ("deepseek-v2-lite", 3, {"n_vocab": 2048, "n_embd": 256, "n_head": 2,
                  "kv_lora_rank": 256, "d_nope": 256, "d_rope": 64, "d_v": 128, "n_ff": 512,
                  "n_expert": 16, "n_expert_used": 4, "n_ff_exp": 256}),
    "llama": ("mixtral-8x7b", 2, {"n_vocab": 2048, "n_embd": 256, "n_head": 4, "n_head_kv": 2,
              "head_dim": 64, "n_ff": 512}),
}  # fmt: skip
FULL = {"qwen3moe": ("qwen3-30b-a3b", 12, {}), "deepseek2": ("deepseek-v2-lite", 12, {})}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def model_meta(preset: str, layers: int, over: dict) -> tuple:
    """(config, metadata) of numoe synth's model at the preset's shapes, `over` replaced."""
    from numoe.models import get as get_arch
    from numoe.synth import preset_config
    from numoe.text import synth_vocab_metadata

    cfg = dataclasses.replace(preset_config(preset, layers), **over)
    arch = get_arch(cfg.arch)
    meta = dict(arch.gguf_metadata(cfg))
    meta["general.name"] = f"numoe-synth-{preset}-{'small' if over else 'full'}"
    meta |= synth_vocab_metadata(cfg.n_vocab, getattr(arch, "TOKENIZER_KIND", "gpt2"))
    return cfg, meta


def write(path: Path, cfg, meta: dict, tensors: dict, qtype: str) -> None:
    from numoe.convert import keep_f32
    from numoe.gguf.write import write_gguf

    tmp = path.with_suffix(".tmp")
    write_gguf(tmp, cfg.arch, meta, tensors, qtype, keep_f32=keep_f32)
    tmp.rename(path)


def synth_f16(path: Path, cfg, meta: dict, seed: int = 0) -> None:
    """numoe synth's random weights (same draws as `numoe synth`), F16."""
    from numoe.gguf.write import Lazy
    from numoe.models import get as get_arch
    from numoe.synth import random_tensor

    specs = get_arch(cfg.arch).tensor_specs(cfg)
    seeds = np.random.SeedSequence(seed).spawn(len(specs))

    def lazy(s, name, shape):
        return Lazy(shape, lambda: random_tensor(np.random.default_rng(s), name, shape))

    write(path, cfg, meta, {n: lazy(s, n, sh) for (n, sh), s in zip(specs.items(), seeds)}, "F16")


def dequantized(src: Path, dst: Path, cfg, meta: dict) -> str:
    """src's weights dequantized (numoe's reader) into an F32 file; '' or why not."""
    from numoe.gguf import open_gguf
    from numoe.gguf.read import dequantize
    from numoe.gguf.write import Lazy

    g = open_gguf(src)
    if g.unsupported:
        return "numoe cannot dequantize " + ", ".join({q.name for q in g.unsupported.values()})

    def lazy(t):
        return Lazy(t.shape, lambda: dequantize(t).float().numpy())

    write(dst, cfg, meta, {n: lazy(t) for n, t in g.tensors.items()}, "F32")
    return ""


def quantize(peer: str, src: Path, dst: Path, ftype: str, threads: int, work: Path) -> str:
    """llama.cpp's quantizer, src -> dst; '' or what went wrong."""
    from numoe.gguf import open_gguf

    spec = {"src": str(src), "dst": str(dst), "ftype": ftype, "threads": threads, "seed": 0}
    if ftype.startswith("IQ"):  # random importance: ne0 * ne2 values (3-D: a row per expert)
        tensors = open_gguf(src).tensors
        spec["imatrix"] = [(n, t.shape[-1] * (t.shape[0] if len(t.shape) == 3 else 1))
                           for n, t in tensors.items() if len(t.shape) >= 2]  # fmt: skip
    sp = work / "quant.json"
    sp.write_text(json.dumps(spec))
    r = subprocess.run([peer, str(decode.WORKER), "quantize", str(sp)], capture_output=True,
                       text=True, check=False)  # fmt: skip
    res = next((ln.split("WORKER QUANT ", 1)[1] for ln in r.stdout.splitlines()
                if "WORKER QUANT " in ln), None)  # fmt: skip
    if res is not None and json.loads(res)["rc"] == 0 and dst.exists():
        log(f"  {dst.name}: quantized in {json.loads(res)['seconds']:.1f} s")
        return ""
    tail = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.strip()][-3:]
    return f"exit {r.returncode}, rc {res}: " + " | ".join(tail)


def top1(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean())


def rel_diff(a: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """|a - ref| / std(ref) per position: mean and max over positions and vocabulary."""
    d = np.abs(a.astype(np.float64) - ref) / ref.std(axis=1, keepdims=True)
    return float(d.mean()), float(d.max())


def start(label: str, kind: str, python: str, spec: dict, work: Path):
    """(Worker or None, error): a file an engine cannot load is an error string."""
    try:
        w = decode.Worker(label, kind, python, spec, work)
    except RuntimeError as e:
        return None, str(e).strip().splitlines()[-1]
    if "error" in w.info:
        w.kill()
        return None, w.info["error"]
    return w, ""


def engines(a) -> tuple:
    return ("numoe", "numoe", sys.executable), ("llama.cpp", "llama", a.peer)


def get_logits(w, toks: list[int], work: Path) -> dict[str, np.ndarray]:
    """An engine's logits [positions, vocab] on toks: 'batch' (one call), 'step' (one a call)."""
    w.run({"op": "logits", "tokens": toks, "out": str(work / w.label)})
    return {k: np.load(work / f"{w.label}-{k}.npy") for k in ("batch", "step")}


def check_file(path: Path, a, threads: int, work: Path, exact: Path | None) -> dict:
    """One file: both engines' logits on one sequence (and on `exact`, its weights dequantized
    to F32), then alternating tg turns."""
    spec = {"model": str(path), "threads": threads, "n_ctx": a.seq, "no_repack": a.no_repack}
    out: dict = {"errors": {}, "info": {}}
    workers = {}
    for label, kind, py in engines(a):
        log(f"  {path.name}: loading {label} ...")
        w, err = start(label, kind, py, spec, work)
        if w is None:
            out["errors"][label] = err
        else:
            workers[label], out["info"][label] = w, w.info
    try:
        if "llama.cpp" not in workers:
            return out
        rng = random.Random(a.seed)
        toks = [rng.randrange(a.n_vocab) for _ in range(a.seq)]
        logits = {lb: get_logits(w, toks, work) for lb, w in workers.items()}
        ref = logits["llama.cpp"]["batch"]
        out["llama_self"] = top1(logits["llama.cpp"]["step"], ref)
        out["llama_diff"] = rel_diff(logits["llama.cpp"]["step"], ref)
        if "numoe" in logits:
            out["numoe_step"] = top1(logits["numoe"]["step"], ref)
            out["numoe_batch"] = top1(logits["numoe"]["batch"], ref)
            out["numoe_diff"] = rel_diff(logits["numoe"]["step"], ref)
        if exact is not None:  # the dequantized weights in F32: llama.cpp batched is "exact"
            ex = {}
            for label, kind, py in engines(a):
                w, err = start(label, kind, py, {**spec, "model": str(exact)}, work)
                if w is not None:
                    ex[label] = get_logits(w, toks, work)
                    w.close()
                    w.kill()
            if "llama.cpp" in ex:
                truth = ex["llama.cpp"]["batch"]
                out["exact"] = {lb: (top1(v[k], truth), rel_diff(v[k], truth)[0])
                                for lb, k in (("numoe", "step"), ("llama.cpp", "batch"))
                                if (v := logits.get(lb)) is not None}  # fmt: skip
                if "numoe" in ex:  # the F32 file: where the two engines' arithmetic meets
                    n = ex["numoe"]["step"]
                    out["f32"] = (top1(n, truth), rel_diff(n, truth)[1])
        runs = {lb: [] for lb in workers}
        per_round = {lb: [] for lb in workers}
        for r in range(a.rounds):
            order = list(workers)[r % len(workers) :] + list(workers)[: r % len(workers)]
            for label in order:
                res = workers[label].run({"op": "tg", "n_gen": a.n_gen, "reps": a.reps, "seed": r})
                ts = [a.n_gen / s for s in res["seconds"]]
                runs[label] += ts
                per_round[label].append(statistics.median(ts))
        out["tg"] = {lb: statistics.median(v) for lb, v in runs.items()}
        if len(workers) == 2:
            out["ratios"] = [x / y for x, y in zip(per_round["numoe"], per_round["llama.cpp"])]
        for w in workers.values():
            w.close()
    finally:
        for w in workers.values():
            w.kill()
    return out


def row(arch: str, ftype: str, counts: Counter, lacks: Counter, res: dict) -> str:
    types = ", ".join(f"{k} {n}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    if lacks:
        load = "no: lacks " + ", ".join(f"{k} ({n})" for k, n in lacks.items())
    elif "numoe" in res["errors"]:
        load = "no: " + res["errors"]["numoe"][:120]
    else:
        load = "yes"
    if "llama.cpp" in res["errors"]:
        load += "; llama.cpp: " + res["errors"]["llama.cpp"][:120]

    def pct(k: str) -> str:
        return f"{100 * res[k]:.1f} %" if k in res else "-"

    def dif(k: str) -> str:
        return f"{res[k][0]:.4f} / {res[k][1]:.3f}" if k in res else "-"

    tg = res.get("tg", {})
    rs = res.get("ratios")
    ratio = f"{statistics.median(rs):.2f}x ({min(rs):.2f}-{max(rs):.2f})" if rs else "-"
    ex = res.get("exact", {})
    lbs = ("numoe", "llama.cpp")
    ex1 = " / ".join(f"{100 * ex[lb][0]:.1f} %" if lb in ex else "-" for lb in lbs)
    ex2 = " / ".join(f"{ex[lb][1]:.4f}" if lb in ex else "-" for lb in lbs)
    cells = [arch, ftype, types, load, pct("numoe_step"), pct("numoe_batch"), pct("llama_self"),
             dif("numoe_diff"), dif("llama_diff"), ex1 if ex else "-", ex2 if ex else "-",
             f"{tg['numoe']:.1f}" if "numoe" in tg else "-",
             f"{tg['llama.cpp']:.1f}" if "llama.cpp" in tg else "-", ratio]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--peer-python", dest="peer", default="/tmp/peer/bin/python",
                    help="python of a venv with llama-cpp-python")  # fmt: skip
    ap.add_argument("--full", action="store_true", help="12-layer Qwen3-30B-A3B, DeepSeek-V2-Lite")
    ap.add_argument("--arch", default=None, help="comma list of qwen3moe, deepseek2, llama")
    ap.add_argument("--types", default=",".join(TYPES), help="comma list of llama.cpp ftypes")
    ap.add_argument("-t", "--threads", type=int, default=None, help="default: physical cores")
    ap.add_argument("--seq", type=int, default=256, help="positions of the token sequence")
    ap.add_argument("-n", "--n-gen", type=int, default=64, help="tokens of the tg test")
    ap.add_argument("-r", "--rounds", type=int, default=3, help="alternating tg rounds")
    ap.add_argument("--reps", type=int, default=2, help="timed tg runs per turn")
    ap.add_argument("--seed", type=int, default=0, help="of the token sequence")
    ap.add_argument("--dir", default="/tmp/llq", help="where the models are written")
    ap.add_argument("--keep", action="store_true", help="keep the models (reused next run)")
    ap.add_argument("--layers", type=int, default=None, help="override the layer count")
    ap.add_argument("--no-repack", action="store_true", help="llama.cpp without weight repack")
    ap.add_argument("--exact", choices=("yes", "no"), default=None,
                    help="also run each file's weights dequantized to F32 (default: yes, "
                    "no with --full: F32 files of 4x the size)")  # fmt: skip
    a = ap.parse_args()

    from numoe import _cpu
    from numoe.bench import isa_line
    from numoe.gguf import open_gguf
    from numoe.runtime.numa import plan_threads
    from numoe.runtime.topology import Topology

    threads = plan_threads(Topology.read(), a.threads).threads
    table = FULL if a.full else SMALL
    exact = (a.exact or ("no" if a.full else "yes")) == "yes"
    archs = a.arch.split(",") if a.arch else list(table)
    types = a.types.split(",")
    for x in archs:
        if x not in table:
            ap.error(f"--arch {x}: one of {', '.join(table)}")
    root = Path(a.dir)
    root.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    work = Path(tempfile.mkdtemp(prefix="llq_", dir=root))
    rows, notes, infos, f32 = [], [], {}, []
    load0 = os.getloadavg()[0]
    try:
        for arch in archs:
            preset, layers, over = table[arch]
            layers = a.layers or layers
            tag = f"{arch}-{'small' if over else preset}-{layers}L"
            f16 = root / f"{tag}-F16.gguf"
            cfg, meta = model_meta(preset, layers, over)
            a.n_vocab = cfg.n_vocab
            if not f16.exists():
                log(f"writing {f16} ...")
                made.append(f16)
                synth_f16(f16, cfg, meta)
            for ftype in types:
                q = root / f"{tag}-{ftype}.gguf"
                if not q.exists():
                    err = quantize(a.peer, f16, q, ftype, threads, work)
                    if err:
                        rows.append(f"| {arch} | {ftype} | - | quantize failed |" + " - |" * 10)
                        notes.append(f"{arch} {ftype}: llama.cpp's quantizer failed: {err}")
                        continue
                    made.append(q)
                g = open_gguf(q)  # the file's types, and those numoe lacks
                counts = Counter(t.qtype.name for t in g.tensors.values())
                lacks = Counter(t.name for t in g.unsupported.values())
                deq = root / f"{tag}-{ftype}-deq-F32.gguf"
                why = dequantized(q, deq, cfg, meta) if exact else "not asked"
                if why == "":
                    made.append(deq)
                res = check_file(q, a, threads, work, deq if why == "" else None)
                deq.unlink(missing_ok=True)
                if "f32" in res:
                    f32.append(res["f32"])
                    if res["f32"][0] < 1 or res["f32"][1] > 0.05:
                        notes.append(f"{arch} {ftype}: on its dequantized F32 file numoe and "
                                     f"llama.cpp differ: top-1 {100 * res['f32'][0]:.1f} %, "
                                     f"max |Δ|/σ {res['f32'][1]:.3f}")  # fmt: skip
                infos.update(res["info"])
                rows.append(row(arch, ftype, counts, lacks, res))
                for label, err in res["errors"].items():
                    notes.append(f"{arch} {ftype}: {label} did not load it: {err}")
                self_, step = res.get("llama_self"), res.get("numoe_step")
                if self_ is not None and step is not None and step < self_:
                    n1, n2 = round(step * a.seq), round(self_ * a.seq)
                    notes.append(f"{arch} {ftype}: top-1 target missed: numoe {n1} of {a.seq} "
                                 f"positions < llama.cpp's own {n2}")  # fmt: skip
                if ftype in SPEED_TARGET and res.get("ratios"):
                    m = statistics.median(res["ratios"])
                    if m < SPEED_TARGET[ftype]:
                        notes.append(f"{arch} {ftype}: decode target missed: {m:.2f}x "
                                     f"< {SPEED_TARGET[ftype]}x llama.cpp")  # fmt: skip
                log(rows[-1])
                if not a.keep and q in made:
                    q.unlink()
            if not a.keep and f16 in made:
                f16.unlink()
    finally:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()
        if not a.keep:
            for p in made:
                p.unlink(missing_ok=True)
            if not any(root.iterdir()):
                root.rmdir()

    lc = infos.get("llama.cpp", {})
    print(f"llama_quant_check.py: {'full' if a.full else 'small'} shapes; "
          f"{threads} threads; sequence of {a.seq} random tokens (seed {a.seed}); tg{a.n_gen}, "
          f"{a.rounds} rounds x {a.reps} timed runs per engine, rotated order")  # fmt: skip
    print(f"numoe {infos.get('numoe', {}).get('version', '?')}: {isa_line()}")
    print(f"llama.cpp: llama-cpp-python {lc.get('version', '?')}; system info: "
          f"{lc.get('system_info', '?')}")  # fmt: skip
    for arch in archs:
        preset, layers, over = table[arch]
        shape = f", {over}" if over else ""
        print(f"- {arch}: preset {preset}, {a.layers or layers} layers{shape}")
    print("\ntop-1: argmax agreement with llama.cpp's batched logits (one eval, logits_all); "
          "|Δ|/σ: |logits - llama.cpp batched| / std of llama.cpp batched at the position, "
          "mean / max; exact: llama.cpp batched on the file's weights dequantized to F32 (numoe "
          "1-tok and llama.cpp batched on the quantized file against it)")  # fmt: skip
    if f32:
        lo, hi = 100 * min(x for x, _ in f32), max(y for _, y in f32)
        print(f"on the {len(f32)} dequantized F32 files, numoe 1-tok vs llama.cpp batched: "
              f"top-1 >= {lo:.1f} %, max |Δ|/σ <= {hi:.4f}")  # fmt: skip
    print("| arch | ftype | tensor types | numoe loads | top-1 numoe 1-tok | top-1 numoe batch "
          "| top-1 llama.cpp 1-tok | \\|Δ\\|/σ numoe 1-tok | \\|Δ\\|/σ llama.cpp 1-tok "
          "| vs exact: top-1 numoe / llama.cpp | vs exact: \\|Δ\\|/σ mean numoe / llama.cpp "
          "| tg numoe t/s | tg llama.cpp t/s | numoe / llama.cpp per round |")  # fmt: skip
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(r)
    print()
    for n in notes or ["all targets met"]:
        print(f"- {n}")
    print(f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f}; ISA {_cpu.isa()}")


if __name__ == "__main__":
    main()
