"""IQ2_XXS, IQ2_XS, IQ2_S kernels (numoe._cpu): the grid and sign tables, dequantize, vec_dot
against Q8_K, vec_dot_n and the Linear op.

Oracles: gguf.quants.dequantize (exact, its own grid tables), a float64 dot product of the
dequantized operands, and the scalar body (every ISA body must equal it bit for bit: each
super-block's sum is exact in int32 and the float combine is the same on every level).
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import IQ2_S, IQ2_XS, IQ2_XXS
from gguf.quants import dequantize as gguf_dequantize
from isa_params import ISA_PARAMS
from test_quant import random_halves

from numoe import _cpu

TYPES = [T.IQ2_XXS, T.IQ2_XS, T.IQ2_S]
TYPE_SIZE = {T.IQ2_XXS: 66, T.IQ2_XS: 74, T.IQ2_S: 82}
GRID_ROWS = {T.IQ2_XXS: 256, T.IQ2_XS: 512, T.IQ2_S: 1024}
GGUF_CLASS = {T.IQ2_XXS: IQ2_XXS, T.IQ2_XS: IQ2_XS, T.IQ2_S: IQ2_S}
Q8_K_BYTES = 292
# |error| <= REL * sum|w_i a_i|: float32 rounding of the per-block combine and the row sum
# (the dequantized values and the integer sums are exact).
REL = 2e-6


@pytest.fixture(autouse=True)
def _restore_isa():
    prev = _cpu.isa()
    yield
    _cpu.set_isa(prev)


def random_blocks(qtype, n_blocks, rng, scale_exp=(-10, -4)):
    """Random raw blocks with a finite fp16 d: every other bit pattern is a valid block."""
    raw = rng.integers(0, 256, (n_blocks, TYPE_SIZE[qtype]), dtype=np.uint8)
    raw[:, :2] = random_halves(rng, n_blocks, *scale_exp).view(np.uint8).reshape(-1, 2)
    return raw


def set_d(raw, d):
    raw[:, :2] = np.asarray(d, np.float16).view(np.uint8).reshape(-1, 2)


def grid_blocks(qtype, rng):
    """Blocks that use every grid row once (in order) and every sign field (IQ2_S: every
    sign byte), d = 1."""
    rows = np.arange(GRID_ROWS[qtype])
    nb = len(rows) // 32
    raw = random_blocks(qtype, nb, rng)
    set_d(raw, np.ones(nb))
    signs = np.arange(len(rows)) % 128  # every 7-bit field (ksigns index) over the blocks
    if qtype == T.IQ2_XXS:  # per 32 values: 4 index bytes, uint32 signs | scale << 28
        aux = raw[:, 2:].view("<u4").reshape(nb, 8, 2)
        aux[:, :, 0] = rows.reshape(nb, 8, 4).astype(np.uint32) @ (
            1 << 8 * np.arange(4, dtype=np.uint32)
        )
        f = signs.reshape(nb, 8, 4).astype(np.uint32) << (7 * np.arange(4, dtype=np.uint32))
        aux[:, :, 1] = (aux[:, :, 1] & 0xF0000000) | f.sum(axis=2, dtype=np.uint32)
    elif qtype == T.IQ2_XS:  # per 8 values: index | sign field << 9
        raw[:, 2:66] = (rows | signs << 9).astype("<u2").view(np.uint8).reshape(nb, 64)
    else:  # index low bytes, then sign bytes, then 2 high index bits per group in qh
        raw[:, 2:34] = (rows & 0xFF).reshape(nb, 32)
        raw[:, 34:66] = (rows % 256).reshape(nb, 32)  # plain sign bytes: every pattern
        hi = (rows >> 8).reshape(nb, 8, 4)
        raw[:, 66:74] = (hi << (2 * np.arange(4))).sum(axis=2)
    return raw


def q8_K_values(act, n):
    """float64 values of a Q8_K activation."""
    blk = act.reshape(-1, Q8_K_BYTES)
    d = blk[:, :4].copy().view(np.float32)
    return (d * blk[:, 4:260].view(np.int8).astype(np.float32)).astype(np.float64).ravel()


def dequant64(qtype, raw):
    return gguf_dequantize(raw.reshape(-1), qtype).astype(np.float64).ravel()


# ---- tables and dequantize ----


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_grid_and_sign_tables_match_gguf(qtype):
    """Every grid row and every sign field through dequantize, against gguf's own tables."""
    rng = np.random.default_rng(int(qtype))
    raw = grid_blocks(qtype, rng)
    n = raw.shape[0] * 256
    got = _cpu.dequantize(int(qtype), raw.ravel(), n)
    assert np.array_equal(got, gguf_dequantize(raw.ravel(), qtype).ravel())
    # and the blocks do walk the whole grid: group g is gguf's grid row g times its scale
    cls = GGUF_CLASS[qtype]
    cls.init_grid()
    ratio = np.abs(got.reshape(-1, 8)) / cls.grid.reshape(GRID_ROWS[qtype], 8)
    assert np.all(ratio == ratio[:, :1])


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequantize_matches_gguf(qtype, isa):
    _cpu.set_isa(isa)  # dequantize is scalar on every level; the level must not matter
    rng = np.random.default_rng([int(qtype), 1])
    raw = random_blocks(qtype, 24, rng, scale_exp=(-25, 16))  # subnormals .. 2^15
    edge = [0.0, -0.0, 2.0**-24, -(2.0**-24), 2.0**-14, 65504.0, -65504.0, 1.0]
    set_d(raw[: len(edge)], edge)
    raw[8, 2:] = 0xFF  # max indices, every sign, scales 15
    raw[9, 2:] = 0x00  # index 0, no signs, scales 0
    n = raw.shape[0] * 256
    got = _cpu.dequantize(int(qtype), raw.ravel(), n)
    ref = gguf_dequantize(raw.ravel(), qtype).ravel()
    assert got.dtype == np.float32 and got.shape == (n,)
    assert np.array_equal(got, ref)


