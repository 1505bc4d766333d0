"""`numoe bench` / `numoe tune`: llama-bench's tests on numoe, plus the bandwidth roofline.

Tests, with llama-bench's semantics:

- ``ppN``: prefill of N random tokens into an empty cache, in chunks of ``-b``; t/s = N / time.
- ``tgN``: N decode steps of one random token each, from an empty cache (no sampling); t/s =
  N / time.

Each test runs once unrecorded (warm-up: page cache, CPU caches, waking the pool), then
``reps`` times; ``avg_ts`` / ``stddev_ts`` are the mean and sample standard deviation of the
repetitions' t/s, as llama-bench.

What no other tool reports, per row:

- ``bytes_per_token``: weight bytes one decoded token reads, at stored sizes
  (numoe.roofline.bytes_per_token);
- ``gbps`` = bytes_per_token x avg_ts / 1e9: the decode bandwidth reached (tg rows; none for
  pp rows, where one read of the weights serves a whole chunk); the table's "exp GB/s" is
  ``routed_gbps``, the routed experts' share of it;
- ``bw_pct`` = gbps / read_bw_gbps x 100, against the machine's read bandwidth
  (numoe.runtime.bandwidth: a ~1 s probe). The bandwidth of a shared machine drifts within
  minutes, so by default the probe runs just before and just after each tg test and the row
  is set against the larger of the two (``read_bw_how`` "beside", ``read_bw_samples``); with
  --probe-once one figure serves the whole run (cached per machine, or measured at the start
  with --probe) and ``read_bw_age_s`` says how old it was when the test ended. A ``bw_pct``
  over 100 (``bw_over_100``; '!' in the table) is not a result: the probe is stale or ran
  under other load, or bytes_per_token undercounts what a token reads;
- ``n_layer`` and ``bytes_per_token_routed`` / ``_other`` / ``_head``: the layer count and
  bytes_per_token split into the k routed experts of each MoE layer, the rest of the blocks
  (and the embedding row), and the output head (numoe.roofline.token_bytes);
  ``routed_gbps`` = the routed experts' bytes x avg_ts / 1e9 (tg rows);
- ``isa``: the SIMD level numoe's kernels ran with (numoe._cpu.isa());
- ``peak_rss_bytes``: the process's peak resident memory while the setting of the row ran (the
  peak is reset before each setting where the kernel allows it: /proc/self/clear_refs);
- ``bytes_per_node``: where the weights are, NUMA node -> bytes (pages of the memory map per
  node, numoe.runtime.memory.placement, plus the node buffers of --numa shard/replicate).
"""

from __future__ import annotations

import csv
import io
import json
import random
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import gguf
import torch

from . import __version__, _cpu
from .engine import Session
from .progress import size
from .roofline import TokenBytes, n_params, token_bytes
from .runtime.machine import cpu_model, proc_bytes

# JSON/CSV fields in order: llama-bench's names where one exists, then numoe's own.
FIELDS = (
    "numoe_version", "cpu_info", "model_filename", "model_type", "model_size",
    "model_n_params", "n_batch", "n_threads", "type_k", "type_v", "n_prompt", "n_gen",
    "n_depth", "test_time",
    "avg_ns", "stddev_ns", "avg_ts", "stddev_ts", "samples_ns", "samples_ts",
    # numoe's own
    "test", "quant", "model_n_params_active", "numa", "bytes_per_token", "gbps",
    "read_bw_gbps", "bw_pct", "peak_rss_bytes", "bytes_per_node",
    "n_layer", "bytes_per_token_routed", "bytes_per_token_other", "bytes_per_token_head",
    "routed_gbps", "read_bw_how", "read_bw_samples", "read_bw_age_s", "bw_over_100", "isa",
)  # fmt: skip


@dataclass(frozen=True)
class Test:
    n_prompt: int
    n_gen: int
    n_depth: int = 0  # tokens already in the cache (prefilled, not timed)

    @property
    def name(self) -> str:
        name = f"pp{self.n_prompt}" if self.n_prompt else f"tg{self.n_gen}"
        return f"{name} @ d{self.n_depth}" if self.n_depth else name


