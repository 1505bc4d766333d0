"""`numoe bench`: llama-bench's table (pp/tg t/s, mean ± sd) plus decode GB/s, % of the
machine's read bandwidth, peak resident memory and the weights per NUMA node."""

from __future__ import annotations

import gc
import json
import sys
import time

from .common import (
    HELP_FMT,
    FlagError,
    add_model_args,
    add_thread_args,
    cache_types,
    load_model,
    make_runtime,
    model_path,
    plural,
    resolve_settings,
    settle_device,
)
from .flags import count_list, positive_int

DESCRIPTION = (
    "Measure prompt processing (ppN: N random tokens prefilled into an empty cache) and text "
    "generation (tgN: N single-token decode steps) as llama-bench does: one warm-up run, then "
    "-r repetitions; t/s is their mean ± standard deviation. Comma lists sweep (-p 64,512 "
    "-t 1,2,4). Beside llama-bench's columns: decode GB/s = weight bytes read per token x t/s "
    "(and the routed experts' share, exp GB/s), as % of the machine's read bandwidth (a ~1 s "
    "probe, run just before and after each tg test; a '!' marks a figure over 100 %), peak "
    "resident memory and the weights per NUMA node. Thread settings not given as flags come "
    "from NUMOE_* variables, then the config file (numoe tune writes it)."
)


