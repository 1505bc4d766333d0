"""The engine side of benchmarks/decode.py: one engine (a numoe install, or llama.cpp through
llama-cpp-python) in its own interpreter. decode.py starts it as

    PYTHON benchmarks/decode_worker.py numoe|llama SPEC.json

It loads the model once, says 'WORKER READY {info}', then runs the commands it reads from
stdin (one JSON object a line; 'quit' ends) and answers 'WORKER DONE {result}'. Only the
standard library at the top: the interpreter may be another install's (numoe-before) or the
peer's venv, which has no numoe at all.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def kv_cache_text(model) -> str:
    """The KV cache types a default cache of this numoe has (numoe before F16 caches: f32)."""
    types = getattr(model.new_cache(1), "types", None)
    return "/".join(types) if types else "float32"


def simd_flags() -> list[str]:
    """The CPU's avx2 / fma / avx512* / avx_vnni / amx* flags (/proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        return []
    keep = ("avx2", "fma", "avx512", "avx_vnni", "amx")
    return sorted(w for w in line.partition(":")[2].split() if w.startswith(keep))


def numoe_engine(spec: dict):
    """(info, run(cmd) -> seconds list) for the numoe the interpreter imports."""
    import importlib.metadata as md

    import numoe
    from numoe import _cpu
    from numoe.bench import Test, run_test
    from numoe.gguf import open_gguf
    from numoe.models import load

    g = open_gguf(spec["model"])
    threads = spec["threads"]
    try:  # the runtime API (Runtime carries the settings into the model)
        from numoe.runtime.settings import Runtime

        rt = Runtime.create(threads=threads)
        cfg, model = load(g, runtime=rt)
        api = "new (Runtime)"
        flags = {
            "threads": rt.threads,
            "numa": rt.policy.name,
            "torch_threads": f"decode {rt.torch_threads_decode}, prefill "
            f"{rt.torch_threads_prefill or rt.threads}",
        }
    except ImportError:  # the old one: the process-wide pool, a Placement
        from numoe import pool
        from numoe.placement import Placement

        n = pool.set_threads(threads)
        cfg, model = load(g, Placement.parse("cpu"))
        api = "old (pool.set_threads, Placement)"
        flags = {"threads": n, "numa": "off (old API default)", "torch_threads": "numoe's default"}
    path_mode = spec["numoe_path"] if api.startswith("new") else "auto (old API: no path)"
    if path_mode in ("cpp", "torch"):
        real = model.forward

        def forward(*a, **k):
            return real(*a, path=spec["numoe_path"], **k)

        model.forward = forward
    try:
        url = json.loads(md.distribution("numoe").read_text("direct_url.json") or "{}")
        src = url.get("url", "").removeprefix("file://")
    except (md.PackageNotFoundError, ValueError, AttributeError):
        src = ""
    info = {
        "version": getattr(numoe, "__version__", "?"),
        "file": numoe.__file__,
        "source": src or str(Path(numoe.__file__).parent),
        "api": api,
        "isa": _cpu.isa(),
        "simd": simd_flags(),
        "flags": {
            **flags,
            "batch": spec["batch"],
            "decode_path": path_mode,
            "kv_cache": kv_cache_text(model),
            "attention": "numoe's own kernels (flash attention: not a setting)",
        },
        "n_layer": cfg.n_layer,
    }

    def run(cmd: dict) -> dict:
        test = Test(cmd["n_prompt"], cmd["n_gen"], cmd["depth"])
        before = getattr(model, "cpp_steps", None)
        secs = run_test(model, test, cfg.n_vocab, spec["batch"], cmd["reps"], True, cmd["seed"])
        out = {"seconds": secs}
        if before is not None and cmd["n_gen"]:
            out["cpp_steps"] = model.cpp_steps - before
            out["decode_steps"] = (cmd["reps"] + 1) * cmd["n_gen"]
        return out

    return info, run


def llama_engine(spec: dict):
    """(info, run) for llama.cpp through llama-cpp-python."""
    import random

    import llama_cpp
    from llama_cpp import Llama

    n_ctx = spec["n_ctx"]
    kw = {
        "n_threads": spec["threads"],
        "n_threads_batch": spec["threads"],
        "n_batch": spec["batch"],
        "n_ubatch": spec["batch"],
        "n_ctx": n_ctx,
        "flash_attn": bool(spec["flash_attn"]),
        "use_mmap": True,
    }
    llm = Llama(model_path=spec["model"], verbose=False, **kw)
    n_vocab = llm.n_vocab()
    libdir = Path(llama_cpp.__file__).parent / "lib"
    libs = sorted(p.name for p in libdir.glob("lib*.so.*.*")) if libdir.is_dir() else []
    try:
        lv = llama_cpp.llama_version()
        lv = lv.decode() if isinstance(lv, bytes) else str(lv)
    except (AttributeError, TypeError):
        lv = "?"
    sysinfo = llama_cpp.llama_print_system_info()
    sysinfo = sysinfo.decode() if isinstance(sysinfo, bytes) else str(sysinfo)
    info = {
        "version": llama_cpp.__version__,
        "llama_version": lv,
        "libs": libs,
        "system_info": sysinfo.strip(),
        "simd": simd_flags(),
        "flags": {**kw, "kv_cache": "f16 (type_k/type_v default)"},
    }

    def run(cmd: dict) -> dict:
        rng = random.Random(cmd["seed"])
        n, depth = cmd["n_prompt"] or cmd["n_gen"], cmd["depth"]
        secs = []
        for r in range(cmd["reps"] + 1):  # run 0: warm-up
            ctx = [rng.randrange(n_vocab) for _ in range(depth)]
            toks = [rng.randrange(n_vocab) for _ in range(n)]
            llm.reset()
            if ctx:
                llm.eval(ctx)  # the cached prefix, not timed
            t0 = time.perf_counter()
            if cmd["n_prompt"]:
                llm.eval(toks)  # in chunks of n_batch
            else:
                for t in toks:
                    llm.eval([t])
            if r:
                secs.append(time.perf_counter() - t0)
        return {"seconds": secs}

    return info, run


def serve(kind: str, spec_path: str) -> None:
    """Load the model, say 'WORKER READY {info}', then run commands from stdin (a JSON object
    per line; 'quit' ends) and answer 'WORKER DONE {result}'. Replies carry a prefix: a C
    library may print to the same stdout."""
    spec = json.loads(Path(spec_path).read_text())
    info, run = (numoe_engine if kind == "numoe" else llama_engine)(spec)
    print("WORKER READY " + json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            print("WORKER BYE", flush=True)
            return
        print("WORKER DONE " + json.dumps(run(json.loads(line))), flush=True)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
