"""Q2_K and Q3_K weight quantizers (csrc/quantize/q2_k.cpp, q3_k.cpp).

Oracle: numpy ports below of ggml's quantize_row_q2_K_ref / quantize_row_q3_K_ref (with
make_qkx2_quants and make_q3_quants) written in the C code's float32 operation order, so
the C++ bytes must equal them exactly; and gguf.quants.dequantize for the error bounds.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from test_quantize import _inputs, fp16, make_qkx2, nearest_int

from numoe import _cpu

Q = gguf.GGMLQuantizationType
f32 = np.float32

# ---- numpy ports of ggml's reference quantizers (float32, C operation order) ----


def running_max(v):
    """C's `if (v > m) m = v` from m = 0 along the last axis (NaN never taken)."""
    m = np.zeros(v.shape[:-1], f32)
    for j in range(v.shape[-1]):
        m = np.where(v[..., j] > m, v[..., j], m)
    return m


def pack_q2(L):
    """[nb, 256] levels 0..3 -> [nb, 64] qs: value 128h + 32k + l in bits 2k of qs[32h + l]."""
    g = L.reshape(-1, 2, 4, 32).astype(np.uint8)
    return (g[:, :, 0] | g[:, :, 1] << 2 | g[:, :, 2] << 4 | g[:, :, 3] << 6).reshape(-1, 64)


def ref_q2_k(x):
    nb = x.size // 256
    xs = x.reshape(nb, 16, 16).astype(f32)
    sc, mins, L = make_qkx2(xs.reshape(-1, 16), np.abs(xs).reshape(-1, 16), 3, -0.5, 0.1, 15, True)
    sc, mins, L = sc.reshape(nb, 16), mins.reshape(nb, 16), L.reshape(nb, 16, 16)
    max_scale, max_min = running_max(sc), running_max(mins)
    with np.errstate(all="ignore"):  # the unused branch of max_scale / max_min == 0
        inv_s = (f32(15) / max_scale).astype(f32)
        inv_m = (f32(15) / max_min).astype(f32)
        ls = nearest_int(inv_s[:, None] * sc) & 0xFF  # C's int -> uint8_t
        lm = (nearest_int(inv_m[:, None] * mins) << 4) & 0xFF
    scales = np.where((max_scale > 0)[:, None], ls, 0) | np.where((max_min > 0)[:, None], lm, 0)
    scales = scales.astype(np.uint8)
    d = np.where(max_scale > 0, fp16(max_scale / f32(15)), np.float16(0))
    dmin = np.where(max_min > 0, fp16(max_min / f32(15)), np.float16(0))
    dj = d.astype(f32)[:, None] * (scales & 0xF).astype(f32)
    dm = dmin.astype(f32)[:, None] * (scales >> 4).astype(f32)
    with np.errstate(all="ignore"):
        req = np.clip(nearest_int((xs + dm[..., None]) / dj[..., None]), 0, 3)
    L = np.where((dj != 0)[..., None], req, L).reshape(nb, 256)
    return np.concatenate([scales, pack_q2(L), d.astype(np.float16).view(np.uint8).reshape(-1, 2),
                           dmin.astype(np.float16).view(np.uint8).reshape(-1, 2)], axis=1)  # fmt: skip