def add_run_flags(p, n_prompt: str, n_gen: str, reps: int) -> None:
    """-p, -n, -d, -r, --no-warmup, -o, --probe, --probe-once."""
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
        "--probe-once", action="store_true",
        help="one read-bandwidth figure for the whole run (the cached one, or measured at the "
        "start with --probe) instead of probing just before and after each tg test (~1 s "
        "each); the table's notes say how old it was",
    )  # fmt: skip
    g.add_argument(
        "--probe", action="store_true",
        help="with --probe-once: measure the read bandwidth at the start instead of using the "
        "figure cached for this machine",
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

    def close(self, probe=None, extra: dict | None = None) -> None:
        """probe: the one figure of a --probe-once run (None when probed beside each test)."""
        from .. import bench

        if self.fmt == "json":
            out = self.rows if extra is None else {"rows": self.rows, **extra}
            print(json.dumps(out, indent=1), file=self.stream)
        elif self.fmt == "md" and self.rows:
            print("\n" + bench.md_footer(self.rows, probe), file=self.stream)


def probe_line(probe) -> str:
    how = "cached" if probe.cached else "measured now"
    return (
        f"numoe: read bandwidth {probe.gbps:.2f} GB/s ({plural(probe.threads, 'thread')}, {how} "
        f"{probe.measured}; --probe measures again)"
    )


class Prober:
    """The read bandwidth each tg row is set against: by default probed just before and just
    after the test (numoe.runtime.bandwidth.read_bandwidth(refresh=True): ~1 s each, and the
    cache file stays current), the row against the larger; with `once` the one figure
    `probe` for the whole run. A probe leaves the pool at the default plan; the model's
    runtime sets its own again at the next forward."""

    def __init__(self, probe=None):
        self.probe = probe  # the run's one figure (--probe-once), else None
        self.last: tuple[float, float] | None = None  # (GB/s, time) of the newest probe
        self.dirty = True  # a test ran since that probe

    def measure(self) -> tuple[float, float]:
        from ..runtime import bandwidth

        p = bandwidth.read_bandwidth(refresh=True)
        self.last, self.dirty = (p.gbps, time.time()), False
        return self.last

    def before(self) -> tuple[float, float] | None:
        """The probe before a tg test: the newest one when no test ran since, else a new one."""
        if self.probe is not None:
            return None
        return self.last if self.last is not None and not self.dirty else self.measure()

    def ran(self) -> None:
        self.dirty = True

    def after(self, before) -> object:
        """The bench.ReadBw of a test that just ran (after `before`)."""
        from .. import bench

        self.ran()
        if self.probe is not None:
            return bench.ReadBw.of_probe(self.probe)
        return bench.ReadBw.beside(before, self.measure())


def sweep(args, configs: list[tuple[int | None, str]], tests, printer: Printer, probe) -> list:
    """Run `tests` under each (threads, numa policy) of `configs` (numa-nodes and smt from the
    resolved settings); rows go to `printer`. The model is loaded again when the placement of
    its experts changes (policy shard/replicate and another plan), else kept. probe: the
    run's one read-bandwidth figure (--probe-once), or None to probe beside each tg test."""
    from .. import bench
    from ..runtime.topology import Topology

    path = model_path(args)
    topo = Topology.read()
    prober = Prober(probe)
    loaded, info, rows = None, None, []
    for threads, pol in configs:
        rt = make_runtime(threads, args.numa_nodes, args.smt, pol, args.device, topo, args=args)
        plan, policy = rt.plan, rt.policy
        key = (policy.name, tuple(map(tuple, plan.groups)) if policy.name != "off" else None)
        if loaded is None or loaded[0] != key:
            loaded = None
            gc.collect()  # the previous model's node buffers and mapping go first
            bench.reset_peak_rss()
            g, cfg, model = load_model(path, rt)
            prober.ran()
            loaded = (key, g, cfg, model)
        else:
            bench.reset_peak_rss()
        _, g, cfg, model = loaded
        model.runtime = rt  # the same weights (from the map) under this setting's plan
        info = info or bench.ModelInfo.of(g, cfg)
        done = []  # (test, seconds, ReadBw or None, end time)
        for t in tests:
            before = prober.before() if t.n_gen else None
            secs = bench.run_test(model, t, cfg.n_vocab, args.batch_size, args.repetitions,
                                  not args.no_warmup, args.seed, cache_types(args))  # fmt: skip
            end = time.time()
            if t.n_gen:
                done.append((t, secs, prober.after(before), end))
            else:
                prober.ran()
                done.append((t, secs, None, end))
        peak, per_node = bench.peak_rss(), bench.bytes_per_node(g)
        for t, secs, bw, end in done:
            row = bench.make_row(
                info, t, secs, threads=plan.threads, numa=policy.name, batch=args.batch_size,
                read_bw=bw, peak_rss_bytes=peak, per_node=per_node, isa=rt.isa, end=end,
                cache_types=cache_types(args),
            )  # fmt: skip
            printer.add(row)
            rows.append(row)
    return rows


def start_probe(args):
    """The run's one read-bandwidth figure with --probe-once (cached, or measured now with
    --probe), printed to stderr; None (probe beside each tg test) without it."""
    from ..runtime import bandwidth

    if not args.probe_once:
        if args.probe:
            print("numoe: --probe without --probe-once: the bandwidth is probed beside each "
                  "tg test anyway", file=sys.stderr)  # fmt: skip
        return None
    probe = bandwidth.read_bandwidth(refresh=args.probe)
    print(probe_line(probe), file=sys.stderr)
    return probe


def main(args) -> int:
    from .. import bench

    settings = resolve_settings(args)
    settle_device(args)  # -ngl, and a --device this machine lacks, before the bandwidth probe
    tests = bench.tests_from(args.n_prompt, args.n_gen, args.n_depth)
    if not tests:
        raise FlagError("-p 0 and -n 0 leave nothing to measure: give -p N or -n N")
    threads = args.threads if isinstance(args.threads, list) else [args.threads]
    pols = args.numa if isinstance(args.numa, list) else [args.numa]
    src = ", ".join(f"{k} from {settings[k].source}" for k in ("threads", "numa"))
    print(f"numoe: {src}", file=sys.stderr)
    probe = start_probe(args)
    printer = Printer(args.output)
    sweep(args, [(t, p) for p in pols for t in threads], tests, printer, probe)
    printer.close(probe)
    return 0
