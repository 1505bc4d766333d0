"""Flags and set-up shared by the commands that run a model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's help ends with its default: ' (default: X)' is added unless the text
    already says 'default'; on/off flags say '(default: off)', required ones '(required)'.
    A flag whose default is None must say its default in words."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or "default" in text:
            return text
        if action.required:
            return text + " (required)"
        if action.default is None:
            return text
        if action.default is argparse.SUPPRESS:
            return text
        if action.default is False and action.const is True:
            return text + " (default: off)"
        return text + " (default: %(default)s)"


HELP_FMT = HelpFormatter


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
    from ..runtime.numa import parse_numa_nodes

    try:
        parse_numa_nodes(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return s


def int_list(s: str, low: int = 1) -> list[int]:
    """'1,2,4' -> [1, 2, 4] (each >= low): a sweep."""
    try:
        vals = [int(x) for x in s.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers such as 1,2,4, got {s!r}") from None
    if any(v < low for v in vals):
        raise argparse.ArgumentTypeError(f"each value must be >= {low}, got {s!r}")
    return vals


def count_list(s: str) -> list[int]:
    """-p / -n / -d of bench: token counts (-p, -n: 0 = no such test)."""
    return int_list(s, low=0)


def policy_list(s: str) -> list[str]:
    from ..runtime.numa import POLICIES

    vals = [x.strip() for x in s.split(",")]
    bad = [v for v in vals if v not in POLICIES]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown policy {bad[0]!r}: choose from {', '.join(POLICIES)}"
        )
    return vals


def add_thread_args(g, sweep: str | None = None) -> None:
    """-t/--threads/--cpu-infer, --numa-nodes, --smt, --numa: the thread plan and policy.

    Settings (numoe.config): a flag not given is absent from the parsed namespace, and
    :func:`resolve_settings` fills it from NUMOE_*, the config file or the default.
    sweep="bench": -t and --numa take comma lists (one run per combination); sweep="tune":
    comma lists too, whose default is the tune sweep (not the settings)."""
    from ..config import setting_help
    from ..runtime.numa import POLICIES

    S = argparse.SUPPRESS
    if sweep is None:
        t_kw = {"type": positive_int, "default": S}
        n_kw = {"choices": POLICIES, "default": S}
        t_help = "CPU threads, split over the NUMA nodes in proportion to their cores"
        n_help = (
            "routed-expert weights: shard = split across the nodes (one copy), replicate = a "
            "copy per node, off = straight from the memory map; auto = shard on more than one "
            "node, else off"
        )
    else:
        t_kw = {"type": int_list, "metavar": "LIST", "default": S if sweep == "bench" else None}
        n_kw = {"type": policy_list, "metavar": "LIST", "default": t_kw["default"]}
        t_help = "CPU thread counts, a comma list to sweep (e.g. 1,2,4)"
        n_help = "NUMA policies (auto, shard, replicate, off), a comma list to sweep"
    if sweep == "tune":
        t_help += (
            " (default: powers of two from an eighth of the physical cores up, three quarters "
            "of them and all of them)"
        )
        n_help += " (default: shard,off on more than one NUMA node, else off)"
    else:
        t_help, n_help = setting_help("threads", t_help), setting_help("numa", n_help)
    g.add_argument("-t", "--threads", "--cpu-infer", dest="threads", help=t_help, **t_kw)
    g.add_argument(
        "--numa-nodes", type=numa_nodes_arg, default=S, metavar="LIST",
        help=setting_help("numa_nodes", "NUMA nodes to run on, e.g. 0,1 or 0-3; a node listed "
                          "twice (0,0) becomes two logical nodes splitting its cores"),
    )  # fmt: skip
    g.add_argument(
        "--smt", action="store_const", const=True, default=S,
        help=setting_help("smt", "use SMT siblings too, not only one thread per physical core"),
    )  # fmt: skip
    g.add_argument("--numa", help=n_help, **n_kw)


def resolve_settings(args, names=None) -> dict:
    """Settings not given as flags (`names`; None: the thread settings), from NUMOE_* / the
    config file / the defaults (numoe.config); ConfigError (one line) for a bad file or
    variable."""
    from .. import config

    return config.resolve(args, config.THREAD_SETTINGS if names is None else names)


# KV cache element types, llama.cpp's -ctk / -ctv names (numoe.cache.CACHE_TYPES; kept here
# too so that `numoe --help` need not import torch).
CACHE_TYPES = ("f32", "f16")


def cache_type_arg(s: str) -> str:
    """-ctk / -ctv: a name of CACHE_TYPES, else a flag error listing them."""
    if s not in CACHE_TYPES:
        raise argparse.ArgumentTypeError(
            f"unknown KV cache type {s!r}: choose from {', '.join(CACHE_TYPES)}"
        )
    return s


def cache_types(args) -> tuple[str, str]:
    """(type_k, type_v) from -ctk / -ctv."""
    return args.cache_type_k, args.cache_type_v


def add_cache_type_args(g) -> None:
    """-ctk/--cache-type-k, -ctv/--cache-type-v (llama.cpp's flags and default, f16)."""
    for short, name, what in (("-ctk", "k", "keys"), ("-ctv", "v", "values")):
        g.add_argument(
            short, f"--cache-type-{name}", dest=f"cache_type_{name}", type=cache_type_arg,
            default="f16", metavar="TYPE",
            help=f"KV cache type of the {what}: {', '.join(CACHE_TYPES)} (f16: half the memory"
            " and cache reads of f32, values rounded to nearest even; MLA models store the "
            "latent and rope key as -ctk, -ctv does not apply to them, as in llama.cpp)",
        )  # fmt: skip


def add_model_args(p: argparse.ArgumentParser, run: bool = True) -> None:
    """-m, --device, -b, -ctk, -ctv; with `run` (run, chat) also the thread flags and -c (bench
    and tune add their own sweepable thread flags)."""
    g = p.add_argument_group("model and devices")
    g.add_argument(
        "-m", "--model", "--gguf-path", dest="model", default=None,
        help="GGUF file; a split model: its first shard (-00001-of-N.gguf) or the directory "
        "holding it (default: a built-in random-weight tiny model, made on first use)",
    )  # fmt: skip
    g.add_argument(
        "--device", default="cpu",
        help="device for attention, dense layers, shared experts and the output head: "
        "cpu, cuda or cuda:N; routed experts always run on the CPU",
    )  # fmt: skip
    if run:
        add_thread_args(g)
        g.add_argument("-c", "--ctx-size", type=positive_int, default=4096, help="context tokens")
    g.add_argument(
        "-b", "--batch-size", type=positive_int, default=512, help="prefill chunk, in tokens"
    )
    add_cache_type_args(g)


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
    from ..config import cache_dir
    from ..synth import DEFAULT_PRESET, synth

    cache = cache_dir()
    path = cache / f"{DEFAULT_PRESET}-q8_0.gguf"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        synth(DEFAULT_PRESET, tmp, "Q8_0")
        tmp.rename(path)
    return path


def make_runtime(threads, numa_nodes, smt, numa_policy, device="cpu", topology=None):
    """The `Runtime` for -t, --numa-nodes, --smt, --numa and --device values; FlagError for a
    node list this machine cannot honour, DeviceError for a bad device."""
    from ..runtime.numa import PlanError, parse_numa_nodes
    from ..runtime.settings import Runtime

    nodes = parse_numa_nodes(numa_nodes) if numa_nodes else None
    try:
        return Runtime.create(threads, nodes, smt, numa_policy, device, topology=topology)
    except PlanError as e:
        raise FlagError(f"--numa-nodes {numa_nodes}: {e}") from None


def runtime_from_args(args):
    """The `Runtime` from the resolved thread settings and --device; says in one line when
    NUMA placement has to do without libnuma."""
    from ..runtime.numa import fallback_notice

    rt = make_runtime(args.threads, args.numa_nodes, args.smt, args.numa, args.device)
    notice = fallback_notice() if rt.policy.name != "off" else None
    if notice:
        print(notice, file=sys.stderr)
    return rt


def load_model(path: Path, runtime):
    """(GGUFFile, config, model); a progress bar on a terminal, one line with the time."""
    from ..gguf import open_gguf
    from ..models import load
    from ..progress import LoadProgress, size

    g = open_gguf(path)
    prog = LoadProgress(g, path.name)
    g.on_tensor = prog
    try:
        cfg, model = load(g, runtime)
    except BaseException:
        prog.clear()
        raise
    finally:
        g.on_tensor = None
    files = f"{len(g.paths)} files, " if len(g.paths) > 1 else ""
    prog.finish(
        f"numoe: loaded {path.name} ({g.arch}, {cfg.n_layer} layers, {files}"
        f"{len(prog.seen)} tensors, {size(prog.bytes)}) with {runtime}, in {prog.elapsed:.2f} s"
    )
    return g, cfg, model


def model_path(args) -> Path:
    """-m, or the built-in model (said on stderr)."""
    if args.model:
        return Path(args.model)
    path = default_model_path()
    print(f"numoe: no -m given: using the built-in random-weight model {path}", file=sys.stderr)
    return path


def load_from_args(args):
    """(config, model, tokenizer) from -m/--device and the thread settings (flags, NUMOE_*,
    config file); load progress and time on stderr."""
    from ..text import Tokenizer

    resolve_settings(args)
    runtime = runtime_from_args(args)
    path = model_path(args)
    g, cfg, model = load_model(path, runtime)
    return cfg, model, Tokenizer.from_gguf(g)
