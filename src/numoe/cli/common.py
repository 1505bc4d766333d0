"""Flags and set-up shared by the commands that run a model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .flags import (
    CACHE_TYPES,
    cache_type_arg,
    ctx_size_arg,
    gpu_layers_arg,
    int_at_least,
    int_list,
    n_predict_arg,
    numa_nodes_arg,
    penalty_arg,
    policy_list,
    positive_int,
    prob_arg,
    repeat_last_n_arg,
    temp_arg,
    top_k_arg,
)


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


def plural(n: int, word: str) -> str:
    """'1 thread', '2 threads'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def note(text: str) -> None:
    """One line on stderr, as numoe's other notes."""
    print(f"numoe: {text}", file=sys.stderr)


class FlagError(ValueError):
    """A flag value this machine cannot honour (e.g. --numa-nodes 5 on a one-node machine):
    one line, exit status 2, as argparse's own flag errors."""


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
    g.add_argument(
        "-t", "--threads", "--cpu-infer", "--cpu_infer", dest="threads", help=t_help, **t_kw
    )
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
    """-m, --device, -ngl, --cpu-moe, -b, -ctk, -ctv; with `run` (run, chat, serve) also the
    thread flags and -c (bench and tune add their own sweepable thread flags)."""
    S = argparse.SUPPRESS
    g = p.add_argument_group("model and devices")
    g.add_argument(
        "-m", "--model", "--gguf-path", "--gguf_path", dest="model", default=None,
        help="GGUF file; a split model: its first shard (-00001-of-N.gguf) or the directory "
        "holding it (default: a built-in random-weight tiny model, made on first use)",
    )  # fmt: skip
    g.add_argument(
        "--model_path", "--model-path", dest="model_config_dir", default=S, metavar="DIR",
        help="KTransformers' Hugging Face config directory: accepted and not needed (numoe "
        "reads the architecture, tokenizer and chat template from the GGUF) (default: none)",
    )  # fmt: skip
    g.add_argument(
        "--device", default="cpu",
        help="device for attention, dense layers, shared experts and the output head: "
        "cpu, cuda or cuda:N; routed experts always run on the CPU",
    )  # fmt: skip
    g.add_argument(
        "-ngl", "--n-gpu-layers", "--gpu-layers", dest="n_gpu_layers", type=gpu_layers_arg,
        default=S, metavar="N",
        help="llama.cpp's flag in numoe's terms: N > 0 (or all, auto, -1) = --device cuda "
        "(attention, dense layers, shared experts and the head on the GPU; routed experts "
        "stay on the CPU), 0 = --device cpu; without a CUDA GPU a note and the CPU "
        "(default: --device)",
    )  # fmt: skip
    g.add_argument(
        "--cpu-moe", action="store_const", const=True, default=S,
        help="llama.cpp's flag: routed experts on the CPU, which is where numoe always runs "
        "them (accepted, nothing to change) (default: on)",
    )  # fmt: skip
    g.add_argument(
        "--n-cpu-moe", type=int_at_least(0), default=S, metavar="N",
        help="llama.cpp's flag: the routed experts of the first N layers on the CPU; numoe "
        "runs all of them there (accepted, nothing to change) (default: all layers)",
    )  # fmt: skip
    if run:
        add_thread_args(g)
        g.add_argument(
            "-c", "--ctx-size", type=ctx_size_arg, default=4096,
            help="context tokens; 0 = the model's trained context (its GGUF context_length)",
        )  # fmt: skip
    g.add_argument(
        "-b", "--batch-size", type=positive_int, default=512, help="prefill chunk, in tokens"
    )
    add_cache_type_args(g)


def add_sampling_args(p: argparse.ArgumentParser, n_predict: int = 128) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument(
        "-n", "--n-predict", "--max_new_tokens", "--max-new-tokens", dest="n_predict",
        type=n_predict_arg, default=n_predict,
        help="tokens to generate (-1: until end of text or a full context)",
    )  # fmt: skip
    g.add_argument("--temp", type=temp_arg, default=0.8, help="temperature; 0 = greedy")
    g.add_argument("--top-k", type=top_k_arg, default=40, help="top-k; 0 = off")
    g.add_argument("--top-p", type=prob_arg, default=0.95, help="top-p; 1 = off")
    g.add_argument("--min-p", type=prob_arg, default=0.05, help="min-p; 0 = off")
    g.add_argument("--repeat-penalty", type=penalty_arg, default=1.0, help="1 = off")
    g.add_argument(
        "--repeat-last-n", type=repeat_last_n_arg, default=64,
        help="tokens the penalty looks at (-1: all)",
    )  # fmt: skip
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


