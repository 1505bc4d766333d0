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
  pp rows, where one read of the weights serves a whole chunk);
- ``bw_pct`` = gbps / read_bw_gbps x 100, against the machine's read bandwidth
  (numoe.roofline.read_bandwidth, a cached ~1 s probe);
- ``peak_rss_bytes``: the process's peak resident memory while the setting of the row ran (the
  peak is reset before each setting where the kernel allows it: /proc/self/clear_refs);
- ``bytes_per_node``: where the weights are, NUMA node -> bytes (pages of the memory map per
  node, numoe.numa_mem.placement, plus the node buffers of --numa shard/replicate).
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import gguf
import torch

from . import __version__
from .engine import Session
from .progress import size
from .roofline import bytes_per_token, n_params, proc_bytes

# JSON/CSV fields in order: llama-bench's names where one exists, then numoe's own.
FIELDS = (
    "numoe_version", "cpu_info", "model_filename", "model_type", "model_size",
    "model_n_params", "n_batch", "n_threads", "n_prompt", "n_gen", "n_depth", "test_time",
    "avg_ns", "stddev_ns", "avg_ts", "stddev_ts", "samples_ns", "samples_ts",
    # numoe's own
    "test", "quant", "model_n_params_active", "numa", "bytes_per_token", "gbps",
    "read_bw_gbps", "bw_pct", "peak_rss_bytes", "bytes_per_node",
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
    bytes_per_token: int

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
            bytes_per_token=bytes_per_token(g, k, e),
        )

    @property
    def model_type(self) -> str:
        total, active = count(self.n_params, ""), count(self.n_params_active, "")
        return f"{self.arch} {total}.A{active} {self.quant}"


# --- running the tests ---------------------------------------------------------------------


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_test(model, test: Test, n_vocab: int, batch: int, rng: random.Random) -> float:
    """Seconds for one run of `test` on a fresh cache (allocated, and filled with n_depth
    random tokens, before the clock starts)."""
    n = test.n_prompt or test.n_gen
    depth = [rng.randrange(n_vocab) for _ in range(test.n_depth)]
    tokens = [rng.randrange(n_vocab) for _ in range(n)]
    sess = Session(model, n_ctx=test.n_depth + n, chunk=batch)
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
    model, test: Test, n_vocab: int, batch: int, reps: int, warmup: bool = True, seed: int = 0
) -> list[float]:
    """Seconds of each of `reps` runs, after one unrecorded warm-up run."""
    rng = random.Random(seed)
    if warmup:
        time_test(model, test, n_vocab, batch, rng)
    return [time_test(model, test, n_vocab, batch, rng) for _ in range(reps)]


# --- memory --------------------------------------------------------------------------------


def rss_bytes() -> int:
    """Resident memory of this process now (file-backed pages of the weights included)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


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
    from .numa_mem import NOT_RESIDENT, node_allocated, placement

    out: dict[str, int] = {}
    try:
        where = placement(g)
    except (OSError, ValueError, RuntimeError):
        where = {}
    for k, v in list(where.items()) + list(node_allocated().items()):
        if k != NOT_RESIDENT and v:
            out[str(k)] = out.get(str(k), 0) + int(v)
    return dict(sorted(out.items(), key=lambda kv: (not kv[0].isdigit(), kv[0].zfill(6))))


# --- rows ----------------------------------------------------------------------------------


def cpu_info() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def make_row(
    info: ModelInfo,
    test: Test,
    seconds: list[float],
    *,
    threads: int,
    numa: str,
    batch: int,
    read_bw_gbps: float | None,
    peak_rss_bytes: int,
    per_node: dict[str, int],
) -> dict:
    """One result row, FIELDS in order."""
    n = test.n_prompt or test.n_gen
    ts = [n / s for s in seconds]  # tokens/s per repetition
    ns = [int(s * 1e9) for s in seconds]
    avg = statistics.fmean(ts)
    gbps = info.bytes_per_token * avg / 1e9 if test.n_gen else None
    row = {
        "numoe_version": __version__,
        "cpu_info": cpu_info(),
        "model_filename": str(info.path),
        "model_type": info.model_type,
        "model_size": info.size,
        "model_n_params": info.n_params,
        "n_batch": batch,
        "n_threads": threads,
        "n_prompt": test.n_prompt,
        "n_gen": test.n_gen,
        "n_depth": test.n_depth,
        "test_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
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
        "read_bw_gbps": read_bw_gbps,
        "bw_pct": 100 * gbps / read_bw_gbps if gbps is not None and read_bw_gbps else None,
        "peak_rss_bytes": peak_rss_bytes,
        "bytes_per_node": per_node,
    }
    assert tuple(row) == FIELDS
    return row


# --- output --------------------------------------------------------------------------------

# (header, width, right-aligned)
MD_COLUMNS = (
    ("model", 24, False), ("size", 10, True), ("params", 19, True), ("quant", 7, False),
    ("threads", 7, True), ("numa", 9, False), ("test", 7, True), ("t/s", 20, True),
    ("GB/s", 7, True), ("% bw", 6, True), ("peak RSS", 10, True), ("per node", 18, False),
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
        "-" if pct is None else f"{pct:.1f}",
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


def md_footer(rows: list[dict], probe) -> str:
    """Lines under the table: the read bandwidth and each model's bytes per token."""
    lines = []
    if probe is not None:
        how = "cached" if probe.cached else "measured now"
        lines.append(
            f"read bandwidth: {probe.gbps:.2f} GB/s ({probe.threads} threads, {how} "
            f"{probe.measured}; --probe measures again). GB/s = bytes per token x t/s (tg rows)."
        )
    seen = set()
    for r in rows:
        if r["model_filename"] not in seen:
            seen.add(r["model_filename"])
            lines.append(
                f"{Path(r['model_filename']).name}: {r['model_type']}, "
                f"{r['bytes_per_token'] / 1e6:.3f} MB of weights read per token"
            )
    return "\n".join(lines)
