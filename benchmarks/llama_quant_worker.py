"""The engine side of benchmarks/llama_quant_check.py, in the interpreter of each engine:

    PEER_PYTHON benchmarks/llama_quant_worker.py quantize SPEC.json   # llama.cpp's quantizer
    PYTHON benchmarks/llama_quant_worker.py numoe|llama SPEC.json     # an engine, served

`quantize` runs llama_model_quantize (llama-cpp-python) on SPEC's F16 file, with a random
importance matrix when SPEC names the tensors, and prints 'WORKER QUANT {result}'. The
engines speak decode_worker.py's protocol (decode.py's Worker drives them): 'WORKER READY
{info}' once loaded ({"error": ...} when the load failed), then per command line 'WORKER DONE
{result}': {"op": "tg", ...} times tgN runs as decode_worker.py; {"op": "logits", "tokens",
"out"} writes the logits of every position to out-batch.npy (the whole sequence in one call)
and out-step.npy (one token per call); SPEC's "no_repack" loads llama.cpp as its -nr does
(use_extra_bufts off: no CPU weight repack). Only the standard library and numpy at the
top: the peer's venv has no numoe.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from decode_worker import simd_flags


def quantize(spec: dict) -> dict:
    import ctypes

    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{spec['ftype']}")
    p.nthread = spec["threads"]
    keep = []  # the imatrix's buffers must outlive the call
    if spec.get("imatrix"):  # [(tensor name, ne0 * ne2)]: a null-terminated array
        rng = np.random.default_rng(spec["seed"])
        n = len(spec["imatrix"])
        arr = (llama_cpp.llama_model_imatrix_data * (n + 1))()
        for i, (name, size) in enumerate(spec["imatrix"]):
            v = np.ascontiguousarray(rng.uniform(0.1, 2.0, size).astype(np.float32))
            keep += [name.encode(), v]
            arr[i].name = keep[-2]
            arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = size
        arr[n].name = None
        p.imatrix = arr
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(spec["src"].encode(), spec["dst"].encode(), ctypes.byref(p))
    return {"rc": int(rc), "seconds": time.perf_counter() - t0}


def numoe_engine(spec: dict):
    import torch

    from numoe import __version__, _cpu
    from numoe.bench import Test, run_test
    from numoe.engine import Session
    from numoe.gguf import open_gguf
    from numoe.models import load
    from numoe.runtime.settings import Runtime

    rt = Runtime.create(threads=spec["threads"])
    g = open_gguf(spec["model"])
    g.check_supported()
    cfg, model = load(g, runtime=rt)
    info = {"version": __version__, "isa": _cpu.isa(), "threads": rt.threads}

    def run(cmd: dict) -> dict:
        if cmd["op"] == "tg":
            t = Test(0, cmd["n_gen"])
            return {"seconds": run_test(model, t, cfg.n_vocab, 512, cmd["reps"], True, cmd["seed"])}
        toks = cmd["tokens"]
        with torch.inference_mode():
            cache = model.new_cache(len(toks))
            x = model.forward(torch.tensor(toks, dtype=torch.long), cache, 0, len(toks))
            np.save(cmd["out"] + "-batch.npy", x.float().cpu().numpy())
            sess = Session(model, n_ctx=len(toks))
            rows = [sess.step(t).float().cpu().numpy() for t in toks]
        np.save(cmd["out"] + "-step.npy", np.stack(rows))
        return {}

    return info, run


def llama_engine(spec: dict):
    import llama_cpp
    from llama_cpp import Llama

    n = spec["n_ctx"]
    if spec.get("no_repack"):  # llama.cpp's -nr: no extra buffer types (no CPU weight repack)
        import llama_cpp.llama_cpp as lib  # what llama_cpp.Llama calls

        default = lib.llama_model_default_params

        def no_repack():
            p = default()
            p.use_extra_bufts = False
            return p

        lib.llama_model_default_params = no_repack
    kw = {"n_threads": spec["threads"], "n_threads_batch": spec["threads"], "n_batch": n,
          "n_ubatch": n, "n_ctx": n, "logits_all": True, "use_mmap": True}  # fmt: skip
    llm = Llama(model_path=spec["model"], verbose=False, **kw)
    sysinfo = llama_cpp.llama_print_system_info()
    info = {
        "version": llama_cpp.__version__,
        "system_info": (sysinfo.decode() if isinstance(sysinfo, bytes) else str(sysinfo)).strip(),
        "simd": simd_flags(),
        "flags": kw,
    }

    def run(cmd: dict) -> dict:
        if cmd["op"] == "tg":
            rng, secs = random.Random(cmd["seed"]), []
            for r in range(cmd["reps"] + 1):  # run 0: warm-up
                toks = [rng.randrange(llm.n_vocab()) for _ in range(cmd["n_gen"])]
                llm.reset()
                t0 = time.perf_counter()
                for t in toks:
                    llm.eval([t])
                if r:
                    secs.append(time.perf_counter() - t0)
            return {"seconds": secs}
        toks = cmd["tokens"]
        llm.reset()
        llm.eval(toks)  # one batch (n_batch = n_ctx)
        np.save(cmd["out"] + "-batch.npy", np.array(llm.scores[: len(toks)], dtype=np.float32))
        llm.reset()
        for t in toks:
            llm.eval([t])
        np.save(cmd["out"] + "-step.npy", np.array(llm.scores[: len(toks)], dtype=np.float32))
        return {}

    return info, run


def main() -> None:
    kind, spec = sys.argv[1], json.loads(Path(sys.argv[2]).read_text())
    if kind == "quantize":
        print("WORKER QUANT " + json.dumps(quantize(spec)), flush=True)
        return
    try:
        info, run = (numoe_engine if kind == "numoe" else llama_engine)(spec)
    except Exception as e:  # noqa: BLE001  (a file the engine cannot load: a row, not a crash)
        print("WORKER READY " + json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        return
    print("WORKER READY " + json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            print("WORKER BYE", flush=True)
            return
        print("WORKER DONE " + json.dumps(run(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