def setting_label(args, name: str, value=None) -> str:
    """Where the value of a thread setting came from, as the user wrote it: '-t 64',
    'NUMOE_THREADS=64' or 'config FILE: numa_nodes = "5"' (so that a message never names a
    flag that was not passed)."""
    from ..config import SETTINGS, TABLE, toml_value

    s = SETTINGS[name]
    value = getattr(args, name, None) if value is None else value
    r = getattr(args, "settings", {}).get(name)
    source = r.source if r is not None else f"flag {s.flag}"
    if source.startswith("env "):
        return f"{s.env}={value}"
    if source.startswith("config "):
        return f"{source}: [{TABLE}] {name} = {toml_value(value)}"
    return f"{s.flag} {value}"


def make_runtime(threads, numa_nodes, smt, numa_policy, device="cpu", topology=None, args=None):
    """The `Runtime` for -t, --numa-nodes, --smt, --numa and --device values; FlagError for a
    node list this machine cannot honour, DeviceError for a bad device. With `args` (the
    resolved settings) messages name where a value came from (flag, NUMOE_*, config file),
    and a thread count above what the plan can run is said on stderr."""
    from ..runtime.numa import PlanError, parse_numa_nodes
    from ..runtime.settings import Runtime

    nodes = parse_numa_nodes(numa_nodes) if numa_nodes else None
    try:
        rt = Runtime.create(threads, nodes, smt, numa_policy, device, topology=topology)
    except PlanError as e:
        label = setting_label(args, "numa_nodes", numa_nodes) if args is not None else None
        if label is not None and not label.startswith("--"):
            from ..config import ConfigError

            raise ConfigError(f"{label}: {e}") from None
        raise FlagError(f"--numa-nodes {numa_nodes}: {e}") from None
    if threads is not None and rt.plan.threads < threads:
        label = setting_label(args, "threads", threads) if args is not None else f"-t {threads}"
        nodes_text = "the chosen NUMA nodes" if nodes else "this machine"
        note(
            f"{label}: this process may run {plural(rt.plan.threads, 'thread')} (one per CPU "
            f"it may use on {nodes_text}): using {rt.plan.threads}"
        )
    return rt


def runtime_from_args(args):
    """The `Runtime` from the resolved thread settings and --device (after -ngl); says in one
    line when NUMA placement has to do without libnuma."""
    from ..runtime.numa import fallback_notice

    settle_device(args)
    rt = make_runtime(args.threads, args.numa_nodes, args.smt, args.numa, args.device, args=args)
    notice = fallback_notice() if rt.policy.name != "off" else None
    if notice:
        print(notice, file=sys.stderr)
    return rt


def settle_device(args) -> None:
    """llama.cpp's and KTransformers' device flags in numoe's terms, once: -ngl N sets
    --device (N > 0: cuda when there is one, else a note and the CPU; 0: cpu), --cpu-moe and
    --n-cpu-moe are accepted with a note (routed experts always run on the CPU),
    --model_path with a note (everything comes from the GGUF). Then checks --device
    (DeviceError before any work)."""
    if getattr(args, "_device_settled", False):
        return
    args._device_settled = True
    v = vars(args)
    if "model_config_dir" in v:
        note(
            f"--model_path {args.model_config_dir}: not needed, numoe reads the architecture, "
            "tokenizer and chat template from the GGUF (-m)"
        )
    if "cpu_moe" in v or "n_cpu_moe" in v:
        flag = "--cpu-moe" if "cpu_moe" in v else f"--n-cpu-moe {args.n_cpu_moe}"
        note(f"{flag}: numoe always runs the routed experts on the CPU: nothing to change")
    ngl = v.get("n_gpu_layers")
    if ngl is not None:
        flag = f"-ngl {'all' if ngl < 0 else ngl}"
        if ngl == 0:
            if args.device != "cpu":
                raise FlagError(f"{flag} asks for no layer on the GPU, --device {args.device} "
                                "for the GPU: give one of them")  # fmt: skip
        elif args.device == "cpu":
            import torch

            if torch.cuda.is_available():
                args.device = "cuda"
                note(
                    f"{flag}: attention, dense layers, shared experts and the output head on "
                    "cuda (--device cuda), routed experts on the CPU"
                )
            else:
                note(f"{flag}: no CUDA GPU here (torch sees none): everything runs on the CPU")
    if args.device != "cpu":
        from ..placement import parse_device

        parse_device(args.device)  # DeviceError now, not after a model load or a probe


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


