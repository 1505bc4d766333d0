"""argparse value types of numoe's flags: one-line errors naming the flag (argparse adds
its name), llama.cpp's conventions for -n, -c, --top-k and the sampling ranges."""

from __future__ import annotations

import argparse
import math


def _int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None


def _float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if math.isnan(v):
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}")
    return v


def positive_int(s: str) -> int:
    v = _int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def int_at_least(low: int, what: str = ""):
    """An argparse type: a whole number >= low; `what` says what the lowest means
    (llama.cpp's conventions: -n -1, -c 0, --top-k 0)."""

    def parse(s: str) -> int:
        v = _int(s)
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}{what}, got {v}")
        return v

    return parse


def float_in(low: float, high: float | None = None, low_open: bool = False):
    """An argparse type: a number in [low, high] ((low, high] with low_open)."""

    def parse(s: str) -> float:
        v = _float(s)
        bad = v <= low if low_open else v < low
        if bad or (high is not None and v > high):
            if high is None:
                rng = f"> {low:g}" if low_open else f">= {low:g}"
            else:
                rng = f"in [{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must be {rng}, got {s}")
        return v

    return parse


n_predict_arg = int_at_least(-1, " (-1: until end of text or a full context)")
ctx_size_arg = int_at_least(0, " (0: the model's trained context)")
top_k_arg = int_at_least(0, " (0: off)")
repeat_last_n_arg = int_at_least(-1, " (-1: the whole context)")
temp_arg = float_in(0.0)
prob_arg = float_in(0.0, 1.0)
penalty_arg = float_in(0.0, low_open=True)


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


def gpu_layers_arg(s: str) -> int:
    """-ngl N: llama.cpp's layers on the GPU; 'all', 'auto' and -1 mean all of them (-1)."""
    if s.strip().lower() in ("all", "auto"):
        return -1
    return int_at_least(-1, " (-1, all or auto: every layer)")(s)
