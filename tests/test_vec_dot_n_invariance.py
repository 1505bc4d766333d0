"""Batch invariance of every weight type's kernels: vec_dot_n's result for each activation
column is bit for bit vec_dot's on that column, at every SIMD level, whatever else is in the
batch (1..VEC_DOT_N_MAX activations, repeated and gathered rows) and for row lengths with
every kind of tail. The server relies on it: a token's output must not depend on which other
tokens share its step. Also with non-finite weights (random fp16 scale fields, inf / NaN
among them): the results then agree bit for bit or are both NaN, and the calls return (every
kernel loop is bounded by the block, whatever the values).

The per-format test files check the same for their formats with format-specific data; this
one runs all the registry's types (numoe._cpu.weight_types()) through one harness."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from isa_params import ISA_PARAMS
from random_quant import FLOAT_TYPES, random_blocks

from numoe import _cpu

WEIGHT_TYPES = [Q(t) for t in _cpu.weight_types()]


def lengths(qtype: Q) -> list[int]:
    """Row lengths around each body's steps: 32-element types step 2, 4 or 8 blocks, the
    256-element ones 4 super-blocks; float types any count."""
    bs = _cpu.quant_type_info(int(qtype))["block_size"]
    if qtype in FLOAT_TYPES:
        return [1, 37, 1037]
    if bs == 32:
        return [32 * k for k in (1, 3, 8, 9, 13, 45)]
    return [256 * k for k in (1, 3, 5, 8)]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-equal, NaN (any payload) matching NaN."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    nan = np.isnan(a)
    return bool((nan == np.isnan(b)).all() and (a.view(np.uint32) == b.view(np.uint32))[~nan].all())


def check(qtype: Q, raw: np.ndarray, acts: np.ndarray, n: int, rng, label: str) -> None:
    m = _cpu.VEC_DOT_N_MAX
    n_rows, n_acts = raw.shape[0], acts.shape[0]
    one = np.array(
        [
            [_cpu.vec_dot(int(qtype), raw[r], acts[t], n) for r in range(n_rows)]
            for t in range(n_acts)
        ],
        np.float32,
    )
    for k in range(1, m + 1):
        rows = (
            [i % n_acts for i in range(k)]
            if k % 2
            else [int(i) for i in rng.integers(0, n_acts, k)]
        )
        got = _cpu.vec_dot_n(int(qtype), raw.ravel(), acts.ravel(), n, rows, n_rows)
        assert got.shape == (k, n_rows)
        assert same_bits(got, one[rows]), f"{qtype.name} {label} n={n} rows={rows}"


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("qtype", WEIGHT_TYPES, ids=lambda t: t.name)
def test_vec_dot_n_is_vec_dot_per_column(qtype, isa):
    _cpu.set_isa(isa)
    try:
        rng = np.random.default_rng([int(qtype), len(isa)])
        for n in lengths(qtype):
            raw, _ = random_blocks(qtype, 3, n, rng)
            x = rng.standard_normal((_cpu.VEC_DOT_N_MAX + 3, n)).astype(np.float32)
            x[1] *= 1e-3
            x[2] = 0.0  # all-zero activation (zero scales)
            x[3] *= 1e4
            acts = np.stack([_cpu.quantize_activation(int(qtype), r) for r in x])
            check(qtype, raw, acts, n, rng, "finite")
    finally:
        _cpu.set_isa(_cpu.isa_available()[-1])


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize(
    "qtype", [t for t in WEIGHT_TYPES if t not in FLOAT_TYPES], ids=lambda t: t.name
)
def test_vec_dot_n_is_vec_dot_non_finite_weights(qtype, isa):
    _cpu.set_isa(isa)
    try:
        rng = np.random.default_rng([int(qtype), len(isa), 7])
        info = _cpu.quant_type_info(int(qtype))
        for n in lengths(qtype)[:3]:
            nb = n // info["block_size"]
            # raw random bytes: fp16 scale fields include inf / NaN / huge values
            raw = rng.integers(0, 256, (3, nb * info["type_size"]), dtype=np.uint8)
            raw[:, : info["type_size"]] = 0xFF  # block 0 of each row: all-ones, NaN scales
            x = rng.standard_normal((5, n)).astype(np.float32)
            acts = np.stack([_cpu.quantize_activation(int(qtype), r) for r in x])
            check(qtype, raw, acts, n, rng, "non-finite")
    finally:
        _cpu.set_isa(_cpu.isa_available()[-1])
