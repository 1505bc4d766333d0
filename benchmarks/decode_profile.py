"""Where a decode step's time goes: per kind of C++ op (the linear ops by shape and type, the
fused projections, the MoE op), ms per token, GB/s of the weights it reads and % of the
machine's read bandwidth, and the rest (Python and torch between the ops). The table times
the ops from Python, so it runs the Python block loop (models/base.py Block.__call__); numoe
decodes through one C++ call per block (DecodeBlock), whose ms/token is printed under it. With
--compare, tg tokens/s of numoe's decode features switched off one at a time, runs
alternating in one process (medians and ratios: this machine's bandwidth drifts between runs).

    python benchmarks/decode_profile.py -m model.gguf [-n 64] [-t 2] [--compare] [-r 4]

--compare modes (the decode path through model.forward(path=...), the rest monkeypatched here
for the measurement only):
  all        numoe as it ships: path "auto" (one C++ call per block, DecodeBlock, where
             the model can; the table says how many steps took it)
  py-blocks  path "torch": the Python block loop (each op called from Python), as the modes
             below
  torch-attn one token's attention (GQA or MLA: norms, ropes, cache store, softmax(qK)V) by
             torch instead of numoe._cpu.gqa_decode / mla_decode
  torch-ops  torch-attn, and RMS norm (also after the residual add), rotary embedding,
             routing and silu(g) * u by torch; q/k/v etc. as separate calls
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch.nn.functional as F

from numoe import _cpu, cache
from numoe.bench import Test, isa_line, run_test
from numoe.gguf import open_gguf
from numoe.layers import attention, ffn, linear, mla, moe, norms, rope
from numoe.models import base, load
from numoe.roofline import token_bytes
from numoe.runtime.bandwidth import read_bandwidth
from numoe.runtime.settings import Runtime

LINEAR_USERS = (attention, mla, ffn, moe)  # modules that call linear_many
NORM_USERS = (attention, mla)  # modules that call rms_norm (base: add_rms_norm)


def op_name(lin) -> str:
    op = lin.op
    return f"linear {op.n_out}x{op.n_in} {type_name(op.type_id)}" if op else "linear (torch)"


def type_name(type_id: int) -> str:
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType(type_id).name


def set_path(model, path: str) -> None:
    """Make every forward of `model` take `path` ("auto", "torch", "cpp"): the engine's
    Session calls model.forward without one."""
    real = type(model).forward
    if path == "auto":
        model.__dict__.pop("forward", None)
    else:
        model.forward = lambda *a, **k: real(model, *a, **{**k, "path": path})


def profile(model, n_vocab: int, n: int) -> tuple[float, dict]:
    """Seconds per token of n decode steps, and per op kind [seconds, calls, bytes per call]."""
    acc = defaultdict(lambda: [0.0, 0, 0])
    on = [False]
    call, many, experts = linear.Linear.__call__, linear.linear_many, moe.Experts.__call__

    def timed(key, nbytes, f, *a):
        if not on[0]:
            return f(*a)
        t0 = time.perf_counter()
        y = f(*a)
        e = acc[key]
        e[0] += time.perf_counter() - t0
        e[1] += 1
        e[2] = nbytes
        return y

    def lin_call(self, x):
        return timed(op_name(self), self.op.nbytes if self.op else 0, call, self, x)

    def lin_many(lins, x):
        key = " + ".join(op_name(lin).removeprefix("linear ") for lin in lins)
        nbytes = sum(lin.op.nbytes for lin in lins if lin.op)
        return timed(f"fused {key}", nbytes, many, lins, x)

    def ex_call(self, x, ids, w):
        per = self.op.expert_nbytes if self.op is not None else 0
        return timed("MoE op (k experts)", per * ids.shape[1], experts, self, x, ids, w)

    linear.Linear.__call__ = lin_call
    moe.Experts.__call__ = ex_call
    for m in LINEAR_USERS:
        m.linear_many = lin_many
    try:
        # warm-up: a prefill touches every expert (so no page of the map faults in later)
        run_test(model, Test(512, 0), n_vocab, 512, 1, warmup=False)
        run_test(model, Test(0, 8), n_vocab, 512, 1, warmup=False)
        on[0] = True
        set_path(model, "torch")  # the Python block loop: each op timed from Python
        total = run_test(model, Test(0, n), n_vocab, 512, 1, warmup=False)[0]
    finally:
        set_path(model, "auto")
        linear.Linear.__call__, moe.Experts.__call__ = call, experts
        for m in LINEAR_USERS:
            m.linear_many = many
    return total / n, {k: [v[0] / n, v[1] / n, v[2]] for k, v in acc.items()}


def print_stages(model, n_vocab: int, n: int, bw: float) -> None:
    """The same table for numoe's decode as it ships: one C++ call per block, timed inside
    per stage (numoe._cpu.decode_profile); the rest is the output head and Python."""
    run_test(model, Test(0, n), n_vocab, 512, 0)  # warm-up, not profiled
    _cpu.decode_profiling(True)
    try:
        per_tok = run_test(model, Test(0, n), n_vocab, 512, 1, warmup=False)[0] / n
        stages = _cpu.decode_profile()
    finally:
        _cpu.decode_profiling(False)
    print(f"\nas numoe decodes (one C++ call per block): {per_tok * 1e3:.2f} ms/token")
    print(f"{'stage of the blocks':58} {'ms/token':>9} {'calls':>6} {'GB/s':>6} {'% bw':>6}")
    inside = 0.0
    for name, sec, calls, nbytes in stages:
        if calls:
            inside += sec
            gbps = nbytes / sec / 1e9 if nbytes else 0.0
            pct = f"{100 * gbps / bw:6.1f}" if nbytes else f"{'-':>6}"
            print(f"{name:58} {sec / n * 1e3:9.2f} {calls / n:6.1f} {gbps:6.1f} {pct}")
    print(f"{'output head, embedding, Python':58} {(per_tok - inside / n) * 1e3:9.2f}")


def torch_add_rms_norm(x, y, w, eps):
    s = x if y is None else x + y
    return s, norms.rms_norm_torch(s, w, eps)


def set_features(model, mode: str, saved: dict) -> None:
    """'all', 'py-blocks', 'torch-attn' or 'torch-ops' (the module docstring)."""
    set_path(model, "auto" if mode == "all" else "torch")
    torch_ops = mode == "torch-ops"
    torch_attn = torch_ops or mode == "torch-attn"
    cache._Cache.numpy_layer = (lambda self, layer: None) if torch_attn else saved["numpy_layer"]
    base.add_rms_norm = torch_add_rms_norm if torch_ops else saved["add_rms_norm"]
    ffn.silu_mul = (lambda g, u: F.silu(g) * u) if torch_ops else saved["silu_mul"]
    for m in NORM_USERS:
        m.rms_norm = norms.rms_norm_torch if torch_ops else saved["rms_norm"]
    rope.Rope.apply = rope.Rope.apply_torch if torch_ops else saved["rope"]
    moe.route = moe.route_torch if torch_ops else saved["route"]
    for m in LINEAR_USERS:
        m.linear_many = (
            (lambda lins, x: [lin(x) for lin in lins]) if torch_ops else saved["linear_many"]
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-n", "--n-gen", type=int, default=64)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--compare", action="store_true")
    ap.add_argument("-r", "--reps", type=int, default=4, help="rounds of --compare")
    args = ap.parse_args()

    probe = read_bandwidth()
    g = open_gguf(args.model)
    rt = Runtime.create(threads=args.threads)
    cfg, model = load(g, runtime=rt)
    bw = probe.gbps
    how = "cached" if probe.cached else "measured"
    tb = token_bytes(g, getattr(cfg, "n_expert_used", 0) or 0, getattr(cfg, "n_expert", 0) or 0)
    print(
        f"{args.model}: read bandwidth {bw:.1f} GB/s ({probe.threads} threads, {how} "
        f"{probe.measured}); numoe {rt}"
    )
    print(f"weights read per token: {tb.describe()}")
    print(isa_line())

    per_tok, ops = profile(model, cfg.n_vocab, args.n_gen)
    print(f"\ndecode: {per_tok * 1e3:.2f} ms/token ({1 / per_tok:.2f} tok/s), {args.n_gen} steps")
    print(f"{'op':58} {'ms/token':>9} {'calls':>6} {'GB/s':>6} {'% bw':>6}")
    in_ops = 0.0
    for key, (sec, calls, nbytes) in sorted(ops.items(), key=lambda kv: -kv[1][0]):
        in_ops += sec
        gbps = nbytes * calls / sec / 1e9 if sec else 0.0
        print(f"{key:58} {sec * 1e3:9.2f} {calls:6.1f} {gbps:6.1f} {100 * gbps / bw:6.1f}")
    print(f"{'Python and torch between the ops':58} {(per_tok - in_ops) * 1e3:9.2f}")
    print_stages(model, cfg.n_vocab, args.n_gen, bw)

    if args.compare:
        saved = {
            "rms_norm": norms.rms_norm,
            "rope": rope.Rope.apply,
            "numpy_layer": cache._Cache.numpy_layer,
            "add_rms_norm": base.add_rms_norm,
            "silu_mul": ffn.silu_mul,
            "route": moe.route,
            "linear_many": linear.linear_many,
        }
        modes = ["all", "py-blocks", "torch-attn", "torch-ops"]
        res = {m: [] for m in modes}
        test = Test(0, args.n_gen)
        cpp = {m: [0, 0] for m in modes}  # decode steps through the C++ blocks, all steps
        for _ in range(args.reps):
            for m in modes:
                set_features(model, m, saved)
                c0 = model.cpp_steps
                res[m] += [args.n_gen / s for s in run_test(model, test, cfg.n_vocab, 512, 2)]
                cpp[m][0] += model.cpp_steps - c0
                cpp[m][1] += 3 * args.n_gen  # the warm-up run and 2 timed
        set_features(model, "all", saved)
        ref = statistics.median(res["all"])
        print(f"\ntg{args.n_gen}, medians of {2 * args.reps} runs, alternating:")
        for m in modes:
            v = statistics.median(res[m])
            print(
                f"  {m:10} {v:7.2f} tok/s  x{v / ref:.3f} of all  ({cpp[m][0]} of {cpp[m][1]} "
                "steps through the C++ blocks)"
            )


if __name__ == "__main__":
    main()