def trained_context(g) -> int | None:
    """The GGUF's {arch}.context_length, None when absent or not a positive integer."""
    v = g.arch_get("context_length", None)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def kv_bytes_per_token(g, type_k: str, type_v: str) -> int:
    """Bytes the KV cache of the model in `g` takes per token of context (every layer, keys
    and values at their -ctk/-ctv types), measured on a one-position cache built by the
    architecture's own new_cache (so MLA's latent layout counts as it is stored)."""
    from types import SimpleNamespace

    from ..models import get

    mod = get(g.arch)
    cfg = mod.config_from_gguf(g)
    # new_cache reads only .cfg and .placement.dense: no weights are loaded for this
    shell = SimpleNamespace(cfg=cfg, placement=SimpleNamespace(dense="cpu"))
    cache = mod.Model.new_cache(shell, 1, type_k, type_v)
    return cache.nbytes // cache.capacity


def _bytes(n: float) -> str:
    for unit, k in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{int(n)} B"


def available_memory(device: str) -> int | None:
    """Bytes free for a KV cache on `device`: MemAvailable for the CPU, the GPU's free memory
    for cuda; None when unknown."""
    if device == "cpu":
        from ..runtime.machine import mem_available

        return mem_available()
    try:
        import torch

        return torch.cuda.mem_get_info(torch.device(device))[0]
    except Exception:  # noqa: BLE001 - unknown is fine: no check
        return None


def settle_context(args, path: Path) -> None:
    """-c against the model: 0 becomes its trained context ({arch}.context_length); past that
    length a one-line warning; a full context whose KV cache (per slot, times serve's -np)
    cannot fit in the memory available is a FlagError saying what it needs."""
    from ..gguf import open_gguf

    g = open_gguf(path)
    trained = trained_context(g)
    if args.ctx_size == 0:
        if trained is None:
            raise FlagError(f"-c 0: {path.name} has no {g.arch}.context_length: give -c N")
        args.ctx_size = trained
        note(f"-c 0: the model's trained context, {trained} tokens")
    elif trained is not None and args.ctx_size > trained:
        note(
            f"warning: -c {args.ctx_size} is past the model's trained context ({trained} tokens, "
            f"{g.arch}.context_length): text beyond it may degrade"
        )
    per_token = kv_bytes_per_token(g, args.cache_type_k, args.cache_type_v)
    slots = getattr(args, "parallel", 1) or 1
    need = per_token * args.ctx_size * slots
    avail = available_memory(args.device)
    if avail is not None and need > avail:
        fits = avail // (per_token * slots)
        each = f" for each of {slots} slots (-np)" if slots > 1 else ""
        where = "" if args.device == "cpu" else f" on {args.device}"
        raise FlagError(
            f"-c {args.ctx_size}: a full context needs {_bytes(need)} of KV cache "
            f"({_bytes(per_token)} per token{each}, -ctk {args.cache_type_k} -ctv "
            f"{args.cache_type_v}), {_bytes(avail)} of memory is available{where}: "
            f"give -c {fits} or less"
        )


def model_path(args) -> Path:
    """-m, or the built-in model (said on stderr); settles the flags that depend on the device
    and the model (settle_device; settle_context where the command has -c)."""
    settle_device(args)
    if args.model:
        path = Path(args.model)
    else:
        path = default_model_path()
        print(f"numoe: no -m given: using the built-in random-weight model {path}", file=sys.stderr)
    if "ctx_size" in vars(args) and not getattr(args, "_ctx_settled", False):
        args._ctx_settled = True
        settle_context(args, path)
    return path


def load_from_args(args):
    """(config, model, tokenizer) from -m/--device and the thread settings (flags, NUMOE_*,
    config file); load progress and time on stderr."""
    from ..text import Tokenizer

    resolve_settings(args)
    runtime = runtime_from_args(args)  # flag errors before the built-in model is made
    path = model_path(args)
    g, cfg, model = load_model(path, runtime)
    return cfg, model, Tokenizer.from_gguf(g)