def tests_from(n_prompt: list[int], n_gen: list[int], n_depth: list[int] = (0,)) -> list[Test]:
    """llama-bench's test list: per -d depth, a pp test per non-zero -p value and a tg test
    per non-zero -n value."""
    return [
        t
        for d in n_depth
        for t in [Test(p, 0, d) for p in n_prompt if p > 0]
        + [Test(0, n, d) for n in n_gen if n > 0]
    ]


# --- the model's figures -------------------------------------------------------------------


def quant_name(g) -> str:
    """general.file_type as llama.cpp names it (Q4_K_M, Q8_0, F16 ...); without it, the type
    holding the most bytes."""
    ft = g.meta.get("general.file_type")
    try:
        name = gguf.LlamaFileType(int(ft)).name
        return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (TypeError, ValueError):
        by_type: dict[str, int] = {}
        for t in g.tensors.values():
            by_type[t.qtype.name] = by_type.get(t.qtype.name, 0) + t.nbytes
        return max(by_type, key=by_type.get) if by_type else "?"


def count(n: float, sep: str = " ") -> str:
    """1234567 -> '1.23 M' (K, M, B as llama-bench's params column)."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{sep}{unit}"
    return str(int(n))


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    arch: str
    quant: str
    size: int  # bytes of tensor data (llama-bench's model_size)
    n_params: int
    n_params_active: int  # per token: k of the E routed experts, everything else
    token_bytes: TokenBytes  # weight bytes per decoded token: routed / other / head

    @property
    def bytes_per_token(self) -> int:
        return self.token_bytes.total

    @property
    def n_layer(self) -> int:
        return self.token_bytes.n_layer

    @classmethod
    def of(cls, g, cfg) -> ModelInfo:
        k, e = getattr(cfg, "n_expert_used", 0) or 0, getattr(cfg, "n_expert", 0) or 0
        total, active = n_params(g, k, e)
        return cls(
            path=Path(g.path),
            arch=g.arch,
            quant=quant_name(g),
            size=sum(t.nbytes for t in g.tensors.values()),
            n_params=total,
            n_params_active=active,
            token_bytes=token_bytes(g, k, e),
        )

    @property
    def model_type(self) -> str:
        total, active = count(self.n_params, ""), count(self.n_params_active, "")
        return f"{self.arch} {total}.A{active} {self.quant}"


# --- running the tests ---------------------------------------------------------------------


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_test(
    model, test: Test, n_vocab: int, batch: int, rng: random.Random,
    cache_types: tuple[str, str] = ("f16", "f16"),
) -> float:  # fmt: skip
    """Seconds for one run of `test` on a fresh cache of cache_types (type_k, type_v;
    allocated, and filled with n_depth random tokens, before the clock starts)."""
    n = test.n_prompt or test.n_gen
    depth = [rng.randrange(n_vocab) for _ in range(test.n_depth)]
    tokens = [rng.randrange(n_vocab) for _ in range(n)]
    sess = Session(model, n_ctx=test.n_depth + n, chunk=batch, type_k=cache_types[0],
                   type_v=cache_types[1])  # fmt: skip
    if depth:
        sess.prefill(depth)
    _sync()
    t0 = time.perf_counter()
    if test.n_prompt:
        sess.prefill(depth + tokens)  # the depth tokens are the cached prefix: n computed
    else:
        for t in tokens:
            sess.step(t)
    _sync()
    return time.perf_counter() - t0


def run_test(
    model, test: Test, n_vocab: int, batch: int, reps: int, warmup: bool = True, seed: int = 0,
    cache_types: tuple[str, str] = ("f16", "f16"),
) -> list[float]:  # fmt: skip
    """Seconds of each of `reps` runs, after one unrecorded warm-up run; caches of cache_types
    (type_k, type_v: -ctk, -ctv)."""
    rng = random.Random(seed)
    if warmup:
        time_test(model, test, n_vocab, batch, rng, cache_types)
    return [time_test(model, test, n_vocab, batch, rng, cache_types) for _ in range(reps)]


# --- memory --------------------------------------------------------------------------------


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak resident memory in bytes since the last reset (VmHWM), else since the start."""
    hwm = proc_bytes("/proc/self/status", "VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def bytes_per_node(g) -> dict[str, int]:
    """Where the weights are: {"0": bytes, ...} (JSON keys), memory-map pages resident per node
    plus the node buffers numoe allocated (--numa shard/replicate); "unknown node" when the
    kernel does not say. Pages not resident are left out."""
    from .runtime.memory import NOT_RESIDENT, node_allocated, placement

    out: dict[str, int] = {}
    try:
        where = placement(g)
    except (OSError, ValueError, RuntimeError):
        where = {}
    for k, v in list(where.items()) + list(node_allocated().items()):
        if k != NOT_RESIDENT and v:
            out[str(k)] = out.get(str(k), 0) + int(v)
    return dict(sorted(out.items(), key=lambda kv: (not kv[0].isdigit(), kv[0].zfill(6))))


# --- the machine ---------------------------------------------------------------------------

SIMD_FLAGS = ("avx", "avx2", "fma", "f16c", "avx_vnni", "avx512", "amx")  # prefixes


def cpu_simd_flags(path: str = "/proc/cpuinfo") -> list[str]:
    """The CPU's SIMD flags that decide numoe's kernels (avx2, fma, avx512*, avx_vnni, amx*),
    from the first 'flags' line of /proc/cpuinfo; [] when unknown."""
    try:
        with open(path) as f:
            line = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        return []
    flags = line.split(":", 1)[1].split() if ":" in line else []
    return sorted(
        {f for f in flags if f in SIMD_FLAGS or f.startswith(("avx512", "amx", "avx_vnni"))}
    )


def isa_line() -> str:
    """'ISA avx512 (numoe's kernels; available scalar, avx2, avx512); CPU flags: avx2 ...'."""
    flags = cpu_simd_flags()
    return (
        f"ISA {_cpu.isa()} (numoe's kernels; available {', '.join(_cpu.isa_available())}); "
        f"CPU flags: {' '.join(flags) if flags else 'unknown'}"
    )


# --- the read bandwidth a row is set against -----------------------------------------------


@dataclass(frozen=True)
class ReadBw:
    """The read bandwidth one row is set against.

    how: "beside" (probed just before and just after the test, `gbps` the larger),
    "cached" (the per-machine cache file) or "measured" (once, at the start of the run);
    samples: the probes' GB/s; at: when the newest of them was measured (time.time())."""

    gbps: float
    how: str
    samples: tuple[float, ...]
    at: float

    @classmethod
    def beside(cls, before: tuple[float, float], after: tuple[float, float]) -> ReadBw:
        """From the (GB/s, time) probes before and after a test."""
        return cls(max(before[0], after[0]), "beside", (before[0], after[0]), after[1])

    @classmethod
    def of_probe(cls, probe) -> ReadBw:
        """From a numoe.runtime.bandwidth.Probe (its `measured` is local ISO time)."""
        try:
            at = time.mktime(time.strptime(probe.measured, "%Y-%m-%dT%H:%M:%S"))
        except (TypeError, ValueError, OverflowError):
            at = float("nan")
        return cls(probe.gbps, "cached" if probe.cached else "measured", (probe.gbps,), at)

    def age(self, now: float) -> float | None:
        """Seconds from the newest probe to `now` (0 when it came after), None if unknown."""
        return None if self.at != self.at else max(0.0, now - self.at)


def format_age(seconds: float | None) -> str:
    """12 -> '12 s', 4000 -> '67 min', 200000 -> '2.3 days'; None -> 'unknown'."""
    if seconds is None:
        return "unknown"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 3 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# --- rows ----------------------------------------------------------------------------------


def make_row(
    info: ModelInfo,
    test: Test,
    seconds: list[float],
    *,
    threads: int,
    numa: str,
    batch: int,
    read_bw: ReadBw | None,
    peak_rss_bytes: int,
    per_node: dict[str, int],
    isa: str | None = None,
    end: float | None = None,
    cache_types: tuple[str, str] = ("f16", "f16"),
) -> dict:
    """One result row, FIELDS in order. read_bw: what the tg row is set against (None: no
    bandwidth figure); end: when the test ended (time.time(), for the probe's age; default
    now); isa: the kernels' SIMD level (default: the process's now); cache_types: the KV
    cache's (type_k, type_v), llama-bench's columns."""
    n = test.n_prompt or test.n_gen
    ts = [n / s for s in seconds]  # tokens/s per repetition
    ns = [int(s * 1e9) for s in seconds]
    avg = statistics.fmean(ts)
    tb = info.token_bytes
    gbps = tb.total * avg / 1e9 if test.n_gen else None
    bw = read_bw.gbps if read_bw is not None else None
    pct = 100 * gbps / bw if gbps is not None and bw else None
    row = {
        "numoe_version": __version__,
        "cpu_info": cpu_model(),
        "model_filename": str(info.path),
        "model_type": info.model_type,
        "model_size": info.size,
        "model_n_params": info.n_params,
        "n_batch": batch,
        "n_threads": threads,
        "type_k": cache_types[0],
        "type_v": cache_types[1],
        "n_prompt": test.n_prompt,
        "n_gen": test.n_gen,
        "n_depth": test.n_depth,
        "test_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(end)),
        "avg_ns": int(statistics.fmean(ns)),
        "stddev_ns": int(statistics.stdev(ns)) if len(ns) > 1 else 0,
        "avg_ts": avg,
        "stddev_ts": statistics.stdev(ts) if len(ts) > 1 else 0.0,
        "samples_ns": ns,
        "samples_ts": ts,
        "test": test.name,
        "quant": info.quant,
        "model_n_params_active": info.n_params_active,
        "numa": numa,
        "bytes_per_token": info.bytes_per_token,
        "gbps": gbps,
        "read_bw_gbps": bw,
        "bw_pct": pct,
        "peak_rss_bytes": peak_rss_bytes,
        "bytes_per_node": per_node,
        "n_layer": tb.n_layer,
        "bytes_per_token_routed": tb.routed,
        "bytes_per_token_other": tb.other,
        "bytes_per_token_head": tb.head,
        "routed_gbps": tb.routed * avg / 1e9 if test.n_gen else None,
        "read_bw_how": read_bw.how if read_bw is not None else None,
        "read_bw_samples": list(read_bw.samples) if read_bw is not None else [],
        "read_bw_age_s": read_bw.age(end if end is not None else time.time()) if read_bw else None,
        "bw_over_100": pct > 100 if pct is not None else None,
        "isa": isa or _cpu.isa(),
    }
    assert tuple(row) == FIELDS
    return row


# --- output --------------------------------------------------------------------------------

# (header, width, right-aligned)
MD_COLUMNS = (
    ("model", 24, False), ("size", 10, True), ("params", 19, True), ("quant", 7, False),
    ("threads", 7, True), ("numa", 9, False), ("test", 7, True), ("t/s", 20, True),
    ("GB/s", 7, True), ("exp GB/s", 8, True), ("% bw", 6, True), ("peak RSS", 10, True),
    ("per node", 18, False),
)  # fmt: skip


def _node_text(per_node: dict[str, int]) -> str:
    if not per_node:
        return "-"
    return ", ".join(f"{'N' + k if k.isdigit() else k}: {size(v)}" for k, v in per_node.items())


def md_cells(row: dict) -> list[str]:
    gbps, pct = row["gbps"], row["bw_pct"]
    return [
        Path(row["model_filename"]).name,
        size(row["model_size"]),
        f"{count(row['model_n_params'])} / {count(row['model_n_params_active'])}",
        row["quant"],
        str(row["n_threads"]),
        row["numa"],
        row["test"],
        f"{row['avg_ts']:.2f} ± {row['stddev_ts']:.2f}",
        "-" if gbps is None else f"{gbps:.2f}",
        "-" if row["routed_gbps"] is None else f"{row['routed_gbps']:.2f}",
        "-" if pct is None else f"{pct:.1f}" + ("!" if pct > 100 else ""),
        size(row["peak_rss_bytes"]),
        _node_text(row["bytes_per_node"]),
    ]


def md_widths(row: dict) -> list[int]:
    """Column widths for a table whose first row is `row`: the defaults, or wider where one of
    its cells is (a long file name); later rows keep them (rows print as they come)."""
    return [max(w, len(c)) for (_, w, _), c in zip(MD_COLUMNS, md_cells(row), strict=True)]


def _md_line(cells: list[str], widths: list[int]) -> str:
    out = []
    for (_, _, right), w, c in zip(MD_COLUMNS, widths, cells, strict=True):
        out.append(c.rjust(w) if right else c.ljust(w))
    return "| " + " | ".join(out) + " |"


def md_header(widths: list[int] | None = None) -> str:
    widths = widths or [w for _, w, _ in MD_COLUMNS]
    head = _md_line([h for h, _, _ in MD_COLUMNS], widths)
    rule = "|" + "|".join(
        ("-" * (w + 1) + ":") if right else ("-" * (w + 2))
        for (_, _, right), w in zip(MD_COLUMNS, widths, strict=True)
    )
    return head + "\n" + rule + "|"


def md_row(row: dict, widths: list[int] | None = None) -> str:
    return _md_line(md_cells(row), widths or [w for _, w, _ in MD_COLUMNS])


def csv_text(rows: list[dict], header: bool = True) -> str:
    """CSV of the rows (FIELDS); lists as comma-separated text, bytes_per_node as JSON."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(FIELDS)
    for r in rows:
        vals = []
        for k in FIELDS:
            v = r[k]
            if isinstance(v, list):
                v = ",".join(str(x) for x in v)
            elif isinstance(v, dict):
                v = json.dumps(v, separators=(",", ":"))
            elif v is None:
                v = ""
            vals.append(v)
        w.writerow(vals)
    return buf.getvalue()


def md_footer(rows: list[dict], probe=None) -> str:
    """Lines under the table: what the read bandwidth was and when, a warning for any
    '% bw' over 100, each model's bytes per token split, and the ISA."""
    lines = []
    tg = [r for r in rows if r["read_bw_gbps"] is not None and r["gbps"] is not None]
    beside = [r for r in tg if r["read_bw_how"] == "beside"]
    if beside:
        probes = [x for r in beside for x in r["read_bw_samples"]]
        lines.append(
            f"read bandwidth: probed just before and just after each tg test, each row against "
            f"the larger ({min(probes):.2f}-{max(probes):.2f} GB/s over {len(probes)} probes; "
            f"--probe-once: one figure for the run). GB/s = bytes per token x t/s (tg rows)."
        )
    elif probe is not None:
        ages = [r["read_bw_age_s"] for r in tg if r["read_bw_age_s"] is not None]
        age = f", {format_age(max(ages))} old at the last tg test" if ages else ""
        how = "cached" if probe.cached else "measured at the start"
        lines.append(
            f"read bandwidth: {probe.gbps:.2f} GB/s ({probe.threads} thread{'' if probe.threads == 1 else 's'}, {how} "
            f"{probe.measured}{age}; --probe measures it again, without --probe-once it is "
            f"probed beside each tg test). GB/s = bytes per token x t/s (tg rows)."
        )
    over = [r for r in rows if r["bw_over_100"]]
    if over:
        worst = max(over, key=lambda r: r["bw_pct"])
        age = worst["read_bw_age_s"]
        lines.append(
            f"! {len(over)} row(s) over 100 % of the read bandwidth (at most "
            f"{worst['bw_pct']:.0f} %, {worst['test']}): no decode reads faster than memory, "
            f"so the probe is stale or ran under other load (probe {format_age(age)} old, "
            f"{worst['read_bw_how']}), or the bytes per token undercount what a token reads "
            "(or the weights fit in the CPU caches). Measure again without --probe-once."
        )
    seen = set()
    for r in rows:
        if r["model_filename"] not in seen:
            seen.add(r["model_filename"])
            routed, other, head = (
                r[f"bytes_per_token_{k}"] / 1e6 for k in ("routed", "other", "head")
            )
            lines.append(
                f"{Path(r['model_filename']).name}: {r['model_type']}, {r['n_layer']} layers, "
                f"{r['bytes_per_token'] / 1e6:.3f} MB of weights read per token = routed "
                f"experts {routed:.3f} + other layers {other:.3f} + output head {head:.3f}"
            )
    lines.append(isa_line())
    return "\n".join(lines)