def make_q3(x, nmax=4):
    """make_q3_quants(n, nmax, x, L, do_rmse=true) over the rows of x: (scale, L + nmax).
    Five passes for every row: a pass that changes nothing leaves the state as it was, so the
    C code's early break gives the same result."""
    idx = np.abs(x).argmax(axis=1)  # the first of the largest magnitude
    mx = x[np.arange(len(x)), idx]
    zero = np.abs(mx) < f32(1e-15)
    n = x.shape[1]
    with np.errstate(all="ignore"):
        iscale = (f32(-nmax) / mx).astype(f32)
        L = np.clip(nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
        sumlx = np.zeros(len(x), f32)
        suml2 = np.zeros(len(x), f32)
        for i in range(n):
            w, lf = x[:, i] * x[:, i], L[:, i].astype(f32)
            sumlx = sumlx + w * x[:, i] * lf
            suml2 = suml2 + w * lf * lf
        for _ in range(5):
            for i in range(n):
                w, li = x[:, i] * x[:, i], L[:, i].astype(f32)
                slx = sumlx - w * x[:, i] * li
                sl2 = suml2 - w * li * li
                new_l = np.clip(nearest_int(x[:, i] * sl2 / slx), -nmax, nmax - 1)
                fl = new_l.astype(f32)
                slx2 = slx + w * x[:, i] * fl
                sl22 = sl2 + w * fl * fl
                ok = (slx > 0) & (new_l != L[:, i]) & (sl22 > 0)
                ok &= slx2 * slx2 * suml2 > sumlx * sumlx * sl22
                L[:, i] = np.where(ok, new_l, L[:, i])
                sumlx = np.where(ok, slx2, sumlx)
                suml2 = np.where(ok, sl22, suml2)
        scale = np.where(suml2 > 0, sumlx / suml2, f32(0)).astype(f32)
    return np.where(zero, f32(0), scale), np.where(zero[:, None], 0, L + nmax)


def ref_q3_k(x):
    nb = x.size // 256
    xs = x.reshape(nb, 16, 16).astype(f32)
    sc, L = make_q3(xs.reshape(-1, 16))
    sc, L = sc.reshape(nb, 16), L.reshape(nb, 16, 16)
    amax, max_scale = np.zeros(nb, f32), np.zeros(nb, f32)  # the first of the largest |scale|
    for j in range(16):
        take = np.abs(sc[:, j]) > amax
        amax = np.where(take, np.abs(sc[:, j]), amax)
        max_scale = np.where(take, sc[:, j], max_scale)
    nz = max_scale != 0
    with np.errstate(all="ignore"):
        iscale = (f32(-32) / max_scale).astype(f32)
        q = nearest_int(iscale[:, None] * sc).astype(np.int8).astype(np.int32)  # C's int8_t
        d = np.where(nz, fp16(f32(1) / iscale), np.float16(0))
    lv = np.where(nz[:, None], np.clip(q, -32, 31) + 32, 0).astype(np.uint8)  # 6-bit, 0..63
    scales = np.zeros((nb, 12), np.uint8)
    scales[:, :8] = (lv[:, :8] & 0xF) | ((lv[:, 8:] & 0xF) << 4)
    for j in range(16):
        scales[:, 8 + j % 4] |= (lv[:, j] >> 4) << (2 * (j // 4))
    sc_stored = lv.astype(f32) - f32(32)  # what the block's scale bytes decode to
    dj = d.astype(f32)[:, None] * sc_stored
    with np.errstate(all="ignore"):
        req = np.clip(nearest_int(xs / dj[..., None]), -4, 3) + 4
    L = np.where((dj != 0)[..., None], req, L).reshape(nb, 256)
    hmask = np.zeros((nb, 32), np.uint8)
    for K in range(8):
        hmask |= ((L[:, 32 * K : 32 * K + 32] > 3) << K).astype(np.uint8)
    L = np.where(L > 3, L - 4, L)
    return np.concatenate([hmask, pack_q2(L), scales,
                           d.astype(np.float16).view(np.uint8).reshape(-1, 2)], axis=1)  # fmt: skip


REFS = {Q.Q2_K: ref_q2_k, Q.Q3_K: ref_q3_k}
TYPES = list(REFS)
# RMS error / RMS(x) on unit Gaussian rows, measured (512 x 4096 values): Q2_K 0.297,
# Q3_K 0.151. Bounds: measured + ~15 %.
REL_RMS_BOUND = {Q.Q2_K: 0.34, Q.Q3_K: 0.174}


def ids(q):
    return q.name


@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_equal_numpy_port_of_ggml_ref(qtype):
    for x in _inputs(6, 1024):
        got = _cpu.quantize(int(qtype), x)
        want = REFS[qtype](x.reshape(-1)).reshape(got.shape)
        assert np.array_equal(got, want), f"{qtype.name}: {np.mean(got != want):.4f} bytes differ"


@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_equal_port_on_scaled_and_odd_rows(qtype):
    """Large and small magnitudes, a row of one repeated value, a single spike, and 256k
    values of rows at scales from 0.01 to 10."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((6, 512), dtype=f32)
    x[0] *= f32(1e4)
    x[1] *= f32(1e-20)
    x[2] = f32(-3.0)
    x[3] = 0
    x[3, 17] = f32(5.0)
    x[4, ::16] = f32(0)
    x[5] = np.abs(x[5]) * f32(-1)
    got = _cpu.quantize(int(qtype), x)
    assert np.array_equal(got, REFS[qtype](x.reshape(-1)).reshape(got.shape))
    x = rng.standard_normal((64, 4096), dtype=f32) * rng.uniform(0.01, 10, (64, 1)).astype(f32)
    got = _cpu.quantize(int(qtype), x)
    assert np.array_equal(got, REFS[qtype](x.reshape(-1)).reshape(got.shape))


@pytest.mark.parametrize("qtype", TYPES, ids=ids)
def test_error_bound_and_structure(qtype):
    x = np.random.default_rng(2).standard_normal((512, 4096), dtype=f32)
    b = _cpu.quantize(int(qtype), x)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    assert b.shape == (512, 4096 // block * size) and b.dtype == np.uint8
    y = gguf.quants.dequantize(b, qtype)
    assert np.isfinite(y).all()
    rel = np.sqrt(np.mean((y - x) ** 2) / np.mean(x**2))
    assert rel < REL_RMS_BOUND[qtype], f"{qtype.name}: {rel:.4f}"
    # and numoe's own kernel reads the blocks as gguf does
    assert np.array_equal(_cpu.dequantize(int(qtype), b[:4].ravel(), 4 * 4096), y[:4].ravel())


def test_zero_and_constant_rows():
    x = np.zeros((2, 512), f32)
    x[1] = 0.5
    for q in TYPES:
        y = gguf.quants.dequantize(_cpu.quantize(int(q), x), q)
        assert np.array_equal(y[0], x[0]), q.name
        assert np.allclose(y[1], x[1], rtol=2e-3), q.name


def test_threads_do_not_change_bytes():
    x = np.random.default_rng(3).standard_normal((300, 1024), dtype=f32)
    for q in TYPES:
        one = _cpu.quantize(int(q), x, 1)
        assert np.array_equal(one, _cpu.quantize(int(q), x, 2))
        assert np.array_equal(one, _cpu.quantize(int(q), x, 7))


def test_bad_row_length():
    for q in TYPES:
        with pytest.raises(ValueError, match=f"not a positive multiple of {q.name}'s block size"):
            _cpu.quantize(int(q), np.zeros((2, 96), f32))
