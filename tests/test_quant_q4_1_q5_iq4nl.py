"""The 32-element block formats Q4_1, Q5_0, Q5_1 and IQ4_NL (csrc/quant/q32*.hpp), and the
weight quantizers of Q4_1, Q5_0 and Q5_1 (csrc/quantize/).

Oracles: gguf.quants (dequantize, and quantize: ggml's reference algorithms), a float64 dot
product of the dequantized operands, and the scalar body (every ISA body, vec_dot and
vec_dot_n, equals it bit for bit: the kernels share one float order, q32.hpp).
"""

from __future__ import annotations

import ctypes
import mmap
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize
from isa_params import ISA_PARAMS
from test_quant import random_halves

from numoe import _cpu, kernels

TYPES = [T.Q4_1, T.Q5_0, T.Q5_1, T.IQ4_NL]
TYPE_SIZE = {T.Q4_1: 20, T.Q5_0: 22, T.Q5_1: 24, T.IQ4_NL: 18}
MIN_TYPES = {T.Q4_1, T.Q5_1}  # x = d * q + m: fp16 m at byte 2
QUANTIZED = [T.Q4_1, T.Q5_0, T.Q5_1]  # numoe writes these (csrc/quantize/)


def ids(t):
    return t.name


@pytest.fixture(autouse=True)
def _restore_isa():
    prev = _cpu.isa()
    yield
    _cpu.set_isa(prev)


def blocks(qtype, n_blocks, rng, exp=(-14, -6)):
    """Random raw blocks: every quant bit pattern, finite fp16 d (and m) with exponents in exp."""
    raw = rng.integers(0, 256, (n_blocks, TYPE_SIZE[qtype]), dtype=np.uint8)
    raw[:, 0:2] = random_halves(rng, n_blocks, *exp).view(np.uint8).reshape(-1, 2)
    if qtype in MIN_TYPES:
        raw[:, 2:4] = random_halves(rng, n_blocks, *exp).view(np.uint8).reshape(-1, 2)
    return raw


def set_half(raw, off, value):
    raw[:, off : off + 2] = np.full(len(raw), value, np.float16).view(np.uint8).reshape(-1, 2)


def edge_blocks(qtype):
    """Blocks at the extremes: every quant bit set or clear, and the scale (and min) at zero,
    -0, the smallest subnormal, the largest subnormal, +-65504."""
    halves = [0.0, -0.0, 2.0**-24, 2.0**-14 - 2.0**-24, 65504.0, -65504.0, -1.0]
    out = []
    for fill in (0x00, 0xFF, 0x0F, 0xF0):
        for d in halves:
            for m in halves if qtype in MIN_TYPES else [None]:
                b = np.full((1, TYPE_SIZE[qtype]), fill, np.uint8)
                set_half(b, 0, d)
                if m is not None:
                    set_half(b, 2, m)
                out.append(b)
    return np.concatenate(out)


def act_f64(act):
    return gguf_dequantize(act, T.Q8_0).astype(np.float64).ravel()


def error_scale(qtype, raw, act):
    """Sum over elements of |d q| |a| + |m| |a| (kMin) or |w a|: what the float rounding of
    the block terms scales with (the isum and ysum terms of a Q4_1 / Q5_1 block may cancel)."""
    a = np.abs(act_f64(act))
    w = gguf_dequantize(raw, qtype).astype(np.float64).ravel()
    if qtype not in MIN_TYPES:
        return float(np.abs(w) @ a)
    b = raw.reshape(-1, TYPE_SIZE[qtype])
    m = b[:, 2:4].copy().view(np.float16).astype(np.float64).repeat(32)
    return float((np.abs(w - m) + np.abs(m)) @ a)


# ---- dequantize ----


@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_dequantize_matches_gguf(qtype):
    rng = np.random.default_rng(int(qtype))
    for raw in (blocks(qtype, 96, rng, exp=(-25, 16)), edge_blocks(qtype)):  # subnormals too
        n = raw.shape[0] * 32
        got = _cpu.dequantize(int(qtype), raw.ravel(), n)
        ref = gguf_dequantize(raw.ravel(), qtype).astype(np.float32).ravel()
        assert got.dtype == np.float32 and np.array_equal(got, ref)


@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_non_finite_scales(qtype):
    """inf / NaN scales: dequantize as gguf (NaN where it has NaN), and every ISA's vec_dot
    stays in its row (a NaN result where a NaN scale or inf * 0 meets it, as scalar)."""
    rng = np.random.default_rng(7)
    raw = blocks(qtype, 24, rng)
    for k, v in enumerate([np.inf, -np.inf, np.nan]):
        set_half(raw[8 * k + 3 : 8 * k + 4], 0, v)
    n = raw.size // TYPE_SIZE[qtype] * 32
    got = _cpu.dequantize(int(qtype), raw.ravel(), n)
    with np.errstate(invalid="ignore"):  # gguf's inf * 0
        ref = gguf_dequantize(raw.ravel(), qtype).ravel()
    assert np.array_equal(got, ref, equal_nan=True)
    act = _cpu.quantize_activation(int(qtype), rng.standard_normal(n).astype(np.float32))
    res = []
    for isa in _cpu.isa_available():
        _cpu.set_isa(isa)
        res.append(_cpu.vec_dot(int(qtype), raw.ravel(), act, n))
    assert all(np.isnan(r) for r in res)


