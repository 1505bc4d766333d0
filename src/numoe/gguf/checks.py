"""Typed, range-checked reads of the metadata numoe uses.

The header parser (`read.py`) makes sure a file is well formed; these make sure that what
it says is usable: a key of the wrong type (a string, float, array or bool where a count
belongs), a count out of range (0 heads, -1 blocks, more used experts than experts), a
float that is not finite or not positive (an epsilon, a rope base, a YaRN factor), a token
list of another length than the vocabulary, or `blk.N` tensors past `block_count` is one
line, a `GGUFError` naming the file and the key, before any of it is used (never a
TypeError, a ZeroDivisionError, a math domain error, NaN logits or a block ignored).

Each architecture's `config_from_gguf` reads its keys through `ArchKeys`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ..quote import quote
from .read import REQUIRED, GGUFError, GGUFFile

MAX_COUNT = 2**31 - 1  # counts and sizes: int32, as llama.cpp reads them
K_TOKENS = "tokenizer.ggml.tokens"

__all__ = ["MAX_COUNT", "ArchKeys", "check_blocks", "describe", "vocab_size"]


def describe(v: Any) -> str:
    """A metadata value as an error message shows it (file strings quoted and cut)."""
    if isinstance(v, bool):
        return f"the bool {v}"
    if isinstance(v, int | float):
        return f"{v!r}"
    if isinstance(v, str):
        return f"the string {quote(v, 40)}"
    if isinstance(v, list):
        return f"an array of {len(v)}"
    return type(v).__name__


def _bad(g: GGUFFile, key: str, v: Any, want: str) -> GGUFError:
    return GGUFError(f"{g.path}: {key} is {describe(v)}; it must be {want}")


def get_int(
    g: GGUFFile, key: str, default: Any = REQUIRED, lo: int = 1, hi: int = MAX_COUNT
) -> Any:
    """An integer key in lo..hi (not a bool, float or array); `default` when absent."""
    v = g.get(key, default)
    if key not in g.meta:
        return v
    want = f"an integer in {lo}..{hi}"
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(g, key, v, want)
    if not lo <= v <= hi:
        raise _bad(g, key, v, want)
    return v


def get_float(
    g: GGUFFile, key: str, default: Any = REQUIRED, lo: float = 0.0, open_: bool = True
) -> Any:
    """A finite number > lo (>= lo when not `open_`); `default` when absent."""
    v = g.get(key, default)
    if key not in g.meta:
        return v
    want = f"a finite number {'>' if open_ else '>='} {lo:g}"
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _bad(g, key, v, want)
    if not math.isfinite(v) or v < lo or (open_ and v == lo):
        raise _bad(g, key, v, want)
    return float(v)


def get_bool(g: GGUFFile, key: str, default: Any = REQUIRED) -> Any:
    """A bool (or the integer 0 or 1); `default` when absent."""
    v = g.get(key, default)
    if key not in g.meta:
        return v
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise _bad(g, key, v, "a bool")


def get_str(g: GGUFFile, key: str, default: Any = REQUIRED) -> Any:
    v = g.get(key, default)
    if key in g.meta and not isinstance(v, str):
        raise _bad(g, key, v, "a string")
    return v


class ArchKeys:
    """The checked getters over `{arch}.` keys: `k.int("block_count")`."""

    def __init__(self, g: GGUFFile):
        self.g, self.pre = g, f"{g.arch}."

    def key(self, suffix: str) -> str:
        return self.pre + suffix

    def has(self, suffix: str) -> bool:
        return self.pre + suffix in self.g.meta

    def int(self, suffix: str, default: Any = REQUIRED, lo: int = 1, hi: int = MAX_COUNT):
        return get_int(self.g, self.pre + suffix, default, lo, hi)

    def float(self, suffix: str, default: Any = REQUIRED, lo: float = 0.0, open_: bool = True):
        return get_float(self.g, self.pre + suffix, default, lo, open_)

    def bool(self, suffix: str, default: Any = REQUIRED):
        return get_bool(self.g, self.pre + suffix, default)

    def str(self, suffix: str, default: Any = REQUIRED):
        return get_str(self.g, self.pre + suffix, default)

    def fail(self, msg: str) -> GGUFError:
        """A GGUFError about this file's metadata: `msg` names the keys."""
        return GGUFError(f"{self.g.path}: {msg}")

    def divides(self, small: str, a: int, big: str, b: int) -> None:
        """`big`'s value b must be a multiple of `small`'s value a (both keys' suffixes)."""
        if b % a:
            raise self.fail(f"{self.pre}{big} {b} is not a multiple of {self.pre}{small} {a}")

    def even(self, suffix: str, v: int) -> None:
        """A rotary dimension: rope turns pairs of values."""
        if v % 2:
            raise self.fail(f"{self.pre}{suffix} {v} must be even (rope turns pairs)")


_BLOCK = re.compile(r"blk\.(\d+)\.")


def check_blocks(g: GGUFFile, n_layer: int) -> None:
    """No `blk.N.*` tensor past `{arch}.block_count` (it would be ignored in silence)."""
    past = [(int(m.group(1)), n) for n in g.tensors if (m := _BLOCK.match(n))]
    past = [(i, n) for i, n in past if i >= n_layer]
    if past:
        i, name = max(past)
        raise GGUFError(
            f"{g.path}: {g.arch}.block_count is {n_layer} but the file has tensors of block "
            f"{i} ({quote(name)}): a wrong block count"
        )


def vocab_size(g: GGUFFile) -> int:
    """The vocabulary: `{arch}.vocab_size`, else the token list's length, else the rows of
    token_embd. A token list must be an array of strings, as long as the vocabulary."""
    key = f"{g.arch}.vocab_size"
    n = get_int(g, key, None)
    tokens = g.meta.get(K_TOKENS)
    if tokens is not None:
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise _bad(g, K_TOKENS, tokens, "an array of strings")
        if not tokens:
            raise _bad(g, K_TOKENS, tokens, "an array of one token or more")
        if n is None:
            n = len(tokens)
        elif len(tokens) != n:
            raise GGUFError(
                f"{g.path}: {K_TOKENS} holds {len(tokens)} tokens but {key} is {n}: "
                "the token list must be as long as the vocabulary"
            )
    if n is None:
        n = g.tensor("token_embd.weight").shape[0]
    return n
