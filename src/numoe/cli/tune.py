"""`numoe tune`: sweep thread counts (and NUMA policies on more than one node), print the
table and the best setting, and write it to the config file the other commands read."""

from __future__ import annotations

import os
import sys
import time

from .bench import Printer, add_run_flags, start_probe, sweep
from .common import HELP_FMT, FlagError, add_model_args, add_thread_args, resolve_settings


def add_parser(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="find the fastest thread count (and NUMA policy) and save it in the config file",
        description="Run numoe bench's tests over thread counts and, on more than one NUMA "
        "node, NUMA policies; print the table and the best setting (by the t/s of the tg "
        "test, or of the pp test with -n 0) and write it to the config file "
        "($NUMOE_CONFIG, else $XDG_CONFIG_HOME/numoe/config.toml) that run, chat and bench "
        "read. Flags and NUMOE_* variables still override the file; numoe doctor shows where "
        "each setting came from.",
        formatter_class=HELP_FMT,
    )
    add_model_args(p, run=False)
    add_thread_args(p.add_argument_group("threads and NUMA"), sweep="tune")
    add_run_flags(p, "0", "64", 3)
    p.add_argument(
        "--no-write", action="store_true", help="print the best setting, leave the file alone"
    )
    p.add_argument(
        "--save-anyway", action="store_true",
        help="save the result even when measured on the built-in random-weight model (no -m), "
        "whose best setting says little about a real model's",
    )  # fmt: skip
    p.set_defaults(func=main)


# a setting replaces the default only when faster by more than the run-to-run noise: the
# larger standard deviation of the two, and at least this share of the default's t/s (with
# -r 1 there is no standard deviation to go by)
NOISE_FLOOR = 0.03


def choose(rows: list[dict], default: dict | None) -> tuple[dict, str | None]:
    """(the row to save, a note when the default was kept over a faster one): the fastest
    row, unless the `default` row is within the noise of it."""
    best = max(rows, key=lambda r: r["avg_ts"])
    if default is None or best is default:
        return best, None
    noise = max(best["stddev_ts"], default["stddev_ts"], NOISE_FLOOR * default["avg_ts"])
    gain = best["avg_ts"] - default["avg_ts"]
    if gain > noise:
        return best, None
    what = f"-t {best['n_threads']}" + (
        f" --numa {best['numa']}" if best["numa"] != default["numa"] else ""
    )
    return default, (
        f"kept the default: {what} was {gain:.2f} t/s faster, within the run-to-run noise "
        f"(±{noise:.2f} t/s: the larger standard deviation, at least "
        f"{NOISE_FLOOR:.0%}; more repetitions, -r, measure it better)"
    )


def default_threads(cores: int) -> list[int]:
    """Powers of two from cores/8 (at least 1) below `cores`, 3/4 of the cores, and all."""
    out, t = [], 1
    while t < cores:
        if t >= cores // 8:
            out.append(t)
        t *= 2
    if 3 * cores // 4 > (out[-1] if out else 0):
        out.append(3 * cores // 4)
    return [*out, cores]


def main(args) -> int:
    from .. import bench
    from ..config import SETTINGS, config_path, toml_value, write_config
    from ..runtime.machine import cpu_model
    from ..runtime.numa import format_ids, parse_numa_nodes, plan_threads
    from ..runtime.topology import Topology

    # tune sweeps threads and policy itself; numa-nodes and smt come from the settings
    settings = resolve_settings(args, ("numa_nodes", "smt"))
    tests = bench.tests_from(args.n_prompt, args.n_gen, args.n_depth)
    if not tests:
        raise FlagError("-p 0 and -n 0 leave nothing to measure: give -n N (or -p N)")
    topo = Topology.read()
    nodes = parse_numa_nodes(args.numa_nodes) if args.numa_nodes else None
    full = plan_threads(topo, None, nodes, args.smt)
    threads = args.threads or default_threads(full.threads)
    pols = args.numa or (["shard", "off"] if len(full.nodes) > 1 else ["off"])
    probe = start_probe(args)  # None: probed beside each tg test
    printer = Printer(args.output)
    rows = sweep(args, [(t, p) for p in pols for t in threads], tests, printer, probe)

    decisive = next((t.name for t in tests if t.n_gen), tests[0].name)
    rows = [r for r in rows if r["test"] == decisive]
    default_pol = "shard" if len(full.nodes) > 1 else "off"
    default = next(
        (r for r in rows if r["n_threads"] == full.threads
         and (len(set(pols)) == 1 or r["numa"] == default_pol)),
        None,
    )  # fmt: skip
    best, kept = choose(rows, default)
    values: dict[str, object] = {"threads": best["n_threads"]}
    if len(set(pols)) > 1 or args.numa:
        values["numa"] = best["numa"]
    for k in ("numa_nodes", "smt"):  # the plan the sweep ran on, when not the default
        if settings[k].source.startswith(("flag", "env")):
            values[k] = settings[k].value
    flags = " ".join(
        SETTINGS[k].flag if v is True else f"{SETTINGS[k].flag} {v}"
        for k, v in values.items()
        if v is not False
    )
    gb = (
        f", {best['gbps']:.2f} GB/s = {best['bw_pct']:.0f}% of read bandwidth"
        + ("! (over 100 %: see the notes under the table)" if best["bw_over_100"] else "")
        if best["gbps"] and best["bw_pct"] is not None
        else ""
    )
    lines = [f"best: {flags}: {decisive} {best['avg_ts']:.2f} ± {best['stddev_ts']:.2f} t/s{gb}"]
    if kept:
        lines.append(kept)
    path = config_path()
    if args.no_write:
        lines.append(f"not written (--no-write); config file: {path}")
    elif args.model is None and not args.save_anyway:
        lines.append(
            f"not written: measured on the built-in random-weight model, which says little "
            f"about a real model's best setting; tune with -m MODEL (or add --save-anyway); "
            f"config file: {path}"
        )
    else:
        cpus = format_ids(topo.allowed_cpus)
        comment = (
            f"numoe tune, {time.strftime('%Y-%m-%d %H:%M')}: best of threads "
            f"{','.join(map(str, threads))} x numa {','.join(pols)} on {cpu_model()} "
            f"(CPUs {cpus})\n{best['model_filename']}: {decisive} {best['avg_ts']:.2f} t/s"
        )
        write_config(values, comment, path)
        text = ", ".join(f"{k} = {toml_value(v)}" for k, v in values.items())
        lines.append(f"wrote {path}: {text} (flags and NUMOE_* variables override it)")
        for k in values:
            if os.environ.get(SETTINGS[k].env, "").strip():
                env = SETTINGS[k].env
                lines.append(f"note: {env}={os.environ[env]} is set and overrides the file")
    printer.close(probe, {"best": values, "config_file": str(path)})
    out = sys.stdout if args.output == "md" else sys.stderr
    print("\n".join(lines), file=out)
    return 0
