"""Flags and set-up shared by the commands that run a model."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HELP_FMT = argparse.ArgumentDefaultsHelpFormatter


def positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


class FlagError(ValueError):
    """A flag value this machine cannot honour (e.g. --numa-nodes 5 on a one-node machine):
    one line, exit status 2, as argparse's own flag errors."""


def numa_nodes_arg(s: str) -> str:
    """--numa-nodes syntax ('0,1', '0-3', '0,0'); kept as text for messages."""
    from ..numa import parse_numa_nodes

    try:
        parse_numa_nodes(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return s


def add_thread_args(g) -> None:
    """-t/--threads/--cpu-infer, --numa-nodes, --smt, --numa: the thread plan and policy."""
    from ..numa import POLICIES

    g.add_argument(
        "-t", "--threads", "--cpu-infer", dest="threads", type=positive_int, default=None,
        help="CPU threads, split over the NUMA nodes in proportion to their cores "
        "(default: the physical cores this process may use)",
    )  # fmt: skip
    g.add_argument(
        "--numa-nodes", type=numa_nodes_arg, default=None, metavar="LIST",
        help="NUMA nodes to run on, e.g. 0,1 or 0-3 (default: every node this process may "
        "use); a node listed twice (0,0) becomes two logical nodes splitting its cores",
    )  # fmt: skip
    g.add_argument(
        "--smt", action="store_true",
        help="use SMT siblings too (default: one thread per physical core)",
    )  # fmt: skip
    g.add_argument(
        "--numa", choices=POLICIES, default="auto",
        help="routed-expert weights: shard = split across the nodes (one copy), replicate = "
        "a copy per node, off = straight from the memory map; auto = shard on more than "
        "one node, else off",
    )  # fmt: skip


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and devices")
    g.add_argument(
        "-m", "--model", "--gguf-path", dest="model", default=None,
        help="GGUF file (default: a built-in random-weight tiny model, made on first use)",
    )  # fmt: skip
    g.add_argument(
        "--device", default="cpu",
        help="device for attention, dense layers, shared experts and the output head: "
        "cpu, cuda or cuda:N; routed experts always run on the CPU",
    )  # fmt: skip
    add_thread_args(g)
    g.add_argument("-c", "--ctx-size", type=positive_int, default=4096, help="context tokens")
    g.add_argument(
        "-b", "--batch-size", type=positive_int, default=512, help="prefill chunk, in tokens"
    )


def add_sampling_args(p: argparse.ArgumentParser, n_predict: int = 128) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument(
        "-n", "--n-predict", type=int, default=n_predict,
        help="tokens to generate (-1: until end of text or a full context)",
    )  # fmt: skip
    g.add_argument("--temp", type=float, default=0.8, help="temperature; 0 = greedy")
    g.add_argument("--top-k", type=int, default=40, help="top-k; 0 = off")
    g.add_argument("--top-p", type=float, default=0.95, help="top-p; 1 = off")
    g.add_argument("--min-p", type=float, default=0.05, help="min-p; 0 = off")
    g.add_argument("--repeat-penalty", type=float, default=1.0, help="1 = off")
    g.add_argument("--repeat-last-n", type=int, default=64, help="tokens the penalty looks at")
    g.add_argument("-s", "--seed", type=int, default=None, help="sampling seed (default random)")
    g.add_argument("--ignore-eos", action="store_true", help="keep generating past EOS")


def sampler_from_args(args):
    from ..sampling import Sampler, SamplingParams

    params = SamplingParams(
        temperature=args.temp,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repeat_penalty=args.repeat_penalty,
        repeat_last_n=args.repeat_last_n,
        seed=args.seed,
    )
    return Sampler(params)


def default_model_path() -> Path:
    """The built-in default: a tiny random-weight model, written once to the cache."""
    from ..synth import DEFAULT_PRESET, synth

    cache = Path(os.environ.get("NUMOE_CACHE", Path.home() / ".cache" / "numoe"))
    path = cache / f"{DEFAULT_PRESET}-q8_0.gguf"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        synth(DEFAULT_PRESET, tmp, "Q8_0")
        tmp.rename(path)
    return path


def plan_from_args(args, topology=None):
    """(ThreadPlan, NumaPolicy) from -t, --numa-nodes, --smt, --numa; FlagError for a node
    list this machine cannot honour."""
    from ..numa import PlanError, parse_numa_nodes, plan_threads, resolve_policy
    from ..topology import Topology

    topo = topology if topology is not None else Topology.read()
    nodes = parse_numa_nodes(args.numa_nodes) if args.numa_nodes else None
    try:
        plan = plan_threads(topo, args.threads, nodes, args.smt)
    except PlanError as e:
        raise FlagError(f"--numa-nodes {args.numa_nodes}: {e}") from None
    return plan, resolve_policy(args.numa, plan)


def set_threads(args) -> int:
    """numoe's pool (pinned, from the thread plan) and torch's intra-op threads, from the
    thread flags; records the plan and NUMA policy (numoe.numa.active) and says in one line
    when the policy is not carried out yet. Returns the thread count."""
    import torch

    from .. import numa, pool

    plan, policy = plan_from_args(args)
    n = pool.set_plan(plan)
    torch.set_num_threads(n)
    numa.set_active(plan, policy)
    if policy.name != "off":
        numa.fallback_notice()
    notice = policy.pending_notice()
    if notice:
        print(notice, file=sys.stderr)
    return n


def load_from_args(args):
    """(config, model, tokenizer) from -m/--device/-t; progress and timing on stderr."""
    from ..gguf import open_gguf
    from ..models import load
    from ..placement import Placement
    from ..tokenizer import Tokenizer

    placement = Placement.parse(args.device)
    threads = set_threads(args)
    path = Path(args.model) if args.model else None
    if path is None:
        path = default_model_path()
        print(f"numoe: no -m given: using the built-in random-weight model {path}", file=sys.stderr)
    t0 = time.perf_counter()
    g = open_gguf(path)
    tok = Tokenizer.from_gguf(g)
    cfg, model = load(g, placement)
    print(
        f"numoe: loaded {path.name} ({g.arch}, {cfg.n_layer} layers) on {placement}, "
        f"{threads} threads, in {time.perf_counter() - t0:.2f} s",
        file=sys.stderr,
    )
    return cfg, model, tok