# ---- vec_dot ----


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_vec_dot(qtype, isa):
    """Against float64 (dequantized operands) within the float rounding of the block terms,
    and bit for bit the scalar body, for every tail of the 8-block step."""
    rng = np.random.default_rng([int(qtype), 3])
    for nb in (1, 3, 4, 5, 8, 9, 15, 16, 45):
        n = 32 * nb
        raw = blocks(qtype, 3 * nb, rng).reshape(3, -1)
        x = rng.standard_normal(n).astype(np.float32)
        x[: 32 * (nb // 2)] *= 1e-3  # blocks of different activation scales
        act = _cpu.quantize_activation(int(qtype), x)
        assert act.size == nb * 34  # Q8_0
        _cpu.set_isa("scalar")
        scalar = [_cpu.vec_dot(int(qtype), raw[r], act, n) for r in range(3)]
        _cpu.set_isa(isa)
        got = [_cpu.vec_dot(int(qtype), raw[r], act, n) for r in range(3)]
        assert got == scalar, (nb, got, scalar)
        assert np.array_equal(_cpu.vec_dot_rows(int(qtype), raw.ravel(), act, n, 3), got)
        for r in range(3):
            ref = gguf_dequantize(raw[r], qtype).astype(np.float64).ravel() @ act_f64(act)
            # each block term: 3-4 roundings; then nb/8 adds per lane and the 3-add tree
            bound = (nb / 8 + 8) * 2.0**-24 * error_scale(qtype, raw[r], act)
            assert abs(got[r] - ref) <= bound, (nb, got[r], ref, bound)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_vec_dot_extreme_values(qtype, isa):
    """All quant bits set (largest |v|) against +-127 activations: no int16 saturation."""
    n = 32 * 11
    raw = np.full((n // 32, TYPE_SIZE[qtype]), 0xFF, np.uint8)
    set_half(raw, 0, 0.5)
    if qtype in MIN_TYPES:
        set_half(raw, 2, -3.0)
    if qtype == T.IQ4_NL:
        raw[1::2, 2:] = 0x00  # index 0: -127
    x = np.full(n, 3.0, np.float32)
    x[1::2] = -3.0
    x[64:128] = 3.0  # same-sign runs
    act = _cpu.quantize_activation(int(qtype), x)
    ref = gguf_dequantize(raw.ravel(), qtype).astype(np.float64).ravel() @ act_f64(act)
    _cpu.set_isa(isa)
    got = _cpu.vec_dot(int(qtype), raw.ravel(), act, n)
    assert abs(got - ref) <= 1e-6 * error_scale(qtype, raw.ravel(), act), (got, ref)


def guarded(nbytes: int):
    """A uint8 array of nbytes that ends where a PROT_NONE page begins (a read past its end
    faults), and the mapping that keeps it alive."""
    page = mmap.PAGESIZE
    size = (nbytes + page - 1) // page * page
    m = mmap.mmap(-1, size + page)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(ctypes.c_void_p(base + size), page, 0) == 0  # PROT_NONE
    return np.frombuffer(m, np.uint8, nbytes, size - nbytes), m


@pytest.mark.skipif(not hasattr(mmap, "PAGESIZE") or sys.platform != "linux", reason="Linux")
@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_reads_stay_in_the_row(qtype, isa):
    """Weights and activation flush against an unreadable page: no body reads past either
    (vec_dot and vec_dot_n, every tail of the 4- and 8-block steps)."""
    _cpu.set_isa(isa)
    rng = np.random.default_rng(11)
    maps = []
    for nb in (1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 16, 17):
        n = 32 * nb
        raw = blocks(qtype, nb, rng).ravel()
        act = _cpu.quantize_activation(int(qtype), rng.standard_normal(n).astype(np.float32))
        gw, mw = guarded(raw.size)
        ga, ma = guarded(act.size)
        maps += [mw, ma]
        gw[:], ga[:] = raw, act
        assert _cpu.vec_dot(int(qtype), gw, ga, n) == _cpu.vec_dot(int(qtype), raw, act, n)
        got = _cpu.vec_dot_n(int(qtype), gw, ga, n, [0, 0, 0])
        assert np.all(got == _cpu.vec_dot(int(qtype), raw, act, n))


# ---- vec_dot_n ----


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_vec_dot_n_equals_vec_dot(qtype, isa):
    """Bit for bit vec_dot of the same ISA (and so the scalar body) for every count 1..max,
    repeated and gathered rows, and lengths with every kind of tail."""
    _cpu.set_isa(isa)
    rng = np.random.default_rng([int(qtype), len(isa)])
    m = _cpu.VEC_DOT_N_MAX
    for nb in (1, 6, 8, 13, 45):
        n = 32 * nb
        raw = blocks(qtype, 3 * nb, rng).reshape(3, -1)
        n_acts = m + 3
        x = rng.standard_normal((n_acts, n)).astype(np.float32)
        x[1] *= 1e-3
        x[2] = 0.0  # zero scales
        acts = np.stack([_cpu.quantize_activation(int(qtype), r) for r in x])
        one = np.array(
            [
                [_cpu.vec_dot(int(qtype), raw[r], acts[t], n) for r in range(3)]
                for t in range(n_acts)
            ]
        )
        for k in range(1, m + 1):
            rows = list(range(k)) if k % 2 else list(rng.integers(0, n_acts, k))
            got = _cpu.vec_dot_n(int(qtype), raw.ravel(), acts.ravel(), n, rows, 3)
            np.testing.assert_array_equal(got, one[rows], err_msg=f"nb={nb} rows={rows}")
    _cpu.set_isa("scalar")
    assert np.array_equal(
        one,
        [[_cpu.vec_dot(int(qtype), raw[r], acts[t], n) for r in range(3)] for t in range(n_acts)],
    )


# ---- the Linear op ----


@pytest.mark.parametrize("qtype", TYPES, ids=ids)
@pytest.mark.parametrize("T_", [1, 7, 64])
def test_linear(qtype, T_):
    """_cpu.Linear over a [rows, cols] tensor's raw bytes: the float64 product of the
    dequantized weights and activations, and bit for bit the per-row vec_dot."""
    rng = np.random.default_rng([int(qtype), T_])
    n_out, n_in = 40, 32 * 21
    raw = blocks(qtype, n_out * n_in // 32, rng).reshape(n_out, -1)
    x = rng.standard_normal((T_, n_in)).astype(np.float32)
    y = _cpu.Linear(raw.ravel(), int(qtype), n_out, n_in).forward(x)
    assert y.shape == (T_, n_out) and y.dtype == np.float32
    w64 = gguf_dequantize(raw, qtype).astype(np.float64).reshape(n_out, n_in)
    for t in range(T_):
        act = _cpu.quantize_activation(int(qtype), x[t])
        ref = w64 @ act_f64(act)
        np.testing.assert_allclose(y[t], ref, rtol=0, atol=1e-5 * np.abs(ref).max())
        exact = _cpu.vec_dot_rows(int(qtype), raw.ravel(), act, n_in, n_out)
        np.testing.assert_array_equal(y[t], exact)


# ---- registry ----


def test_type_info():
    for t in TYPES:
        info = kernels.quant_type(t)
        assert (info.name, info.block_size, info.type_size) == (t.name, 32, TYPE_SIZE[t])
        assert info.act_type == int(T.Q8_0)
        assert int(t) in _cpu.weight_types()


# ---- weight quantizers ----


def quantizer_cases(rng):
    """Rows of 40 blocks: Gaussian, and the corner cases of the min / max / amax searches."""
    x = rng.standard_normal((8, 32 * 40)).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block
    x[1, :32] = 1.5  # a constant block (max == min)
    x[2] *= 2.0 ** rng.integers(-20, 10, (32 * 40,)).astype(np.float32)
    x[3, 64:96] = [-5.0, 5.0] * 16  # equal magnitudes: the first one sets the sign
    x[4, 96:128] = np.arange(32) - 16.0  # exact .5 steps
    x[5] = np.round(x[5] * 8) / 8  # ties
    x[6] = -np.abs(x[6]) - 3.0  # all-negative and all-positive blocks (min far from 0)
    x[6, 640:] *= -1
    x[7] *= 2.0 ** rng.integers(-30, 30, 32 * 40).astype(np.float32)  # wide range in a block
    return x


@pytest.mark.parametrize("qtype", QUANTIZED, ids=ids)
def test_quantize_matches_gguf(qtype):
    """Bytes equal to gguf.quants (ggml's quantize_row_*_ref) for each row."""
    rng = np.random.default_rng(int(qtype))
    x = quantizer_cases(rng)
    got = _cpu.quantize(int(qtype), x, 1)
    with np.errstate(over="ignore"):  # row 7's scales overflow fp16, as in ggml
        ref = np.ascontiguousarray(gguf_quantize(x, qtype)).view(np.uint8).reshape(len(x), -1)
    assert got.shape == ref.shape and np.array_equal(got, ref)
    # and the rows without fp16 subnormal / overflowing scales come back within half a step
    # (Q5_0: one step, where -amax meets the clamp at q = 31), + the fp16 rounding of d and m
    rows = [0, 1, 3, 4, 5, 6]
    back = gguf_dequantize(got[rows], qtype).reshape(len(rows), -1)
    blocks_ = x[rows].reshape(-1, 32)
    if qtype == T.Q5_0:  # |d| = amax / 16
        step = np.abs(blocks_).max(axis=1) / 16 * 2
    else:  # d = (max - min) / 15 or 31
        step = np.ptp(blocks_, axis=1) / (15 if qtype == T.Q4_1 else 31)
    tol = step.repeat(32).reshape(back.shape) * 0.51 + 1e-3 * np.abs(x[rows])
    assert np.all(np.abs(back - x[rows]) <= tol)
