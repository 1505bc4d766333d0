"""`numoe bench`: llama-bench's table (pp/tg t/s, mean ± sd) plus decode GB/s, % of the
machine's read bandwidth, peak resident memory and the weights per NUMA node."""

from __future__ import annotations

import gc
import json
import sys

from .common import (
    HELP_FMT,
    FlagError,
    activate,
    add_model_args,
    add_thread_args,
    count_list,
    load_model,
    make_plan,
    model_path,
    positive_int,
    resolve_settings,
)

DESCRIPTION = (
    "Measure prompt processing (ppN: N random tokens prefilled into an empty cache) and text "
    "generation (tgN: N single-token decode steps) as llama-bench does: one warm-up run, then "
    "-r repetitions; t/s is their mean ± standard deviation. Comma lists sweep (-p 64,512 "
    "-t 1,2,4). Beside llama-bench's columns: decode GB/s = weight bytes read per token x t/s, "
    "as % of the machine's read bandwidth (a ~1 s probe, cached per machine), peak resident "
    "memory and the weights per NUMA node. Thread settings not given as flags come from "
    "NUMOE_* variables, then the config file (numoe tune writes it)."
)


def add_run_flags(p, n_prompt: str, n_gen: str, reps: int) -> None:
    """-p, -n, -d, -r, --no-warmup, -o, --probe."""
    g = p.add_argument_group("tests and output")
    g.add_argument(
        "-p", "--n-prompt", type=count_list, default=n_prompt, metavar="LIST",
        help="prompt tokens of the pp tests, a comma list; 0 = no pp test",
    )  # fmt: skip
    g.add_argument(
        "-n", "--n-gen", type=count_list, default=n_gen, metavar="LIST",
        help="generated tokens of the tg tests, a comma list; 0 = no tg test",
    )  # fmt: skip
    g.add_argument(
        "-d", "--n-depth", type=count_list, default="0", metavar="LIST",
        help="tokens already in the cache before each test (prefilled, not timed), a comma "
        "list, as llama-bench's -d: 'tg128 @ d4096' is decode at 4096 tokens of context "
        "(GB/s counts the weights, not the cache)",
    )  # fmt: skip
    g.add_argument(
        "-r", "--repetitions", type=positive_int, default=reps, metavar="N",
        help="repetitions of each test after the warm-up",
    )  # fmt: skip
    g.add_argument(
        "--no-warmup", action="store_true", help="skip the unrecorded first run of each test"
    )
    g.add_argument(
        "-o", "--output", choices=("md", "json", "csv"), default="md",
        help="md: a markdown table (and notes under it); json: a list of row objects; csv: a "
        "header line and a line per row",
    )  # fmt: skip
    g.add_argument(
        "--probe", action="store_true",
        help="measure the machine's read bandwidth again instead of using the cached figure",
    )  # fmt: skip
    g.add_argument("--seed", type=int, default=0, help="seed of the random test tokens")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="llama-bench-style speed table with decode GB/s against the read bandwidth",
        description=DESCRIPTION,
        formatter_class=HELP_FMT,
    )
    add_model_args(p, run=False)
    add_thread_args(p.add_argument_group("threads and NUMA"), sweep="bench")
    add_run_flags(p, "512", "128", 5)
    p.set_defaults(func=main)


class Printer:
    """Rows to stdout as they come (md, csv) or all at the end (json)."""

    def __init__(self, fmt: str, stream=None):
        self.fmt, self.rows, self.widths = fmt, [], None
        self.stream = stream if stream is not None else sys.stdout

    def add(self, row: dict) -> None:
        from .. import bench

        if self.fmt == "md":
            if not self.rows:
                self.widths = bench.md_widths(row)
            text = (bench.md_header(self.widths) + "\n" if not self.rows else "") + bench.md_row(
                row, self.widths
            )
            print(text, file=self.stream, flush=True)
        elif self.fmt == "csv":
            self.stream.write(bench.csv_text([row], header=not self.rows))
            self.stream.flush()
        self.rows.append(row)

    def close(self, probe, extra: dict | None = None) -> None:
        from .. import bench

        if self.fmt == "json":
            out = self.rows if extra is None else {"rows": self.rows, **extra}
            print(json.dumps(out, indent=1), file=self.stream)
        elif self.fmt == "md" and self.rows:
            print("\n" + bench.md_footer(self.rows, probe), file=self.stream)


def probe_line(probe) -> str:
    how = "cached" if probe.cached else "measured now"
    return (
        f"numoe: read bandwidth {probe.gbps:.2f} GB/s ({probe.threads} threads, {how} "
        f"{probe.measured}; --probe measures again)"
    )


def sweep(args, configs: list[tuple[int | None, str]], tests, printer: Printer, probe) -> list:
    """Run `tests` under each (threads, numa policy) of `configs` (numa-nodes and smt from the
    resolved settings); rows go to `printer`. The model is loaded again when the placement of
    its experts changes (policy shard/replicate and another plan), else kept."""
    from .. import bench
    from ..placement import Placement
    from ..topology import Topology

    placement = Placement.parse(args.device)
    path = model_path(args)
    topo = Topology.read()
    loaded, info, rows = None, None, []
    for threads, pol in configs:
        plan, policy = make_plan(threads, args.numa_nodes, args.smt, pol, topo)
        n = activate(plan, policy)
        key = (policy.name, tuple(map(tuple, plan.groups)) if policy.name != "off" else None)
        if loaded is None or loaded[0] != key:
            loaded = None
            gc.collect()  # the previous model's node buffers and mapping go first
            bench.reset_peak_rss()
            g, cfg, model = load_model(path, placement, n)
            loaded = (key, g, cfg, model)
        else:
            bench.reset_peak_rss()
        _, g, cfg, model = loaded
        info = info or bench.ModelInfo.of(g, cfg)
        times = [
            bench.run_test(model, t, cfg.n_vocab, args.batch_size, args.repetitions,
                           not args.no_warmup, args.seed)
            for t in tests
        ]  # fmt: skip
        peak, per_node = bench.peak_rss(), bench.bytes_per_node(g)
        for t, secs in zip(tests, times, strict=True):
            row = bench.make_row(
                info, t, secs, threads=plan.threads, numa=policy.name, batch=args.batch_size,
                read_bw_gbps=probe.gbps if probe else None, peak_rss_bytes=peak,
                per_node=per_node,
            )  # fmt: skip
            printer.add(row)
            rows.append(row)
    return rows


def main(args) -> int:
    from .. import bench, roofline

    settings = resolve_settings(args)
    tests = bench.tests_from(args.n_prompt, args.n_gen, args.n_depth)
    if not tests:
        raise FlagError("-p 0 and -n 0 leave nothing to measure: give -p N or -n N")
    threads = args.threads if isinstance(args.threads, list) else [args.threads]
    pols = args.numa if isinstance(args.numa, list) else [args.numa]
    src = ", ".join(f"{k} from {settings[k].source}" for k in ("threads", "numa"))
    print(f"numoe: {src}", file=sys.stderr)
    probe = roofline.read_bandwidth(refresh=args.probe)
    print(probe_line(probe), file=sys.stderr)
    printer = Printer(args.output)
    sweep(args, [(t, p) for p in pols for t in threads], tests, printer, probe)
    printer.close(probe)
    return 0
