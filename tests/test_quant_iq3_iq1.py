"""The i-quant formats IQ1_S, IQ3_XXS, IQ1_M and IQ3_S (numoe._cpu): dequantize, vec_dot and
vec_dot_n against Q8_K activations, and the linear op over them.

Oracles: gguf.quants.dequantize (exact: every grid row, every scale and sign field, fp16 edge
scales), a float64 dot product of the dequantized operands, and the scalar body (every ISA
body and vec_dot_n must equal it bit for bit: all of them sum a super-block's products exactly
in integers and combine the per-super-block floats in one order).
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize
from isa_params import ISA_PARAMS
from test_quant import random_halves

from numoe import _cpu

TYPE_SIZE = {T.IQ1_S: 50, T.IQ3_XXS: 98, T.IQ1_M: 56, T.IQ3_S: 110}
TYPES = list(TYPE_SIZE)
IDS = [t.name for t in TYPES]
# Values per grid row and rows in each format's grid.
GRID = {T.IQ1_S: (8, 2048), T.IQ3_XXS: (4, 256), T.IQ1_M: (8, 2048), T.IQ3_S: (4, 512)}
# |error| <= REL * sum|w_i a_i|: float32 rounding of the per-super-block combine and the sum.
REL = 2e-6


@pytest.fixture(autouse=True)
def _restore_isa():
    prev = _cpu.isa()
    yield
    _cpu.set_isa(prev)


def set_d(qtype, raw, halves):
    """Write fp16 super-block scales (float16 array, one per block) into raw blocks [B, size]."""
    bits = np.asarray(halves, np.float16).view(np.uint16)
    if qtype == T.IQ1_M:  # the top nibbles of the 4 scale words, word 0's lowest
        sc = raw[:, 48:56].copy().view("<u2")
        for w in range(4):
            sc[:, w] = (sc[:, w] & 0x0FFF) | (((bits >> (4 * w)) & 0xF) << 12).astype(np.uint16)
        raw[:, 48:56] = sc.view(np.uint8)
    else:
        raw[:, 0:2] = bits.view(np.uint8).reshape(-1, 2)
    return raw


def random_blocks(qtype, n_blocks, rng, scale_exp=(-10, -4)):
    """Random raw blocks (every byte pattern is a valid block) with finite fp16 scales."""
    raw = rng.integers(0, 256, (n_blocks, TYPE_SIZE[qtype]), dtype=np.uint8)
    return set_d(qtype, raw, random_halves(rng, n_blocks, *scale_exp))


def grid_blocks(qtype, rng):
    """Blocks that together use every grid row once (random scales, signs and shifts), d = 1."""
    per, rows = GRID[qtype]
    idx = rng.permutation(rows)
    k = 256 // per  # grid rows per block
    raw = rng.integers(0, 256, (rows // k, TYPE_SIZE[qtype]), dtype=np.uint8)
    ib = idx.reshape(-1, k)
    if qtype == T.IQ1_S:
        raw[:, 2:34] = ib & 0xFF
        qh = raw[:, 34:50].copy().view("<u2") & 0xF000
        for j in range(4):
            qh |= ((ib[:, j::4] >> 8) << (3 * j)).astype(np.uint16)
        raw[:, 34:50] = qh.view(np.uint8)
    elif qtype == T.IQ3_XXS:
        raw[:, 2:66] = ib
    elif qtype == T.IQ1_M:
        raw[:, 0:32] = ib & 0xFF
        nib = (ib >> 8) | (rng.integers(0, 2, ib.shape) << 3)  # high index bits, delta sign
        raw[:, 32:48] = nib[:, 0::2] | (nib[:, 1::2] << 4)
    elif qtype == T.IQ3_S:
        raw[:, 2:66] = ib & 0xFF
        raw[:, 66:74] = np.packbits((ib >> 8).astype(np.uint8), axis=1, bitorder="little")
    return set_d(qtype, raw, np.ones(len(raw)))


def grid_rows(qtype, raw):
    """The grid row indices of raw blocks [B, size], as the format defines them."""
    raw = raw.astype(np.int64)
    if qtype == T.IQ1_S:
        qh = raw[:, 34:50:2] | (raw[:, 35:50:2] << 8)
        return raw[:, 2:34] | (((qh.repeat(4, 1) >> (3 * np.arange(32) % 12)) & 7) << 8)
    if qtype == T.IQ3_XXS:
        return raw[:, 2:66]
    if qtype == T.IQ1_M:
        nib = (raw[:, 32:48].repeat(2, 1) >> (4 * (np.arange(32) % 2))) & 7
        return raw[:, 0:32] | (nib << 8)
    bits = (raw[:, 66:74].repeat(8, 1) >> (np.arange(64) % 8)) & 1  # IQ3_S
    return raw[:, 2:66] | (bits << 8)


def q8_K_values(act):
    """float64 values of Q8_K activation blocks."""
    blk = act.reshape(-1, 292)
    d = blk[:, :4].copy().view(np.float32)
    return (d * blk[:, 4:260].view(np.int8).astype(np.float32)).astype(np.float64).ravel()


def dequant(qtype, raw):
    return gguf_dequantize(np.ascontiguousarray(raw).ravel(), qtype).astype(np.float32).ravel()


# ---- registry ----


@pytest.mark.parametrize("qtype", TYPES, ids=IDS)
def test_type_info(qtype):
    info = _cpu.quant_type_info(int(qtype))
    assert (info["name"], info["block_size"], info["type_size"]) == (
        qtype.name,
        256,
        TYPE_SIZE[qtype],
    )
    assert info["act_type"] == int(T.Q8_K)
    assert int(qtype) in _cpu.weight_types()


# ---- dequantize ----


@pytest.mark.parametrize("qtype", TYPES, ids=IDS)
def test_dequantize_every_grid_row(qtype):
    """The C++ grid tables equal gguf's: every row, under random scale / sign / shift fields."""
    raw = grid_blocks(qtype, np.random.default_rng(int(qtype)))
    n = raw.size // TYPE_SIZE[qtype] * 256
    assert len(np.unique(grid_rows(qtype, raw))) == GRID[qtype][1]  # the blocks do use every row
    assert np.array_equal(_cpu.dequantize(int(qtype), raw.ravel(), n), dequant(qtype, raw))


