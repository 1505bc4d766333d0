"""Thin Python helpers over the quantized CPU kernels in ``numoe._cpu``.

Weight formats (GGML type ids): `_cpu.weight_types()` (csrc/quant/registry.cpp). A dot
product takes one raw weight row and an activation quantized to the format the weight type
pairs with (`quant_type(t).act_type`): Q8_0 for the 32-element formats (Q8_0, Q4_0, Q4_1,
Q5_0, Q5_1, IQ4_NL), Q8_K for Q2_K, Q3_K, Q6_K and the 256-element i-quants, Q8_K4 for
Q4_K/Q5_K (Q8_K with its 32-value sub-blocks in the order of their nibbles, 0 2 1 3 4 6 5 7,
and per-sub-block sums), float32 for the float formats.

The SIMD level ('scalar' < 'avx2' < 'avx512') is chosen at run time; ``NUMOE_ISA`` forces one
and :func:`using_isa` switches it temporarily (tests, benchmarks).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from numoe import _cpu

isa = _cpu.isa
set_isa = _cpu.set_isa
isa_available = _cpu.isa_available
isa_features = _cpu.isa_features


@contextmanager
def using_isa(name: str) -> Iterator[None]:
    """Run the block with SIMD level `name` (ValueError if the CPU lacks it)."""
    prev = _cpu.set_isa(name)
    try:
        yield
    finally:
        _cpu.set_isa(prev)


@dataclass(frozen=True)
class QuantType:
    type_id: int
    name: str
    block_size: int  # elements per block
    type_size: int  # bytes per block
    act_type: int  # type id of the activation vec_dot takes: GGML's, or numoe's Q8_K4 = 256
    # (-1: an activation-only type)

    def row_bytes(self, n: int) -> int:
        if n % self.block_size:
            raise ValueError(f"{n} is not a multiple of {self.name}'s block size {self.block_size}")
        return n // self.block_size * self.type_size


def quant_type(qtype: int) -> QuantType:
    """Layout of a GGML type id (int or gguf.GGMLQuantizationType); ValueError if unsupported."""
    d = _cpu.quant_type_info(int(qtype))
    return QuantType(int(qtype), d["name"], d["block_size"], d["type_size"], d["act_type"])


def _bytes(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.reshape(-1).view(np.uint8)


def dequantize(qtype: int, raw: np.ndarray, n: int | None = None) -> np.ndarray:
    """float32 [n] from raw blocks (any shape/dtype; n defaults to all the bytes hold)."""
    raw = _bytes(raw)
    if n is None:
        t = quant_type(qtype)
        n = raw.size // t.type_size * t.block_size
    return _cpu.dequantize(int(qtype), raw, n)


def quantize_activation(weight_qtype: int, x: np.ndarray) -> np.ndarray:
    """The activation `x` (float32 [n]) in the format `weight_qtype`'s vec_dot takes."""
    return _cpu.quantize_activation(int(weight_qtype), np.ascontiguousarray(x, np.float32).ravel())


def vec_dot(qtype: int, w_row: np.ndarray, act: np.ndarray, n: int) -> float:
    """One weight row (raw bytes of n elements) . an activation from quantize_activation."""
    return _cpu.vec_dot(int(qtype), _bytes(w_row), _bytes(act), n)


def vec_dot_n(qtype: int, w_row: np.ndarray, acts: np.ndarray, n: int, rows=None) -> np.ndarray:
    """One weight row . several activations at once (the prefill kernel): `acts` holds
    activations from quantize_activation back to back ([k, act_bytes] or flat); `rows` picks
    which (default: all, at most VEC_DOT_N_MAX). Equal to vec_dot per activation."""
    acts = _bytes(acts)
    if rows is None:
        t = quant_type(quant_type(qtype).act_type)
        rows = range(acts.size // t.row_bytes(n))
    return _cpu.vec_dot_n(int(qtype), _bytes(w_row), acts, n, [int(r) for r in rows])[:, 0]


def gemv_reference(qtype: int, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y = W x for raw weights `w` [rows, row_bytes] and float32 x [n]: single-threaded, for
    tests and benchmarks (the threaded linear op lives elsewhere)."""
    w = np.ascontiguousarray(w)
    n = np.asarray(x).size
    rows = w.shape[0]
    act = quantize_activation(qtype, x)
    return _cpu.vec_dot_rows(int(qtype), _bytes(w), act, n, rows)
