"""Q2_K, Q3_K and IQ4_XS kernels (csrc/quant/q2_k.cpp, q3_k.cpp, iq4_xs.cpp).

Oracles: gguf.quants.dequantize (exact, on random blocks and on edge blocks), a float64 dot
of the dequantized weights and the dequantized Q8_K activation (tight bound), and the scalar
body (every ISA's vec_dot and vec_dot_n must equal it bit for bit).
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize
from isa_params import ISA_PARAMS
from test_quant import random_halves

from numoe import _cpu

TYPES = [T.Q2_K, T.Q3_K, T.IQ4_XS]
TYPE_SIZE = {T.Q2_K: 84, T.Q3_K: 110, T.IQ4_XS: 136}
HALF_FIELDS = {T.Q2_K: (80, 82), T.Q3_K: (108,), T.IQ4_XS: (0,)}  # fp16 d (, dmin) offsets


def ids(t):
    return t.name


@pytest.fixture(autouse=True)
def _restore_isa():
    prev = _cpu.isa()
    yield
    _cpu.set_isa(prev)


def blocks(qtype, n_blocks, rng, scale_exp=(-10, -4)) -> np.ndarray:
    """Random raw blocks [n_blocks, type_size]: every quant / scale bit pattern, finite d."""
    raw = rng.integers(0, 256, (n_blocks, TYPE_SIZE[qtype]), dtype=np.uint8)
    for off in HALF_FIELDS[qtype]:
        raw[:, off : off + 2] = (
            random_halves(rng, n_blocks, *scale_exp).view(np.uint8).reshape(-1, 2)
        )
    return raw


def set_half(raw, qtype, values):
    """Write fp16 `values` (one per block, or one per field) into every scale field."""
    v = np.asarray(values, np.float16).reshape(len(raw), -1)
    for k, off in enumerate(HALF_FIELDS[qtype]):
        raw[:, off : off + 2] = v[:, k % v.shape[1]].view(np.uint8).reshape(-1, 2)


def edge_blocks(qtype) -> np.ndarray:
    """Blocks at the extremes: all quant/scale bits 0 or 1 and alternating, with d zero,
    -0, negative, subnormal, the smallest normal and the largest finite fp16."""
    pats = [0x00, 0xFF, 0x55, 0xAA, 0x0F, 0xF0]
    ds = [0.0, -0.0, -1.5, 6e-8, 2.0**-14, 65504.0, -65504.0, 1.0]
    raw = np.array([[p] * TYPE_SIZE[qtype] for p in pats for _ in ds], np.uint8)
    set_half(raw, qtype, ds * len(pats))
    return raw


def q8_K_values(act: np.ndarray) -> np.ndarray:
    """float64 values of Q8_K activation blocks."""
    blk = act.reshape(-1, 292)
    d = blk[:, :4].copy().view(np.float32).astype(np.float64)
    return (d * blk[:, 4:260].view(np.int8)).ravel()


def dot_levels(isa):
    """The levels a case compares: scalar, and avx2 below avx512."""
    return list(dict.fromkeys(["scalar", *(["avx2"] if isa == "avx512" else []), isa]))


# ---- dequantize ----


@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_dequantize_matches_gguf(qtype):
    rng = np.random.default_rng(int(qtype))
    raw = np.concatenate([
        blocks(qtype, 40, rng, scale_exp=(-25, 16)),  # the whole fp16 range, subnormals too
        edge_blocks(qtype),
    ])  # fmt: skip
    n = len(raw) * 256
    got = _cpu.dequantize(int(qtype), raw.ravel(), n)
    ref = gguf_dequantize(raw.ravel(), qtype).astype(np.float32).ravel()
    assert got.dtype == np.float32 and got.shape == (n,)
    np.testing.assert_array_equal(got, ref)


def test_type_info():
    for t in TYPES:
        d = _cpu.quant_type_info(int(t))
        assert (d["name"], d["block_size"], d["type_size"]) == (t.name, 256, TYPE_SIZE[t])
        assert d["act_type"] == int(T.Q8_K)
        assert int(t) in _cpu.weight_types()


# ---- vec_dot ----

# |error| <= REL * sum|w_i a_i|: float32 rounding of the per-block combine and the sum.
REL = 2e-6


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_vec_dot(qtype, isa):
    rng = np.random.default_rng(100 + int(qtype))
    n, n_rows = 256 * 7, 6  # 7 super-blocks: one 4-block step and a tail of 3
    raw = blocks(qtype, n_rows * 7, rng).reshape(n_rows, -1)
    x = rng.standard_normal(n).astype(np.float32)
    x[:256] *= 1e-3
    act = _cpu.quantize_activation(int(qtype), x)
    assert act.size == 7 * 292  # Q8_K
    a64 = q8_K_values(act)
    results = {}
    for level in dot_levels(isa):
        _cpu.set_isa(level)
        results[level] = np.array([_cpu.vec_dot(int(qtype), raw[r], act, n) for r in range(n_rows)])
        assert np.array_equal(_cpu.vec_dot_rows(int(qtype), raw, act, n, n_rows), results[level])
    for r in range(n_rows):
        w64 = gguf_dequantize(raw[r], qtype).astype(np.float64).ravel()
        ref, scale = w64 @ a64, np.abs(w64 * a64).sum()
        for level, got in results.items():
            assert abs(got[r] - ref) <= REL * scale, (level, got[r], ref)
            assert got[r] == results["scalar"][r], level  # exact integer sums, one float order


def extreme_blocks(qtype) -> np.ndarray:
    """Two blocks per type at the largest products (d = 0.5): Q2_K q = 3, sc = m = 15;
    Q3_K q - 4 = 3 with sc = 31, and -4 with -32; IQ4_XS 113 with 31, and -127 with -32."""
    if qtype == T.Q2_K:
        raw = np.full((2, 84), 0xFF, np.uint8)
    elif qtype == T.Q3_K:
        raw = np.stack([np.full(110, 0xFF, np.uint8), np.zeros(110, np.uint8)])
    else:
        raw = np.stack([np.full(136, 0xFF, np.uint8), np.zeros(136, np.uint8)])
    set_half(raw, qtype, [0.5, 0.5])
    return raw.ravel()


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_vec_dot_extreme_values(isa):
    """All-max quants against activations of +-127: no int16 / int32 saturation."""
    n = 512
    same = np.full(n, 3.0, np.float32)  # the largest magnitude maps to -127: all -127
    pos = same.copy()
    pos[0] = -3.0  # all +127 but the first
    alt = same.copy()
    alt[::2] = -3.0
    for qtype in TYPES:
        raw = extreme_blocks(qtype)
        w64 = gguf_dequantize(raw, qtype).astype(np.float64).ravel()
        acts = [_cpu.quantize_activation(int(qtype), v) for v in (same, pos, alt)]
        _cpu.set_isa(isa)
        for act in acts:
            ref = w64 @ q8_K_values(act)
            got = _cpu.vec_dot(int(qtype), raw, act, n)
            assert abs(got - ref) <= 1e-6 * abs(ref) + 1e-6, (qtype.name, isa, got, ref)
            m = _cpu.VEC_DOT_N_MAX
            got_n = _cpu.vec_dot_n(int(qtype), raw, np.concatenate([act] * m), n, list(range(m)))
            assert np.all(got_n == got), (qtype.name, isa)


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_non_finite_scales_stay_in_bounds(isa):
    """NaN / inf scales give NaN / inf results, never a longer loop or a read outside the
    row (the row is the whole buffer here)."""
    rng = np.random.default_rng(7)
    _cpu.set_isa(isa)
    for qtype in TYPES:
        raw = blocks(qtype, 5, rng)
        set_half(raw, qtype, [np.inf, np.nan, -np.inf, 1.0, 1.0])
        act = _cpu.quantize_activation(int(qtype), rng.standard_normal(5 * 256).astype(np.float32))
        got = _cpu.vec_dot(int(qtype), raw.ravel(), act, 5 * 256)
        assert not np.isfinite(got)
        assert np.isnan(_cpu.dequantize(int(qtype), raw.ravel(), 5 * 256)[256:512]).all()


# ---- vec_dot_n ----


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_vec_dot_n_equals_vec_dot(qtype, isa):
    """Bit for bit the vec_dot of the same level, for every activation count 1..max, repeated
    and gathered activation rows, and row lengths with every tail (1, 5, 6, 7 super-blocks)."""
    _cpu.set_isa(isa)
    rng = np.random.default_rng([int(qtype), len(isa)])
    m = _cpu.VEC_DOT_N_MAX
    for nb in (1, 5, 6, 7):
        n = 256 * nb
        raw = blocks(qtype, 3 * nb, rng).reshape(3, -1)
        x = rng.standard_normal((m + 3, n)).astype(np.float32)
        x[1] *= 1e-3
        x[2] = 0.0  # all-zero activation (zero scales)
        acts = np.stack([_cpu.quantize_activation(int(qtype), r) for r in x])
        one = np.array(
            [[_cpu.vec_dot(int(qtype), raw[r], acts[t], n) for r in range(3)] for t in range(m + 3)]
        )
        for k in range(1, m + 1):
            rows = list(range(k)) if k % 2 else list(rng.integers(0, m + 3, k))
            got = _cpu.vec_dot_n(int(qtype), raw.ravel(), acts.ravel(), n, rows, 3)
            np.testing.assert_array_equal(got, one[rows], err_msg=f"n={n} rows={rows}")
    if isa != "scalar":  # and the scalar level's
        _cpu.set_isa("scalar")
        np.testing.assert_array_equal(
            _cpu.vec_dot_n(int(qtype), raw.ravel(), acts.ravel(), n, list(range(m)), 3),
            one[:m],
        )


# ---- the linear op over a [rows, cols] tensor ----


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_linear_op(qtype, isa):
    """_cpu.Linear over the raw bytes of a [40, 1280] tensor: each output is the float64 dot
    of the dequantized row and the dequantized activation (within REL), and the same level's
    vec_dot bit for bit, for T = 1, 7 and 64 tokens."""
    rng = np.random.default_rng(int(qtype) + 50)
    n_out, n_in = 40, 1280
    raw = blocks(qtype, n_out * n_in // 256, rng).reshape(n_out, -1)
    w64 = gguf_dequantize(raw.ravel(), qtype).astype(np.float64).reshape(n_out, n_in)
    op = _cpu.Linear(raw.ravel(), int(qtype), n_out, n_in)
    _cpu.set_isa(isa)
    for T_ in (1, 7, 64):
        x = rng.standard_normal((T_, n_in)).astype(np.float32)
        y = op.forward(x)
        assert y.shape == (T_, n_out) and y.dtype == np.float32
        for t in (0, T_ // 2, T_ - 1):
            act = _cpu.quantize_activation(int(qtype), x[t])
            a64 = q8_K_values(act)
            ref, bound = w64 @ a64, REL * np.abs(w64 * a64).sum(axis=1)
            assert np.all(np.abs(y[t] - ref) <= bound), (T_, t)
            np.testing.assert_array_equal(
                y[t], _cpu.vec_dot_rows(int(qtype), raw.ravel(), act, n_in, n_out)
            )