@pytest.mark.parametrize("qtype", TYPES, ids=IDS)
def test_dequantize_random_and_edge_blocks(qtype):
    rng = np.random.default_rng(10 + int(qtype))
    size = TYPE_SIZE[qtype]
    # random blocks over the whole fp16 range, subnormals included
    parts = [random_blocks(qtype, 24, rng, scale_exp=(-25, 16))]
    # every quant byte 0x00 or 0xFF (lowest / highest grid rows, scales, all signs set or clear)
    # and random, under edge scales: zeros, smallest subnormal, largest, negative, inf, nan
    edge_d = [0.0, -0.0, 2.0**-24, -(2.0**-24), 65504.0, -2.5, np.inf, -np.inf, np.nan]
    for fill in (0x00, 0xFF, None):
        b = (
            rng.integers(0, 256, (len(edge_d), size), dtype=np.uint8)
            if fill is None
            else np.full((len(edge_d), size), fill, np.uint8)
        )
        parts.append(set_d(qtype, b, np.array(edge_d, np.float16)))
    raw = np.concatenate(parts)
    n = len(raw) * 256
    got = _cpu.dequantize(int(qtype), raw.ravel(), n)
    assert got.dtype == np.float32 and got.shape == (n,)
    assert np.array_equal(got, dequant(qtype, raw), equal_nan=True)


# ---- vec_dot / vec_dot_n ----


