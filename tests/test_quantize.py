"""Weight quantizers (csrc/quantize) and `numoe quantize`.

Oracles: `gguf.quants.dequantize` (independent numpy) for every format; `gguf.quants.quantize`
for Q8_0 / Q4_0 (it implements ggml's reference there); for Q4_K / Q5_K / Q6_K, numpy ports
below of ggml's quantize_row_q{4,5,6}_K_ref written with the C code's float32 operation
order, so the C++ bytes must equal them exactly.
"""

from __future__ import annotations

import dataclasses

import gguf
import numpy as np
import pytest
import torch

from numoe import _cpu
from numoe.cli import main as cli_main
from numoe.gguf import open_gguf
from numoe.gguf.mix import FTYPES, mix_info, plan, quantize_array, use_more_bits
from numoe.gguf.mix import tensor_type as mix_type
from numoe.gguf.quantize import quantize_file
from numoe.gguf.write import Lazy, write_gguf

Q = gguf.GGMLQuantizationType
f32 = np.float32

# ---- numpy ports of ggml's reference quantizers (float32, C operation order) ----


def nearest_int(v: np.ndarray) -> np.ndarray:
    val = (np.asarray(v, f32) + f32(12582912.0)).astype(f32)
    return (val.view(np.int32) & 0x007FFFFF) - 0x00400000


