"""GGUF block-format kernels (numoe._cpu): dequantize, activation quantizers, vec_dot.

Oracles: gguf.quants.dequantize (exact), numpy re-implementations of ggml's
quantize_row_q8_0 / quantize_row_q8_K (exact), a float64 dot product of the dequantized
operands (tight float tolerance), and the scalar path (every ISA path must match it).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize
from isa_params import ISA_PARAMS

from numoe import _cpu, kernels

ISAS = _cpu.isa_available()  # what the CPU has (ISA_PARAMS: every level, a skip where not)
WEIGHT_TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_K, T.Q5_K, T.Q6_K]
FLOAT_TYPES = {T.F32, T.F16, T.BF16}
K_TYPES = {T.Q4_K, T.Q5_K, T.Q6_K}
K4_TYPES = {T.Q4_K, T.Q5_K}  # take Q8_K4: Q8_K in their nibble order
Q8_K4 = 256  # numoe's own activation type id
K4_ORDER = [0, 2, 1, 3, 4, 6, 5, 7]  # memory slot k holds sub-block K4_ORDER[k] (self-inverse)
BLOCK = {
    T.F32: 1,
    T.F16: 1,
    T.BF16: 1,
    T.Q8_0: 32,
    T.Q4_0: 32,
    T.Q4_K: 256,
    T.Q5_K: 256,
    T.Q6_K: 256,
}
TYPE_SIZE = {
    T.F32: 4,
    T.F16: 2,
    T.BF16: 2,
    T.Q8_0: 34,
    T.Q4_0: 18,
    T.Q4_K: 144,
    T.Q5_K: 176,
    T.Q6_K: 210,
}
# offsets of the fp16 super-block scales inside a K-quant block
HALF_FIELDS = {T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}


@pytest.fixture(autouse=True)
def _restore_isa():
    prev = _cpu.isa()
    yield
    _cpu.set_isa(prev)


def random_halves(rng, size, lo=-14, hi=15):
    """Finite fp16 values with exponents in [lo, hi) (lo=-25 reaches the subnormals)."""
    mant = rng.uniform(1.0, 2.0, size) * rng.choice([-1.0, 1.0], size)
    return (mant * 2.0 ** rng.integers(lo, hi, size)).astype(np.float16)


def k_blocks(qtype, n_blocks, rng, scale_exp=(-10, -4)):
    """Random raw K-quant blocks with finite fp16 d / dmin."""
    raw = rng.integers(0, 256, (n_blocks, TYPE_SIZE[qtype]), dtype=np.uint8)
    for off in HALF_FIELDS[qtype]:
        raw[:, off : off + 2] = (
            random_halves(rng, n_blocks, *scale_exp).view(np.uint8).reshape(-1, 2)
        )
    return raw


def weights(qtype, n_rows, n, rng):
    """(raw bytes [n_rows, row_bytes], float32 source or None)."""
    if qtype in K_TYPES:
        raw = k_blocks(qtype, n_rows * n // 256, rng).reshape(n_rows, -1)
        return raw, None
    w = rng.standard_normal((n_rows, n)).astype(np.float32)
    raw = np.ascontiguousarray(gguf_quantize(w, qtype)).view(np.uint8).reshape(n_rows, -1)
    return raw, w


# ---- numpy references of ggml's activation quantizers ----


def ref_q8_0(x):
    b = x.reshape(-1, 32)
    d = np.abs(b).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        idv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    v = b * idv
    q = np.sign(v) * np.floor(np.abs(v) + 0)  # truncate ...
    frac = np.abs(v) - np.abs(q)
    q = q + np.sign(v) * (frac >= 0.5)  # ... then roundf: ties away from zero
    out = np.concatenate([d.astype(np.float16).view(np.uint8), q.astype(np.int8).view(np.uint8)], 1)
    return out.ravel()


def ref_q8_K(x):
    out = []
    for b in x.reshape(-1, 256):
        j = int(np.argmax(np.abs(b)))  # first of the largest magnitude
        if b[j] == 0:
            out.append(np.zeros(292, np.uint8))
            continue
        iscale = np.float32(-127.0) / b[j]
        q = np.minimum(np.rint(iscale * b), 127).astype(np.int8)  # rint: ties to even
        bsums = q.reshape(16, 16).astype(np.int16).sum(axis=1).astype("<i2")
        d = np.array([np.float32(1.0) / iscale], "<f4")
        out.append(np.concatenate([d.view(np.uint8), q.view(np.uint8), bsums.view(np.uint8)]))
    return np.concatenate(out)


def ref_q8_K4(x):
    """ref_q8_K with each block's 32-value sub-blocks in Q4_K nibble order and bsums
    replaced by 8 zeros and the 8 sub-block sums."""
    blk = ref_q8_K(x).reshape(-1, 292).copy()
    qs = blk[:, 4:260].reshape(-1, 8, 32)
    bsums = blk[:, 260:].copy().view("<i2").astype(np.int32)  # [B, 16]
    sub = (bsums[:, 0::2] + bsums[:, 1::2]).astype("<i2")  # [B, 8]
    blk[:, 4:260] = qs[:, K4_ORDER].reshape(-1, 256)
    blk[:, 260:] = np.concatenate([np.zeros_like(sub), sub], 1).view(np.uint8)
    return blk.ravel()


def act_dequant(qtype, act, n):
    """float64 values of a quantized activation."""
    if qtype in FLOAT_TYPES:
        return act.view(np.float32).astype(np.float64)
    if qtype in K_TYPES:
        blk = act.reshape(-1, 292)
        d = blk[:, :4].copy().view(np.float32)
        q = blk[:, 4:260].view(np.int8).astype(np.float32)
        if qtype in K4_TYPES:
            q = q.reshape(-1, 8, 32)[:, K4_ORDER].reshape(-1, 256)
        return (d * q).astype(np.float64).ravel()
    return gguf_dequantize(act, T.Q8_0).astype(np.float64).ravel()


# ---- dequantize ----


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("qtype", WEIGHT_TYPES, ids=lambda t: t.name)
def test_dequantize_matches_gguf(qtype, isa):
    _cpu.set_isa(isa)
    rng = np.random.default_rng(int(qtype))
    n = 256 * 12
    if qtype in K_TYPES:  # scales over the whole fp16 range, subnormals included
        raw = k_blocks(qtype, n // 256, rng, scale_exp=(-25, 15)).ravel()
    elif qtype in FLOAT_TYPES:
        x = (rng.standard_normal(n) * 2.0 ** rng.integers(-30, 14, n)).astype(np.float32)
        x[:4] = [0.0, -0.0, 1e-40, 6e-8]  # zeros, f32 subnormal, f16 subnormal
        raw = np.ascontiguousarray(gguf_quantize(x, qtype)).view(np.uint8).ravel()
    else:
        x = rng.standard_normal(n).astype(np.float32) * 2.0 ** rng.integers(
            -20, 10, (n // 32, 1)
        ).repeat(32).astype(np.float32)
        x[:32] = 0  # an all-zero block
        raw = np.ascontiguousarray(gguf_quantize(x, qtype)).view(np.uint8).ravel()
        # random quant bytes with the scales kept: every bit pattern of the values
        b = raw.reshape(-1, TYPE_SIZE[qtype])
        b[1::2, 2:] = rng.integers(0, 256, b[1::2, 2:].shape, dtype=np.uint8)
    got = _cpu.dequantize(int(qtype), raw, n)
    ref = gguf_dequantize(raw, qtype).astype(np.float32).ravel()
    assert got.dtype == np.float32 and got.shape == (n,)
    assert np.array_equal(got, ref)


# ---- activation quantizers ----


def activation_cases(rng, n):
    x = rng.standard_normal(n).astype(np.float32)
    x[n // 2 :] *= 1e-3
    x[:256] = 0.0  # all-zero blocks
    # exact .5 ties after scaling: Q8_0 blocks with max 127 (scale 1); a Q8_K block with
    # max -127 (scale -1)
    ties = rng.integers(-127, 127, 256).astype(np.float32) + 0.5
    ties[::32] = 127.0
    ties[0] = -127.0
    x[256:512] = ties
    x[512:768] = rng.standard_normal(256)
    x[512 + 7], x[512 + 100] = -5.0, 5.0  # equal magnitudes: the first one sets the sign
    return x


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_quantize_q8_0_matches_reference(isa):
    _cpu.set_isa(isa)
    rng = np.random.default_rng(1)
    x = activation_cases(rng, 4096)
    got = _cpu.quantize_activation(int(T.Q8_0), x)
    assert np.array_equal(got, ref_q8_0(x))
    # and ggml's own q8_0 quantizer agrees with the reference
    assert np.array_equal(
        got, np.ascontiguousarray(gguf_quantize(x, T.Q8_0)).view(np.uint8).ravel()
    )


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_quantize_q8_K_matches_reference(isa):
    _cpu.set_isa(isa)
    rng = np.random.default_rng(2)
    x = activation_cases(rng, 4096)
    got = _cpu.quantize_activation(int(T.Q6_K), x)
    assert got.size == 4096 // 256 * 292
    assert np.array_equal(got, ref_q8_K(x))
    for t in K4_TYPES:  # Q8_K4: the same blocks in Q4_K / Q5_K nibble order
        assert np.array_equal(_cpu.quantize_activation(int(t), x), ref_q8_K4(x))
    # its dequantize puts the values back in element order
    assert np.array_equal(
        _cpu.dequantize(Q8_K4, ref_q8_K4(x), 4096), act_dequant(T.Q6_K, got, 4096)
    )


def test_float_activation_is_f32_bytes():
    x = np.arange(10, dtype=np.float32)
    for t in FLOAT_TYPES:
        assert np.array_equal(_cpu.quantize_activation(int(t), x).view(np.float32), x)


# ---- vec_dot ----

# |error| <= REL * sum|w_i a_i|: float32 rounding of the per-block combine and the sum.
REL = 2e-6


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("qtype", WEIGHT_TYPES, ids=lambda t: t.name)
def test_vec_dot(qtype, isa):
    rng = np.random.default_rng(100 + int(qtype))
    n = 256 * 7 if qtype not in FLOAT_TYPES else 1000 + 37  # odd block counts: tails
    n_rows = 6
    raw, w_src = weights(qtype, n_rows, n, rng)
    x = rng.standard_normal(n).astype(np.float32)
    act = _cpu.quantize_activation(int(qtype), x)
    a64 = act_dequant(qtype, act, n)
    x64 = x.astype(np.float64)
    results = {}  # this level's, and the ones it is compared with
    for level in dict.fromkeys(["scalar", *(["avx2"] if isa == "avx512" else []), isa]):
        _cpu.set_isa(level)
        results[level] = np.array([_cpu.vec_dot(int(qtype), raw[r], act, n) for r in range(n_rows)])
        assert np.array_equal(_cpu.vec_dot_rows(int(qtype), raw, act, n, n_rows), results[level])
    for r in range(n_rows):
        w64 = gguf_dequantize(raw[r], qtype).astype(np.float64).ravel()
        ref = w64 @ a64
        scale = np.abs(w64 * a64).sum()
        got = results[isa][r]
        # 1) against the float64 dot of the dequantized operands
        assert abs(got - ref) <= REL * scale, (isa, got, ref)
        # 2) every ISA against the scalar path
        if qtype in K_TYPES:
            assert got == results["scalar"][r], isa  # integer sums, same float combine
        else:  # SIMD lanes sum in another order than the scalar loop
            assert abs(got - results["scalar"][r]) <= 2 * REL * scale, isa
        if qtype == T.Q8_0 and isa == "avx512":  # VNNI dots, the AVX2 float arithmetic
            assert results["avx512"][r] == results["avx2"][r]
        # 3) against the unquantized activation: within the activation's quantization error
        exact = w64 @ x64
        if qtype in FLOAT_TYPES:
            bound = REL * np.abs(w64 * x64).sum()
        else:
            bs = 256 if qtype in K_TYPES else 32
            amax = np.abs(x64).reshape(-1, bs).max(axis=1).repeat(bs)
            # rounding to the int8 grid (step amax/127) plus fp16 rounding of the Q8_0 scale
            bound = (np.abs(w64) * amax).sum() / 254 * 1.01 + np.abs(w64 * x64).sum() * 2**-10
        assert abs(got - exact) <= bound, (got, exact, bound)
        # 4) and against the original float weights (the weight format's own error)
        if w_src is not None:
            rel = abs(got - w_src[r].astype(np.float64) @ x64) / (
                np.linalg.norm(w_src[r]) * np.linalg.norm(x)
            )
            assert rel < {T.F32: 1e-6, T.F16: 1e-3, T.BF16: 1e-2, T.Q8_0: 2e-2, T.Q4_0: 0.15}[qtype]


def extreme_k_blocks(qtype, n: int) -> np.ndarray:
    """n elements of K-quant blocks with every quant and scale at its largest magnitude (Q6_K
    scales alternate -128 / 127) and d = dmin = 0.5: the worst case for integer sums."""
    raw = np.full((n // 256, TYPE_SIZE[qtype]), 0xFF, np.uint8)
    for off in HALF_FIELDS[qtype]:
        raw[:, off : off + 2] = np.array([0.5], np.float16).view(np.uint8)
    if qtype == T.Q6_K:
        raw[:, 192:208] = np.array([-128, 127] * 8, np.int8).view(np.uint8)
    return raw.ravel()


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_vec_dot_k_quants_extreme_values(isa):
    """All-max quants and the largest activations: the integer sums must not saturate."""
    n = 512
    x = np.full(n, 3.0, np.float32)
    x[::2] = -3.0
    for qtype in K_TYPES:
        raw = extreme_k_blocks(qtype, n)
        act = _cpu.quantize_activation(int(qtype), x)
        ref = gguf_dequantize(raw, qtype).astype(np.float64).ravel() @ act_dequant(qtype, act, n)
        _cpu.set_isa(isa)
        got = _cpu.vec_dot(int(qtype), raw, act, n)
        assert abs(got - ref) <= 1e-6 * abs(ref) + 1e-6, (qtype.name, isa, got, ref)


# ---- vec_dot_n (prefill: one weight row against several activations) ----


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("qtype", WEIGHT_TYPES, ids=lambda t: t.name)
def test_vec_dot_n_equals_vec_dot(qtype, isa):
    """Bit for bit vec_dot of the same ISA for every weight row and activation, for every
    count 1..max, repeated and gathered rows, and row lengths with every tail (K-quants: 1, 4k+1..4k+3
    super-blocks; Q8_0/Q4_0: odd block counts around the 2/4/8-block steps)."""
    _cpu.set_isa(isa)
    rng = np.random.default_rng([int(qtype), len(isa)])
    m = _cpu.VEC_DOT_N_MAX
    if qtype in K_TYPES:
        lengths = [256, 256 * 5, 256 * 6, 256 * 7, 256 * 16]
    elif qtype in FLOAT_TYPES:
        lengths = [1, 37, 1000 + 37]
    else:
        lengths = [32, 32 * 3, 32 * 13, 32 * 45]
    for n in lengths:
        raw, _ = weights(qtype, 3, n, rng)
        n_acts = m + 3
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
            assert got.dtype == np.float32 and got.shape == (k, 3)
            np.testing.assert_array_equal(got, one[rows], err_msg=f"n={n} rows={rows}")
            got = _cpu.vec_dot_n(int(qtype), raw[1], acts.ravel(), n, rows)  # one weight row
            np.testing.assert_array_equal(got[:, 0], one[rows, 1])
    assert np.array_equal(
        kernels.vec_dot_n(qtype, raw[0], acts[: m - 1], n),
        [kernels.vec_dot(qtype, raw[0], acts[t], n) for t in range(m - 1)],
    )


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_vec_dot_n_k_quants_extreme_values(isa):
    """All-max quants against the largest activations: no int16/int32 saturation."""
    n = 256 * 5
    m = _cpu.VEC_DOT_N_MAX
    x = np.full((m, n), 3.0, np.float32)
    x[:, ::2] = -3.0
    x[1::2] *= -1
    for qtype in K_TYPES:
        raw = extreme_k_blocks(qtype, n)
        acts = np.concatenate([_cpu.quantize_activation(int(qtype), r) for r in x])
        w64 = gguf_dequantize(raw, qtype).astype(np.float64).ravel()
        _cpu.set_isa(isa)
        got = _cpu.vec_dot_n(int(qtype), raw, acts, n, list(range(m)))[:, 0]
        for t in range(m):
            ref = w64 @ act_dequant(qtype, acts.reshape(m, -1)[t], n)
            assert abs(got[t] - ref) <= 1e-6 * abs(ref) + 1e-6, (qtype.name, isa, t)


def test_vec_dot_n_bad_arguments():
    n = 512
    raw = np.zeros(144 * 2, np.uint8)
    acts = np.concatenate([_cpu.quantize_activation(int(T.Q4_K), np.ones(n, np.float32))] * 3)
    assert _cpu.vec_dot_n(int(T.Q4_K), raw, acts, n, [2, 0, 2]).shape == (3, 1)
    with pytest.raises(ValueError, match="activation rows"):
        _cpu.vec_dot_n(int(T.Q4_K), raw, acts, n, [])
    with pytest.raises(ValueError, match="activation rows"):
        _cpu.vec_dot_n(int(T.Q4_K), raw, acts, n, [0] * (_cpu.VEC_DOT_N_MAX + 1))
    for bad in (3, -1):
        with pytest.raises(ValueError, match=f"activation row {bad}"):
            _cpu.vec_dot_n(int(T.Q4_K), raw, acts, n, [0, bad])
    with pytest.raises(ValueError, match="activation row 2"):
        _cpu.vec_dot_n(int(T.Q4_K), raw, acts[:-1], n, [2])  # last row one byte short
    with pytest.raises(ValueError, match="weights"):
        _cpu.vec_dot_n(int(T.Q4_K), raw[:-1], acts, n, [0])
    with pytest.raises(ValueError, match="weights"):
        _cpu.vec_dot_n(int(T.Q4_K), raw, acts, n, [0], 2)
    with pytest.raises(ValueError, match="n_rows"):
        _cpu.vec_dot_n(int(T.Q4_K), raw, acts, n, [0], 0)
    with pytest.raises(ValueError, match="multiple"):
        _cpu.vec_dot_n(int(T.Q4_K), raw, acts, 500, [0])
    with pytest.raises(ValueError, match="activation type"):
        _cpu.vec_dot_n(int(T.Q8_K), raw, acts, 256, [0])


# ---- registry and bounds ----


def test_type_info():
    for t in WEIGHT_TYPES:
        info = kernels.quant_type(t)
        assert (info.name, info.block_size, info.type_size) == (t.name, BLOCK[t], TYPE_SIZE[t])
    assert kernels.quant_type(T.Q4_K).act_type == Q8_K4
    assert kernels.quant_type(Q8_K4).name == "Q8_K4"
    assert kernels.quant_type(T.Q6_K).act_type == int(T.Q8_K)
    assert kernels.quant_type(T.Q4_0).act_type == int(T.Q8_0)
    assert kernels.quant_type(T.BF16).act_type == int(T.F32)


@pytest.mark.parametrize("type_id, name", [(4, "Q4_2"), (10, "Q2_K"), (23, "IQ4_XS"), (99, "99")])
def test_unsupported_type(type_id, name):
    raw = np.zeros(1024, np.uint8)
    with pytest.raises(ValueError, match=name):
        _cpu.dequantize(type_id, raw, 32)
    with pytest.raises(ValueError, match=name):
        _cpu.vec_dot(type_id, raw, raw, 32)
    with pytest.raises(ValueError, match=name):
        _cpu.quantize_activation(type_id, np.zeros(256, np.float32))


def test_bad_sizes():
    raw = np.zeros(144 * 2, np.uint8)
    act = _cpu.quantize_activation(int(T.Q4_K), np.ones(512, np.float32))
    assert _cpu.dequantize(int(T.Q4_K), raw, 512).shape == (512,)
    with pytest.raises(ValueError, match="144 bytes|288 bytes"):
        _cpu.dequantize(int(T.Q4_K), raw, 768)  # too few bytes
    with pytest.raises(ValueError, match="multiple"):
        _cpu.dequantize(int(T.Q4_K), raw, 300)  # not whole blocks
    with pytest.raises(ValueError, match="multiple"):
        _cpu.dequantize(int(T.Q4_K), raw, -256)
    with pytest.raises(ValueError, match="weight row"):
        _cpu.vec_dot(int(T.Q4_K), raw[:-1], act, 512)
    with pytest.raises(ValueError, match="activation"):
        _cpu.vec_dot(int(T.Q4_K), raw, act[:-1], 512)
    with pytest.raises(ValueError, match="multiple"):
        _cpu.vec_dot(int(T.Q4_K), raw, act, 500)
    with pytest.raises(ValueError, match="multiple"):
        _cpu.quantize_activation(int(T.Q6_K), np.ones(300, np.float32))
    with pytest.raises(ValueError, match="multiple"):
        _cpu.quantize_activation(int(T.Q4_0), np.ones(48, np.float32))
    with pytest.raises(ValueError, match="weights"):
        _cpu.vec_dot_rows(int(T.Q4_K), raw, act, 512, 2)
    for a in (int(T.Q8_K), Q8_K4):
        with pytest.raises(ValueError, match="activation type"):
            _cpu.vec_dot(a, raw, act, 256)
    with pytest.raises(TypeError):  # raw bytes are never value-cast from another dtype
        _cpu.dequantize(int(T.Q4_K), raw.astype(np.float32), 256)
    with pytest.raises(TypeError):  # nor copied from a strided view
        _cpu.dequantize(int(T.Q4_K), np.zeros(2 * 288, np.uint8)[::2], 256)


def test_kernels_helpers():
    rng = np.random.default_rng(5)
    raw, _ = weights(T.Q6_K, 4, 512, rng)
    x = rng.standard_normal(512).astype(np.float32)
    y = kernels.gemv_reference(T.Q6_K, raw, x)
    act = kernels.quantize_activation(T.Q6_K, x)
    assert np.array_equal(y, [kernels.vec_dot(T.Q6_K, raw[r], act, 512) for r in range(4)])
    assert np.array_equal(kernels.dequantize(T.Q6_K, raw), gguf_dequantize(raw, T.Q6_K).ravel())
    with kernels.using_isa("scalar"):
        assert kernels.isa() == "scalar"


# ---- ISA selection ----


def test_set_isa():
    assert _cpu.isa() in ISAS and ISAS[0] == "scalar"
    for isa in ISAS:
        _cpu.set_isa(isa)
        assert _cpu.isa() == isa
    assert _cpu.set_isa("scalar") == ISAS[-1]
    with pytest.raises(ValueError, match="unknown ISA"):
        _cpu.set_isa("sse9")
    for missing in {"avx2", "avx512"} - set(ISAS):
        with pytest.raises(ValueError, match="not supported"):
            _cpu.set_isa(missing)


def _run_isa(value):
    env = dict(os.environ, NUMOE_ISA=value)
    code = "import numoe._cpu as c; print(c.isa())"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("level", ["scalar", "avx2", "avx512"])
def test_numoe_isa_env(level):
    p = _run_isa(level)
    assert p.returncode == 0, p.stderr
    if level in ISAS:
        assert p.stdout.strip() == level and p.stderr == ""
    else:  # falls back to the best level, with a warning
        assert p.stdout.strip() == ISAS[-1] and "lacks" in p.stderr


def test_numoe_isa_env_bogus():
    p = _run_isa("bogus")
    assert p.returncode != 0
    assert "ValueError" in p.stderr and "NUMOE_ISA='bogus'" in p.stderr