def levels_for(isa):
    """The levels compared with `isa`'s: scalar, and AVX2 under AVX-512."""
    return list(dict.fromkeys(["scalar", *(["avx2"] if isa == "avx512" else []), isa]))


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("qtype", TYPES, ids=IDS)
def test_vec_dot(qtype, isa):
    rng = np.random.default_rng(100 + int(qtype))
    n, n_rows = 256 * 7, 6  # 7 super-blocks: the four-block step and a tail of 3
    raw = random_blocks(qtype, n_rows * n // 256, rng).reshape(n_rows, -1)
    x = rng.standard_normal(n).astype(np.float32)
    act = _cpu.quantize_activation(int(qtype), x)
    a64 = q8_K_values(act)
    results = {}
    for level in levels_for(isa):
        _cpu.set_isa(level)
        results[level] = np.array([_cpu.vec_dot(int(qtype), raw[r], act, n) for r in range(n_rows)])
        rows = _cpu.vec_dot_rows(int(qtype), raw, act, n, n_rows)
        assert np.array_equal(rows, results[level])
    for r in range(n_rows):
        w64 = dequant(qtype, raw[r]).astype(np.float64)
        got = results[isa][r]
        assert abs(got - w64 @ a64) <= REL * np.abs(w64 * a64).sum(), (isa, got, w64 @ a64)
        assert got == results["scalar"][r], isa  # bit for bit


def extreme_blocks(qtype, n_blocks):
    """Blocks of the largest magnitudes: the grid row of the largest values (IQ1: all +1 and
    a positive shift) throughout, the largest scale, all signs set, d = 1: the worst case for
    the integer sums."""
    raw = np.zeros((n_blocks, TYPE_SIZE[qtype]), np.uint8)
    if qtype == T.IQ1_S:
        ones = 2047  # grid row of eight +1s
        raw[:, 2:34] = ones & 0xFF
        raw[:, 34:50] = np.array([0x7000 | (7 << 9) | (7 << 6) | (7 << 3) | 7] * 8, "<u2").view(
            np.uint8
        )
    elif qtype == T.IQ3_XXS:
        raw[:, 2:66] = 135  # 36 62 44 20
        aux = 0xF0000000 | sum(127 << (7 * k) for k in range(4))  # scale 15, all negative
        raw[:, 66:98] = np.array([aux] * 8, "<u4").view(np.uint8)
    elif qtype == T.IQ1_M:
        raw[:, 0:32] = 0xFF  # row 2047, positive shifts, scales 7
        raw[:, 32:48] = 0x77
        raw[:, 48:56] = np.array([0x0FFF] * 4, "<u2").view(np.uint8)
    elif qtype == T.IQ3_S:
        raw[:, 2:66] = 338 & 0xFF  # row 338: 13 11 11 7; all negative, scales 15
        raw[:, 66:110] = 0xFF
    return set_d(qtype, raw, np.ones(n_blocks))


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("qtype", TYPES, ids=IDS)
def test_vec_dot_extreme_values(qtype, isa):
    """Largest values against the largest activations (+-127 in every byte): no int16 / int32
    saturation, in vec_dot and vec_dot_n."""
    n, m = 256 * 5, _cpu.VEC_DOT_N_MAX
    raw = extreme_blocks(qtype, n // 256)
    w64 = dequant(qtype, raw).astype(np.float64)
    x = np.full((m, n), 3.0, np.float32)
    x[1::2] *= -1
    x[2::4, ::3] *= -1
    acts = np.stack([_cpu.quantize_activation(int(qtype), r) for r in x])
    _cpu.set_isa(isa)
    got_n = _cpu.vec_dot_n(int(qtype), raw.ravel(), acts.ravel(), n, list(range(m)))[:, 0]
    for t in range(m):
        ref = w64 @ q8_K_values(acts[t])
        got = _cpu.vec_dot(int(qtype), raw.ravel(), acts[t], n)
        assert abs(got - ref) <= 1e-6 * abs(ref), (isa, t, got, ref)
        assert got_n[t] == got


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("qtype", TYPES, ids=IDS)
def test_vec_dot_n_equals_vec_dot(qtype, isa):
    """vec_dot_n gives the same level's vec_dot bit for bit: every count 1..max, repeated and
    gathered activation rows, row lengths with every tail of the four-block step."""
    _cpu.set_isa(isa)
    rng = np.random.default_rng([int(qtype), len(isa)])
    m = _cpu.VEC_DOT_N_MAX
    for n in (256, 256 * 6, 256 * 7, 256 * 16):
        raw = random_blocks(qtype, 3 * n // 256, rng).reshape(3, -1)
        x = rng.standard_normal((m + 3, n)).astype(np.float32)
        x[1] *= 1e-3
        x[2] = 0.0  # zero activation (zero scales)
        acts = np.stack([_cpu.quantize_activation(int(qtype), r) for r in x])
        one = np.array(
            [[_cpu.vec_dot(int(qtype), raw[r], acts[t], n) for r in range(3)] for t in range(m + 3)]
        )
        for k in range(1, m + 1):
            rows = list(range(k)) if k % 2 else list(rng.integers(0, m + 3, k))
            got = _cpu.vec_dot_n(int(qtype), raw.ravel(), acts.ravel(), n, rows, 3)
            np.testing.assert_array_equal(got, one[rows], err_msg=f"{isa} n={n} rows={rows}")


# ---- the linear op ----


@pytest.mark.parametrize("qtype", TYPES, ids=IDS)
@pytest.mark.parametrize("T_", [1, 7, 64])
def test_linear(qtype, T_):
    """_cpu.Linear over the raw bytes of a [rows, cols] tensor: each token's row equals the
    scalar-order GEMV (vec_dot_rows) bit for bit and the float64 product of the dequantized
    weights and activation; against the unquantized activation within Q8_K's rounding."""
    rng = np.random.default_rng([int(qtype), T_])
    n_out, n_in = 40, 768
    raw = random_blocks(qtype, n_out * n_in // 256, rng).reshape(n_out, -1)
    w64 = dequant(qtype, raw).reshape(n_out, n_in).astype(np.float64)
    x = rng.standard_normal((T_, n_in)).astype(np.float32)
    y = _cpu.Linear(raw.ravel(), int(qtype), n_out, n_in).forward(x)
    assert y.shape == (T_, n_out) and y.dtype == np.float32
    for t in range(T_):
        act = _cpu.quantize_activation(int(qtype), x[t])
        np.testing.assert_array_equal(y[t], _cpu.vec_dot_rows(int(qtype), raw, act, n_in, n_out))
        a64 = q8_K_values(act)
        np.testing.assert_array_less(np.abs(y[t] - w64 @ a64), REL * np.abs(w64 * a64).sum(1))
        # Q8_K rounds each value by at most half its step (amax / 127) per super-block
        amax = np.abs(x[t].astype(np.float64)).reshape(-1, 256).max(1).repeat(256)
        bound = (np.abs(w64) * amax).sum(1) / 254 * 1.01
        np.testing.assert_array_less(np.abs(y[t] - w64 @ x[t]), bound)