def test_type_info():
    for t in TYPES:
        info = _cpu.quant_type_info(int(t))
        assert (info["name"], info["block_size"], info["type_size"]) == (t.name, 256, TYPE_SIZE[t])
        assert info["act_type"] == int(T.Q8_K)
        assert int(t) in _cpu.weight_types()


# ---- vec_dot / vec_dot_n ----


def check_close(got, w64, a64):
    ref = w64 @ a64
    assert abs(got - ref) <= REL * np.abs(w64 * a64).sum() + 1e-30, (got, ref)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_vec_dot(qtype, isa):
    rng = np.random.default_rng([int(qtype), 2])
    n, n_rows = 256 * 7, 5  # a 4-block step and a 3-block tail
    raw = random_blocks(qtype, n_rows * n // 256, rng).reshape(n_rows, -1)
    x = rng.standard_normal(n).astype(np.float32)
    act = _cpu.quantize_activation(int(qtype), x)
    assert act.size == n // 256 * Q8_K_BYTES
    a64 = q8_K_values(act, n)
    results = {}
    for level in dict.fromkeys(["scalar", isa]):
        _cpu.set_isa(level)
        results[level] = [_cpu.vec_dot(int(qtype), raw[r], act, n) for r in range(n_rows)]
        assert np.array_equal(_cpu.vec_dot_rows(int(qtype), raw, act, n, n_rows), results[level])
    assert results[isa] == results["scalar"]  # bit for bit
    for r in range(n_rows):
        check_close(results[isa][r], dequant64(qtype, raw[r]), a64)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_vec_dot_every_grid_row(qtype, isa):
    """Every grid row and sign field through each level's vec_dot (the AVX-512 bodies keep
    their own copy of the grids, as 2-bit codes in registers): bit for bit the scalar's."""
    rng = np.random.default_rng([int(qtype), 4])
    raw = grid_blocks(qtype, rng)
    n = raw.shape[0] * 256
    act = _cpu.quantize_activation(int(qtype), rng.standard_normal(n).astype(np.float32))
    got = {}
    for level in dict.fromkeys(["scalar", isa]):
        _cpu.set_isa(level)
        # one super-block per row: each block's sum is compared on its own
        got[level] = [
            _cpu.vec_dot(int(qtype), raw[i], act[i * Q8_K_BYTES : (i + 1) * Q8_K_BYTES], 256)
            for i in range(raw.shape[0])
        ]
    assert got[isa] == got["scalar"]
    check_close(sum(got[isa]), dequant64(qtype, raw), q8_K_values(act, n))


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_vec_dot_extreme_values(isa):
    """Largest grid values, scales and activations, one sign pattern against the other: the
    int16 / int32 sums must not saturate."""
    n = 512
    x = np.full(n, 3.0, np.float32)
    x[::3] = -3.0
    act = _cpu.quantize_activation(int(T.IQ2_XS), x)
    a64 = q8_K_values(act, n)
    _cpu.set_isa(isa)
    for qtype in TYPES:
        for fill in (0xFF, 0x00, 0x7F):
            raw = np.full((n // 256, TYPE_SIZE[qtype]), fill, np.uint8)
            set_d(raw, [0.5, -0.5])
            got = _cpu.vec_dot(int(qtype), raw.ravel(), act, n)
            check_close(got, dequant64(qtype, raw), a64)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_vec_dot_n_equals_vec_dot(qtype, isa):
    """Bit for bit this level's vec_dot for every count 1..max, repeated rows, and row
    lengths with every tail of the 4-super-block step."""
    _cpu.set_isa(isa)
    rng = np.random.default_rng([int(qtype), 3, len(isa)])
    m = _cpu.VEC_DOT_N_MAX
    for n in (256, 256 * 5, 256 * 6, 256 * 11):
        raw = random_blocks(qtype, 3 * n // 256, rng).reshape(3, -1)
        n_acts = m + 2
        x = rng.standard_normal((n_acts, n)).astype(np.float32)
        x[1] *= 1e-3
        x[2] = 0.0  # all-zero activation (zero scales)
        acts = np.stack([_cpu.quantize_activation(int(qtype), x[t]) for t in range(n_acts)])
        one = np.array(
            [
                [_cpu.vec_dot(int(qtype), raw[r], acts[t], n) for r in range(3)]
                for t in range(n_acts)
            ]
        )
        for k in range(1, m + 1):
            rows = list(range(k)) if k % 2 else list(rng.integers(0, n_acts, k))
            got = _cpu.vec_dot_n(int(qtype), raw.ravel(), acts.ravel(), n, rows, 3)
            np.testing.assert_array_equal(got, one[rows], err_msg=f"n={n} rows={rows}")
        if isa == "scalar" or n != 256 * 11:
            continue
        for t in range(n_acts):  # and close to the float64 dot
            for r in range(3):
                check_close(one[t, r], dequant64(qtype, raw[r]), q8_K_values(acts[t], n))


# ---- the Linear op ----


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("T_", [1, 7, 64])
def test_linear(qtype, T_):
    rng = np.random.default_rng([int(qtype), T_])
    n_out, n_in = 40, 1280
    raw = random_blocks(qtype, n_out * n_in // 256, rng).reshape(n_out, -1)
    x = rng.standard_normal((T_, n_in)).astype(np.float32)
    y = _cpu.Linear(raw.reshape(-1), int(qtype), n_out, n_in).forward(x)
    assert y.shape == (T_, n_out) and y.dtype == np.float32
    w64 = dequant64(qtype, raw).reshape(n_out, n_in)
    for t in range(T_):
        act = _cpu.quantize_activation(int(qtype), x[t])
        # bit for bit the single-threaded GEMV on the quantized activation ...
        np.testing.assert_array_equal(
            y[t], _cpu.vec_dot_rows(int(qtype), raw.reshape(-1), act, n_in, n_out)
        )
        # ... which is the float64 product within float32 rounding ...
        a64 = q8_K_values(act, n_in)
        assert np.all(np.abs(y[t] - w64 @ a64) <= REL * np.abs(w64) @ np.abs(a64))
        # ... and the unquantized one within the activation's rounding to its int8 grid
        x64 = x[t].astype(np.float64)
        amax = np.abs(x64).reshape(-1, 256).max(axis=1).repeat(256)
        bound = np.abs(w64) @ amax / 254 * 1.01
        assert np.all(np.abs(y[t] - w64 @ x64) <= bound)