def make_qkx2(x, w, nmax, rmin, rdelta, nstep, use_mad=False):
    """make_qkx2_quants over the rows of x: (scale, the_min, L); use_mad: absolute error
    (Q2_K) instead of squared (Q4_K, Q5_K)."""

    def err(d):
        return np.abs(d) if use_mad else d * d

    n = x.shape[1]
    mn, mx = x[:, 0].copy(), x[:, 0].copy()
    sum_w = w[:, 0].copy()
    sum_x = sum_w * x[:, 0]
    for i in range(1, n):
        mn = np.where(x[:, i] < mn, x[:, i], mn)
        mx = np.where(x[:, i] > mx, x[:, i], mx)
        sum_w = sum_w + w[:, i]
        sum_x = sum_x + w[:, i] * x[:, i]
    mn = np.where(mn > 0, f32(0), mn)
    flat = mx == mn
    with np.errstate(all="ignore"):
        iscale = f32(nmax) / (mx - mn)
        scale = f32(1) / iscale
        L = np.clip(nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
        best = np.zeros_like(mn)
        for i in range(n):
            best = best + w[:, i] * err(scale * L[:, i].astype(f32) + mn - x[:, i])
        for step in range(nstep + 1):
            it = (f32(rmin) + f32(rdelta) * f32(step) + f32(nmax)) / (mx - mn)
            la = np.clip(nearest_int(it[:, None] * (x - mn[:, None])), 0, nmax)
            lf = la.astype(f32)
            s_l = np.zeros_like(mn)
            s_l2 = np.zeros_like(mn)
            s_xl = np.zeros_like(mn)
            for i in range(n):
                wl = w[:, i] * lf[:, i]
                s_l = s_l + wl
                s_l2 = s_l2 + wl * lf[:, i]
                s_xl = s_xl + wl * x[:, i]
            D = sum_w * s_l2 - s_l * s_l
            t_scale = (sum_w * s_xl - sum_x * s_l) / D
            t_min = (s_l2 * sum_x - s_l * s_xl) / D
            pos = t_min > 0
            t_min = np.where(pos, f32(0), t_min)
            t_scale = np.where(pos, s_xl / s_l2, t_scale)
            cur = np.zeros_like(mn)
            for i in range(n):
                cur = cur + w[:, i] * err(t_scale * lf[:, i] + t_min - x[:, i])
            upd = (D > 0) & (cur < best)
            L = np.where(upd[:, None], la, L)
            best = np.where(upd, cur, best)
            scale = np.where(upd, t_scale, scale)
            mn = np.where(upd, t_min, mn)
    L = np.where(flat[:, None], 0, L)
    scale = np.where(flat, f32(0), scale)
    return scale.astype(f32), (-mn).astype(f32), L


def fp16(v) -> np.ndarray:
    return np.asarray(v, f32).astype(np.float16)


def pack_k4_scales(ls, lm):
    out = np.zeros(ls.shape[:-1] + (12,), np.uint8)
    out[..., 0:4] = ls[..., 0:4]
    out[..., 4:8] = lm[..., 0:4]
    out[..., 8:12] = (ls[..., 4:8] & 0xF) | ((lm[..., 4:8] & 0xF) << 4)
    out[..., 0:4] |= (ls[..., 4:8] >> 4) << 6
    out[..., 4:8] |= (lm[..., 4:8] >> 4) << 6
    return out


def ref_k4(x: np.ndarray, nmax: int, rmin: float, nstep: int):
    """Q4_K / Q5_K reference up to the level packing: (d, dmin, packed scales, L [NB, 256])."""
    nb = x.size // 256
    xs = x.reshape(nb, 8, 32).astype(f32)
    s = np.zeros((nb, 8), f32)
    for l_ in range(32):
        s = s + xs[:, :, l_] * xs[:, :, l_]
    av_x = np.sqrt(s / f32(32))
    w = av_x[..., None] + np.abs(xs)
    sc, mins, L = make_qkx2(xs.reshape(-1, 32), w.reshape(-1, 32), nmax, rmin, 0.1, nstep)
    sc, mins, L = sc.reshape(nb, 8), mins.reshape(nb, 8), L.reshape(nb, 8, 32)
    max_scale = np.maximum(sc.max(axis=1), f32(0))
    max_min = np.maximum(mins.max(axis=1), f32(0))
    with np.errstate(divide="ignore"):
        inv_s = np.where(max_scale > 0, f32(63) / max_scale, f32(0)).astype(f32)
        inv_m = np.where(max_min > 0, f32(63) / max_min, f32(0)).astype(f32)
    ls = np.minimum(nearest_int(inv_s[:, None] * sc) & 0xFF, 63).astype(np.uint8)
    lm = np.minimum(nearest_int(inv_m[:, None] * mins) & 0xFF, 63).astype(np.uint8)
    d = fp16(max_scale / f32(63))
    dmin = fp16(max_min / f32(63))
    dj = d.astype(f32)[:, None] * ls.astype(f32)
    dm = dmin.astype(f32)[:, None] * lm.astype(f32)
    with np.errstate(all="ignore"):
        req = np.clip(nearest_int((xs + dm[..., None]) / dj[..., None]), 0, nmax)
    L = np.where((dj != 0)[..., None], req, L).reshape(nb, 256).astype(np.uint8)
    return d, dmin, pack_k4_scales(ls, lm), L


def ref_q4_k(x):
    d, dmin, scales, L = ref_k4(x, 15, -1.0, 20)
    g = L.reshape(-1, 4, 2, 32)
    qs = (g[:, :, 0] | (g[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2),
                           scales, qs], axis=1)  # fmt: skip


def ref_q5_k(x):
    d, dmin, scales, L = ref_k4(x, 31, -0.5, 15)
    g = L.reshape(-1, 4, 2, 32).astype(np.uint16)
    lo = g & 0xF
    qs = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(-1, 128).astype(np.uint8)
    hi = (g >> 4) & 1  # [nb, 4 groups, 2, 32]
    qh = np.zeros((g.shape[0], 32), np.uint16)
    for grp in range(4):
        qh |= hi[:, grp, 0] << (2 * grp)
        qh |= hi[:, grp, 1] << (2 * grp + 1)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2),
                           scales, qh.astype(np.uint8), qs], axis=1)  # fmt: skip


def make_qx_q6(x):
    """make_qx_quants(16, 32, x, L, rmse_type=1, NULL) over rows: (scale, L 0..63)."""
    nmax = 32
    idx = np.abs(x).argmax(axis=1)
    mx = x[np.arange(len(x)), idx]
    zero = np.abs(mx) < f32(1e-15)
    w = x * x
    with np.errstate(all="ignore"):

        def trial(iscale):
            l_ = np.clip(nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
            lf = l_.astype(f32)
            slx = np.zeros(len(x), f32)
            sl2 = np.zeros(len(x), f32)
            for i in range(x.shape[1]):
                slx = slx + w[:, i] * x[:, i] * lf[:, i]
                sl2 = sl2 + w[:, i] * lf[:, i] * lf[:, i]
            return l_ + nmax, slx, sl2

        L, slx, sl2 = trial(f32(-nmax) / mx)
        scale = np.where(sl2 != 0, slx / sl2, f32(0)).astype(f32)
        best = scale * slx
        for step in range(-9, 10):
            if step == 0:
                continue
            lt, slx, sl2 = trial(-(f32(nmax) + f32(0.1) * f32(step)) / mx)
            upd = (sl2 > 0) & (slx * slx > best * sl2)
            L = np.where(upd[:, None], lt, L)
            scale = np.where(upd, slx / sl2, scale)
            best = np.where(upd, scale * slx, best)
    L = np.where(zero[:, None], 0, L)
    scale = np.where(zero, f32(0), scale)
    return scale.astype(f32), L


def ref_q6_k(x):
    nb = x.size // 256
    xs = x.reshape(nb, 16, 16).astype(f32)
    sc, L = make_qx_q6(xs.reshape(-1, 16))
    sc, L = sc.reshape(nb, 16), L.reshape(nb, 16, 16)
    idx = np.abs(sc).argmax(axis=1)
    max_scale = sc[np.arange(nb), idx]
    zero = np.abs(max_scale) < f32(1e-15)
    with np.errstate(all="ignore"):
        iscale = (f32(-128) / max_scale).astype(f32)
        d = fp16(f32(1) / iscale)
        scales = np.minimum(127, nearest_int(iscale[:, None] * sc)).astype(np.int8)
        dj = d.astype(f32)[:, None] * scales.astype(f32)
        req = np.clip(nearest_int(xs / dj[..., None]), -32, 31) + 32
    L = np.where((dj != 0)[..., None], req, L).reshape(nb, 256).astype(np.uint8)
    g = L.reshape(nb, 2, 4, 32)  # [nb, half of 128, quarter, 32]
    ql = np.concatenate([g[:, :, 0] & 0xF | (g[:, :, 2] & 0xF) << 4,
                         g[:, :, 1] & 0xF | (g[:, :, 3] & 0xF) << 4], axis=2).reshape(nb, 128)  # fmt: skip
    qh = g[:, :, 0] >> 4 | (g[:, :, 1] >> 4) << 2 | (g[:, :, 2] >> 4) << 4 | (g[:, :, 3] >> 4) << 6
    out = np.concatenate([ql, qh.reshape(nb, 64), scales.view(np.uint8),
                          d.view(np.uint8).reshape(-1, 2)], axis=1)  # fmt: skip
    out[zero] = 0
    return out


REFS = {Q.Q4_K: ref_q4_k, Q.Q5_K: ref_q5_k, Q.Q6_K: ref_q6_k}
# RMS error / RMS(x) on unit Gaussian rows, measured (4096 x 512 values): Q8_0 0.0054,
# Q4_0 0.086, Q4_K 0.071, Q5_K 0.036, Q6_K 0.018. Bounds: measured + ~15 %.
REL_RMS_BOUND = {Q.Q8_0: 0.0062, Q.Q4_0: 0.099, Q.Q4_K: 0.082, Q.Q5_K: 0.042, Q.Q6_K: 0.021}
ALL = [Q.Q8_0, Q.Q4_0, Q.Q4_K, Q.Q5_K, Q.Q6_K]


def _inputs(rows: int, cols: int, seed: int = 0) -> list[np.ndarray]:
    """Gaussian, heavy-tailed with outliers, all-positive, tiny, and blocks of zeros/constants."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((rows, cols), dtype=f32)
    heavy = (rng.standard_t(3, (rows, cols)) * 0.02).astype(f32)
    heavy[0, 5] = 3.0
    pos = np.abs(g) + f32(0.5)
    tiny = g * f32(1e-6)
    special = g.copy()
    special[:, :256] = 0
    special[:, 256:512] = 0.25
    special[0, 300] = -0.25
    return [g, heavy, pos, tiny, special]


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_K, Q.Q6_K])
def test_k_quants_equal_numpy_port_of_ggml_ref(qtype):
    for x in _inputs(6, 1024):
        got = quantize_array(x, qtype)
        want = REFS[qtype](x.reshape(-1)).reshape(got.shape)
        assert np.array_equal(got, want), f"{qtype.name}: {np.mean(got != want):.4f} bytes differ"


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0])
def test_q8_0_q4_0_equal_gguf_quantize(qtype):
    for x in _inputs(8, 512, seed=1):
        assert np.array_equal(quantize_array(x, qtype), gguf.quants.quantize(x, qtype))


@pytest.mark.parametrize("qtype", ALL)
def test_error_bound_and_structure(qtype):
    x = np.random.default_rng(2).standard_normal((512, 4096), dtype=f32)
    b = _cpu.quantize(int(qtype), x)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    assert b.shape == (512, 4096 // block * size) and b.dtype == np.uint8
    y = gguf.quants.dequantize(b, qtype)
    assert np.isfinite(y).all()
    rel = np.sqrt(np.mean((y - x) ** 2) / np.mean(x**2))
    assert rel < REL_RMS_BOUND[qtype], f"{qtype.name}: {rel:.4f}"
    blocks = b.reshape(-1, size)
    if qtype in (Q.Q4_K, Q.Q5_K):  # fp16 d, dmin finite and >= 0
        d = blocks[:, :4].copy().view(np.float16)
        assert np.isfinite(d).all() and (d >= 0).all()
    if qtype == Q.Q6_K:  # int8 scales in [-128, 127], the largest at -128 or near it
        d = blocks[:, -2:].copy().view(np.float16)
        assert np.isfinite(d).all()


def test_zero_and_constant_rows_are_exact():
    x = np.zeros((2, 512), f32)
    x[1] = 0.5
    for q in ALL:
        y = gguf.quants.dequantize(quantize_array(x, q), q)
        assert np.array_equal(y[0], x[0]), q.name
        assert np.allclose(y[1], x[1], rtol=2e-3), q.name


def test_threads_do_not_change_bytes():
    x = np.random.default_rng(3).standard_normal((300, 1024), dtype=f32)
    for q in ALL:
        one = _cpu.quantize(int(q), x, 1)
        assert np.array_equal(one, _cpu.quantize(int(q), x, 2))
        assert np.array_equal(one, _cpu.quantize(int(q), x, 7))


def test_bad_inputs():
    with pytest.raises(ValueError, match="not a positive multiple of Q4_K's block size 256"):
        _cpu.quantize(int(Q.Q4_K), np.zeros((2, 96), f32))
    with pytest.raises(ValueError, match="no quantizer for GGML type 1"):
        _cpu.quantize(int(Q.F16), np.zeros((2, 64), f32))
    with pytest.raises(ValueError, match="2-D"):
        _cpu.quantize(int(Q.Q8_0), np.zeros(64, f32))
    with pytest.raises(ValueError, match="cannot quantize to F16"):
        quantize_array(np.zeros((1, 64), f32), Q.F16)
    assert _cpu.quantize(int(Q.Q8_0), np.zeros((0, 64), f32)).shape == (0, 68)


# ---- the mix ----


def test_use_more_bits_matches_llama_cpp():
    # n = 32 layers: first 4, last 4, and 4 + 3k + 2
    got = [i for i in range(32) if use_more_bits(i, 32)]
    assert got == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]


def _shapes(n_layer=8, d=512, n_expert=4, tied=False, kv_b=False):
    s = {"token_embd.weight": (1000, d), "output_norm.weight": (d,)}
    if not tied:
        s["output.weight"] = (1000, d)
    for i in range(n_layer):
        p = f"blk.{i}."
        s |= {
            p + "attn_norm.weight": (d,),
            p + "attn_q.weight": (d, d),
            p + "attn_k.weight": (d // 4, d),
            p + "attn_output.weight": (d, d),
            p + "ffn_gate_inp.weight": (n_expert, d),
            p + "ffn_gate_exps.weight": (n_expert, 256, d),
            p + "ffn_down_exps.weight": (n_expert, d, 256),
            p + "exp_probs_b.bias": (n_expert,),
        }
        if kv_b:
            s[p + "attn_k_b.weight"] = (8, 64, 128)  # rows of qk_nope = 128
            s[p + "attn_v_b.weight"] = (8, 128, 512)  # rows of kv_lora_rank = 512
        else:
            s[p + "attn_v.weight"] = (d // 4, d)
    return s


def _meta(n_layer=8, n_expert=4):
    return {"x.block_count": n_layer, "x.expert_count": n_expert}


def test_mix_q4_k_m():
    p = plan("x", _meta(), _shapes(), "Q4_K_M")
    assert p["output.weight"] == Q.Q6_K and p["token_embd.weight"] == Q.Q4_K
    more = [i for i in range(8) if use_more_bits(i, 8)]
    assert more == [0, 3, 6, 7]
    for i in range(8):
        want = Q.Q6_K if i in more else Q.Q4_K
        assert p[f"blk.{i}.attn_v.weight"] == want
        assert p[f"blk.{i}.ffn_down_exps.weight"] == want
        assert p[f"blk.{i}.attn_q.weight"] == Q.Q4_K
        assert p[f"blk.{i}.ffn_gate_exps.weight"] == Q.Q4_K
        assert p[f"blk.{i}.attn_output.weight"] == Q.Q4_K
        for keep in ("attn_norm.weight", "ffn_gate_inp.weight", "exp_probs_b.bias"):
            assert p[f"blk.{i}.{keep}"] is None
    assert p["output_norm.weight"] is None


def test_mix_other_ftypes_and_special_cases():
    s = _shapes()
    p5 = plan("x", _meta(), s, "Q5_K_M")
    assert p5["blk.0.attn_v.weight"] == Q.Q6_K and p5["blk.1.attn_v.weight"] == Q.Q5_K
    assert p5["blk.1.attn_q.weight"] == Q.Q5_K and p5["output.weight"] == Q.Q6_K
    p6 = plan("x", _meta(), s, "Q6_K")
    assert {p6[n] for n in s if p6[n] is not None} == {Q.Q6_K}
    p8 = plan("x", _meta(), s, "Q8_0")
    assert {p8[n] for n in s if p8[n] is not None} == {Q.Q8_0}
    p40 = plan("x", _meta(), s, "Q4_0")
    assert p40["output.weight"] == Q.Q6_K and p40["blk.1.attn_q.weight"] == Q.Q4_0
    # tied embeddings: token_embd is the head -> Q6_K
    assert plan("x", _meta(), _shapes(tied=True), "Q4_K_M")["token_embd.weight"] == Q.Q6_K
    # 8 experts (Mixtral): attn_v and attn_k Q8_0, attn_output Q5_K for Q4_K_M
    p8e = plan("x", _meta(n_expert=8), _shapes(n_expert=8), "Q4_K_M")
    assert p8e["blk.1.attn_v.weight"] == Q.Q8_0 and p8e["blk.1.attn_k.weight"] == Q.Q8_0
    assert p8e["blk.1.attn_output.weight"] == Q.Q5_K
    # rows not a multiple of 256: llama.cpp's fallback Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0
    # (the head: Q8_0); rows not a multiple of 32 either -> keep as stored
    odd = {
        "output.weight": (100, 96),
        "blk.0.attn_q.weight": (64, 96),
        "blk.0.ffn_down.weight": (64, 96),  # use_more_bits (1 layer): Q6_K -> Q8_0
        "blk.0.ffn_up.weight": (8, 40),
    }
    po = plan("x", _meta(1), odd, "Q4_K_M")
    assert po == {
        "output.weight": Q.Q8_0,
        "blk.0.attn_q.weight": Q.Q5_0,
        "blk.0.ffn_down.weight": Q.Q8_0,
        "blk.0.ffn_up.weight": None,
    }
    po5 = plan("x", _meta(1), odd, "Q5_K_M")
    assert po5["blk.0.attn_q.weight"] == Q.Q5_1 and po5["blk.0.ffn_down.weight"] == Q.Q8_0
    assert plan("x", _meta(1), odd, "Q6_K")["blk.0.attn_q.weight"] == Q.Q8_0
    # DeepSeek MLA split: attn_k_b (rows 128) falls back, attn_v_b (rows 512) takes the base
    pd = plan("x", _meta(), _shapes(kv_b=True), "Q4_K_M")
    assert pd["blk.3.attn_k_b.weight"] == Q.Q5_0 and pd["blk.3.attn_v_b.weight"] == Q.Q4_K
    pd5 = plan("x", _meta(), _shapes(kv_b=True), "Q5_K_M")
    assert pd5["blk.3.attn_k_b.weight"] == Q.Q5_1 and pd5["blk.3.attn_v_b.weight"] == Q.Q5_K
    pd6 = plan("x", _meta(), _shapes(kv_b=True), "Q6_K")
    assert pd6["blk.3.attn_k_b.weight"] == Q.Q8_0 and pd6["blk.3.attn_v_b.weight"] == Q.Q6_K
    info = mix_info("x", _meta(), list(_shapes()))
    assert mix_type("blk.2.attn_v.weight", (128, 512), "Q4_K_M", info) == Q.Q4_K


# ---- files ----


def _qwen_cfg(n_layer=4):
    from numoe.synth import preset_config

    cfg = preset_config("tiny-qwen3moe")
    return dataclasses.replace(
        cfg, n_embd=256, n_layer=n_layer, n_head=4, n_head_kv=2, head_dim=64, n_expert=4,
        n_ff_exp=256, n_vocab=512,
    )  # fmt: skip


def _write_f32(path, cfg, seed=0):
    from numoe.convert import keep_f32
    from numoe.models import get as get_arch
    from numoe.synth import random_tensor
    from numoe.text import synth_vocab_metadata

    arch = get_arch(cfg.arch)
    rng = np.random.default_rng(seed)
    tensors = {n: random_tensor(rng, n, s) for n, s in arch.tensor_specs(cfg).items()}
    meta = dict(arch.gguf_metadata(cfg)) | synth_vocab_metadata(cfg.n_vocab, "gpt2")
    write_gguf(path, cfg.arch, meta, tensors, "F32", keep_f32=keep_f32)


def _logits(path, tokens=(1, 5, 9, 200, 3, 17)):
    from numoe.engine import Session
    from numoe.models import load

    _, model = load(open_gguf(path))
    return Session(model, n_ctx=32).prefill(list(tokens)).float()


@pytest.fixture(scope="module")
def f32_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("q") / "f32.gguf"
    _write_f32(path, _qwen_cfg())
    return path


# relative L2 error of the last-position logits vs the F32 model (random weights, 4 layers,
# 4 experts top-2), measured: Q8_0 0.015, Q6_K 0.149, Q5_K_M 0.178, Q4_K_M 0.166, Q4_0 0.239.
# Not monotonic in bits: a router flip (an expert swapped at one position) dominates, and a
# file of the dequantized weights stored as F32 gives the same logits bit for bit, so this
# measures the model's sensitivity, not the kernels. Bounds ~1.7x measured; greedy token equal.
LOGIT_BOUND = {"Q8_0": 0.03, "Q6_K": 0.25, "Q5_K_M": 0.3, "Q4_K_M": 0.3, "Q4_0": 0.4}


# the other file types: tests/test_quantize_mix.py
@pytest.mark.parametrize("ftype", list(LOGIT_BOUND))
def test_quantize_file_mix_metadata_and_logits(tmp_path, capsys, f32_model, ftype):
    out = tmp_path / f"{ftype}.gguf"
    assert cli_main(["quantize", str(f32_model), str(out), "--type", ftype]) == 0
    err = capsys.readouterr().err
    assert f"[1/{len(open_gguf(f32_model).tensors)}]" in err and "MiB/s" in err
    src = gguf.GGUFReader(f32_model)
    r = gguf.GGUFReader(out)
    types = {t.name: t.tensor_type for t in r.tensors}
    base = FTYPES[ftype][0]
    assert r.fields["general.file_type"].contents() == FTYPES[ftype][1]
    for key, f in src.fields.items():
        if key.startswith("GGUF.") or key == "general.file_type":
            continue
        assert r.fields[key].types == f.types, key
        assert r.fields[key].contents() == f.contents(), key
    out_t = Q.Q8_0 if base == Q.Q8_0 else Q.Q6_K
    assert types["output.weight"] == out_t
    assert types["blk.1.ffn_gate_inp.weight"] == Q.F32 and types["blk.1.attn_norm.weight"] == Q.F32
    assert types["blk.1.attn_q.weight"] == base and types["blk.1.ffn_up_exps.weight"] == base
    # 4 layers: use_more_bits -> layers 2 and 3
    for i in range(4):
        more = ftype in ("Q4_K_M", "Q5_K_M") and i >= 2
        assert types[f"blk.{i}.ffn_down_exps.weight"] == (Q.Q6_K if more else base)
        assert types[f"blk.{i}.attn_v.weight"] == (Q.Q6_K if more else base)
    # tensors dequantize close to the source
    for t in r.tensors:
        s = next(x for x in src.tensors if x.name == t.name)
        a = gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1)
        b = np.asarray(s.data, f32).reshape(-1)
        assert np.sqrt(np.mean((a - b) ** 2) / np.mean(b**2)) < 0.15, t.name
    ref, got = _logits(f32_model), _logits(out)
    rel = float(torch.linalg.norm(got - ref) / torch.linalg.norm(ref))
    assert rel < LOGIT_BOUND[ftype], f"{ftype}: logits rel err {rel:.3f}"
    assert int(got.argmax()) == int(ref.argmax())


def test_requantize_same_type_copies_bytes(tmp_path, f32_model):
    q8 = tmp_path / "q8.gguf"
    q8b = tmp_path / "q8b.gguf"
    quantize_file(f32_model, q8, "Q8_0")
    quantize_file(q8, q8b, "Q8_0")
    assert q8.read_bytes() == q8b.read_bytes()
    q4 = tmp_path / "q4.gguf"  # from an already quantized file: Q8_0 -> Q4_K_M
    written = quantize_file(q8, q4, "Q4_K_M")
    assert written["output.weight"] == Q.Q6_K and written["blk.0.attn_q.weight"] == Q.Q4_K


def test_synth_k_types_stream_through_the_mix(tmp_path, capsys):
    out = tmp_path / "s.gguf"
    assert cli_main(["synth", "-o", str(out), "--type", "Q4_K_M"]) == 0
    r = gguf.GGUFReader(out)
    assert r.fields["general.file_type"].contents() == FTYPES["Q4_K_M"][1]
    # tiny preset: 8 experts and rows of 64 -> every quantized tensor takes llama.cpp's
    # fallback: Q4_K -> Q5_0, Q5_K (attn_output, 8 experts) -> Q5_1, Q6_K (ffn_down of the
    # use_more_bits layer 1) -> Q8_0; attn_k / attn_v (8 experts) and the head Q8_0
    types = {t.name: Q(t.tensor_type) for t in r.tensors}
    assert set(types.values()) == {Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.F32}
    assert types["token_embd.weight"] == Q.Q5_0 and types["output.weight"] == Q.Q8_0
    assert types["blk.0.attn_q.weight"] == types["blk.0.ffn_up_exps.weight"] == Q.Q5_0
    assert types["blk.0.attn_output.weight"] == Q.Q5_1 and types["blk.0.attn_v.weight"] == Q.Q8_0
    assert types["blk.0.ffn_down_exps.weight"] == Q.Q5_0
    assert types["blk.1.ffn_down_exps.weight"] == Q.Q8_0
    assert torch.isfinite(_logits(out)).all()  # numoe runs it (Q5_0 embedding rows too)
    cfg = _qwen_cfg(2)
    from numoe.models import get as get_arch
    from numoe.text import synth_vocab_metadata

    arch = get_arch(cfg.arch)
    specs = arch.tensor_specs(cfg)
    rng = np.random.default_rng(0)
    from numoe.synth import random_tensor

    lazy = {n: Lazy(s, lambda n=n, s=s: random_tensor(rng, n, s)) for n, s in specs.items()}
    meta = dict(arch.gguf_metadata(cfg)) | synth_vocab_metadata(cfg.n_vocab, "gpt2")
    write_gguf(tmp_path / "k.gguf", cfg.arch, meta, lazy, "Q5_K_M")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(tmp_path / "k.gguf").tensors}
    assert types["output.weight"] == Q.Q6_K and types["blk.0.attn_q.weight"] == Q.Q5_K
    # n = 2 layers: use_more_bits only for layer 1 (i >= 7n/8)
    assert types["blk.0.ffn_down_exps.weight"] == Q.Q5_K
    assert types["blk.1.ffn_down_exps.weight"] == Q.Q6_K
    assert torch.isfinite(_logits(tmp_path / "k.gguf")).all()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--type", "Q3_K"], "invalid choice: 'Q3_K'"),
        (["--type", "IQ4_XS"], "invalid choice: 'IQ4_XS'"),
        (["missing.gguf", "o.gguf"], "missing.gguf: no such file"),
        (["SAME", "SAME"], "is the input file"),
        (["IN", "nodir/o.gguf"], "does not exist"),
    ],
)
def test_cli_bad_inputs_are_one_line_errors(tmp_path, capsys, f32_model, argv, message):
    argv = [str(f32_model) if a in ("SAME", "IN") else a for a in argv]
    argv = [str(tmp_path / a) if a.startswith("nodir") else a for a in argv]
    if argv[0] == "--type":
        argv = [str(f32_model), str(tmp_path / "o.gguf"), *argv]
    code = None
    try:
        code = cli_main(["quantize", *argv])
    except SystemExit as e:  # argparse usage errors
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code not in (0, None)
    assert message in err[-1]
    assert "Traceback" not in "\n".join(err)
