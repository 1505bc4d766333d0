"""F16 KV caches (numoe.cache, CACHE_TYPES 'f16': numoe's default, as llama.cpp's -ctk/-ctv f16).

Oracles: numpy's float16 conversion (IEEE round to nearest even, what ggml's FP32 -> FP16 and
F16C's vcvtps2ph with rounding mode 0 do) for every store, by the torch path's cache and by
the C++ attention on each ISA; a float64 softmax(q K^T) V over the F16-rounded rows for the
C++ attention; the C++ float32 path over the same values (bit for bit) and over unrounded
values (within the F16 rounding's reach). The model-level checks (the C++ blocks against the
torch path, batch invariance, transformers) run on F16 caches in test_decode_block.py,
test_forward_batch.py and hf_oracle.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_oracle import numoe_model
from isa_params import ISA_PARAMS

from numoe import _cpu, kernels, synth
from numoe.cache import CACHE_TYPES, KVCache, MLACache, cache_dtype
from numoe.engine import Session
from numoe.layers.rope import Rope


def hard_values(n: int, seed: int = 0) -> np.ndarray:
    """float32 [n] that probe the rounding: exact midpoints between neighbouring F16 values
    (ties: to even), values just either side of them, F16 subnormals, underflow to zero, the
    largest finite F16 and overflow to inf, and plain normals over many magnitudes."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 0x7BFF, n // 4, dtype=np.uint16).view(np.float16)  # finite, >= 0
    lo = h.astype(np.float32)
    hi = np.nextafter(h, np.float16(np.inf)).astype(np.float32)
    mid = (lo + hi) / 2  # exact in float32 (12 significant bits)
    parts = [
        np.float32([1e-9, 2.9e-8, 3.0e-8, 65504, 65519, 65520, 1e6, np.inf]),
        mid,
        np.nextafter(mid, np.float32(np.inf)),
        np.nextafter(mid, np.float32(-np.inf)),
        rng.uniform(0, 6.2e-5, n // 8).astype(np.float32),  # F16 subnormal range
        (rng.standard_normal(n // 4) * 10 ** rng.uniform(-6, 4, n // 4)).astype(np.float32),
    ]
    x = np.concatenate(parts)
    x[::2] *= -1
    return x[:n] if len(x) >= n else np.resize(x, n)


def f16(a: np.ndarray) -> np.ndarray:
    """numpy's float16 rounding (the oracle); overflow to inf is meant."""
    with np.errstate(over="ignore"):
        return a.astype(np.float16)


def bits(a) -> np.ndarray:
    a = a.numpy() if isinstance(a, torch.Tensor) else a
    return np.ascontiguousarray(a).view(np.uint16)


# --------------------------------------------------------------------- the Python caches


def test_types_and_memory():
    """f16 is the default for every tensor, and holds half the bytes of f32; a growth and a
    truncate keep the types; MLA's latent and rope key both take type_k."""
    assert tuple(CACHE_TYPES) == ("f32", "f16")
    a, b = KVCache(3, 4096, 4, 64, 32, "cpu"), KVCache(3, 4096, 4, 64, 32, "cpu", "f32", "f32")
    assert a.types == ("f16", "f16") and a.k.dtype == a.v.dtype == torch.float16
    assert a.nbytes * 2 == b.nbytes == 3 * 256 * 4 * (64 + 32) * 4
    a.reserve(600)
    a.truncate(300)
    assert a.k.dtype == torch.float16 and a.capacity == 512
    mixed = KVCache(1, 8, 1, 8, 8, "cpu", "f32", "f16")
    assert (mixed.k.dtype, mixed.v.dtype) == (torch.float32, torch.float16)
    m16, m32 = MLACache(2, 100, 512, 64, "cpu"), MLACache(2, 100, 512, 64, "cpu", "f32", "f32")
    assert m16.nbytes * 2 == m32.nbytes == 2 * 100 * 576 * 4


@pytest.mark.parametrize("preset", ["tiny-qwen3moe", "tiny-v2"])
def test_models_new_cache_types(tmp_path, preset):
    path = tmp_path / "m.gguf"
    synth.synth(preset, path, "Q4_K_M")
    model = numoe_model(path)
    assert model.new_cache(16).types == ("f16", "f16")
    assert Session(model, 16, type_k="f32", type_v="f32").cache.types == ("f32", "f32")
    if preset == "tiny-v2":  # MLA: both tensors are the key (llama.cpp: -ctv does not apply)
        assert model.new_cache(16, "f32", "f16").types == ("f32", "f32")
    else:
        assert model.new_cache(16, "f32", "f16").types == ("f32", "f16")
    with pytest.raises(ValueError, match=r"unknown KV cache type 'q8_0': choose from f32, f16"):
        model.new_cache(16, "f16", "q8_0")


def test_bad_type_names():
    for bad in ("bf16", "F16", "float16", ""):
        with pytest.raises(ValueError, match="choose from f32, f16"):
            cache_dtype(bad)
    with pytest.raises(ValueError, match="'bf16'"):
        KVCache(1, 8, 1, 8, 8, "cpu", "bf16")


def test_torch_path_store_rounds_as_numpy():
    """KVCache / MLACache.update (the torch path's store) rounds each value as numpy's
    float16 does, bit for bit; the views it returns are the stored values."""
    x = hard_values(4096)
    k = torch.from_numpy(x[:2048].copy()).view(16, 4, 32)  # [T, Hkv, Dk]
    v = torch.from_numpy(x[2048:].copy()).view(16, 4, 32)  # [T, Hkv, Dv]
    c = KVCache(2, 64, 4, 32, 32, "cpu")
    k_all, _ = c.update(1, 5, k, v)  # [21, Hkv, D] each
    assert k_all.dtype == torch.float16
    assert np.array_equal(bits(c.k[1, 5:21]), bits(f16(k.numpy())))
    assert np.array_equal(bits(c.v[1, 5:21]), bits(f16(v.numpy())))
    assert np.array_equal(bits(k_all[5:]), bits(f16(k.numpy())))
    m = MLACache(1, 64, 96, 32, "cpu")
    lat, kr = torch.from_numpy(x[:1536].copy()).view(16, 96), k[:, 0]  # [T, R], [T, dr]
    m.update(0, 0, lat, kr)
    assert np.array_equal(bits(m.latent[0, :16]), bits(f16(lat.numpy())))
    assert np.array_equal(bits(m.k_rope[0, :16]), bits(f16(kr.numpy())))


# --------------------------------------------------------------------- the C++ attention


def f16_caches(shape_k, shape_v, seed):
    """Random F16 caches (numpy float16) and their float32 upcasts (the same values)."""
    rng = np.random.default_rng(seed)
    kc = rng.standard_normal(shape_k).astype(np.float16)
    vc = rng.standard_normal(shape_v).astype(np.float16)
    return kc, vc


def softmax_pv(scores: np.ndarray, v: np.ndarray) -> np.ndarray:
    """float64: softmax over the last axis of scores [H, S], times v [H or 1, S, dv]."""
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hs,hsd->hd", p, np.broadcast_to(v, (scores.shape[0],) + v.shape[-2:]))


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_cpp_store_rounds_as_numpy(isa):
    """The C++ attention's cache store (gqa_decode, mla_decode; F16C on AVX2 and AVX-512,
    the scalar fp32_to_fp16 reference on scalar) rounds as numpy's float16, bit for bit,
    so the ISAs store the same bytes."""
    Hkv, n_ctx, pos = 4, 8, 3
    x = hard_values(2 * Hkv * 40, seed=1)
    for D in (40, 39):  # rows of 160 values (20 vector steps), of 156 (a scalar tail of 4)
        k, v = x[: Hkv * D], x[Hkv * D : 2 * Hkv * D]
        kc, vc = np.zeros((n_ctx, Hkv, D), np.float16), np.zeros((n_ctx, Hkv, D), np.float16)
        with kernels.using_isa(isa):
            _cpu.gqa_decode(np.ones(Hkv * D, np.float32), k.copy(), v, kc, vc, pos, 0.0)
        assert np.array_equal(bits(kc[pos].ravel()), bits(f16(k)))
        assert np.array_equal(bits(vc[pos].ravel()), bits(f16(v)))
        assert not kc[:pos].any() and not kc[pos + 1 :].any()
    H, R, dn, dr = 2, 48, 8, 16
    rng = np.random.default_rng(2)
    kv = (rng.standard_normal(R + dr) * 300).astype(np.float32)  # normed / rotated in place
    lat, krc = np.zeros((n_ctx, R), np.float16), np.zeros((n_ctx, dr), np.float16)
    cs = np.float32(rng.uniform(-1, 1, dr // 2))
    with kernels.using_isa(isa):
        _cpu.mla_decode(
            np.zeros(H * R, np.float32), np.zeros(H * (dn + dr), np.float32), dn, kv,
            (rng.uniform(0.5, 9, R)).astype(np.float32), 1e-6, lat, krc, pos, 1.0, cs, cs, True,
        )  # fmt: skip
    assert np.array_equal(bits(lat[pos]), bits(f16(kv[:R])))
    assert np.array_equal(bits(krc[pos]), bits(f16(kv[R:])))


GQA_CASES = [(8, 2, 32, 0), (8, 2, 32, 37), (4, 4, 36, 5), (6, 1, 32, 300), (32, 4, 128, 1100)]


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("H,Hkv,Dh,pos", GQA_CASES)
def test_gqa_f16_matches_float64(isa, H, Hkv, Dh, pos):
    """gqa_decode over F16 caches (q/k norms, rope, the rounded store of this token's K/V):
    its output against softmax(scale q K^T) V in float64 over the cache's F16 values; q is
    read back after the op normed and rotated it in place."""
    n_ctx = pos + 4
    rng = np.random.default_rng(pos + H)
    kc, vc = f16_caches((n_ctx, Hkv, Dh), (n_ctx, Hkv, Dh), pos)
    q = rng.standard_normal(H * Dh).astype(np.float32)
    k = rng.standard_normal(Hkv * Dh).astype(np.float32)
    v = rng.standard_normal(Hkv * Dh).astype(np.float32)
    qn, kn = (rng.uniform(0.5, 1.5, Dh).astype(np.float32) for _ in range(2))
    rope = Rope.plain(Dh, 10000.0, True)
    cos, sin = (t[0].numpy() for t in rope.cos_sin(pos, 1, torch.device("cpu")))
    scale = Dh**-0.5
    with kernels.using_isa(isa):
        out = _cpu.gqa_decode(
            q, k, v, kc, vc, pos, scale, q_norm=qn, k_norm=kn, eps=1e-6, cos=cos, sin=sin,
            rope_dim=Dh,
        )  # fmt: skip
    assert np.array_equal(bits(kc[pos].ravel()), bits(f16(k)))  # k: normed, roped
    K = kc[: pos + 1].astype(np.float64).transpose(1, 0, 2)  # [Hkv, S, Dh]
    V = vc[: pos + 1].astype(np.float64).transpose(1, 0, 2)  # [Hkv, S, Dh]
    g = H // Hkv
    Q = q.astype(np.float64).reshape(Hkv, g, Dh)  # heads of KV head j: j*g .. j*g+g-1
    want = np.concatenate(
        [softmax_pv(scale * Q[j] @ K[j].T, V[j][None]) for j in range(Hkv)]
    )  # [H, Dh]
    np.testing.assert_allclose(out.reshape(H, Dh), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("H,R,dn,dr,pos", [(4, 32, 16, 8, 0), (16, 64, 24, 16, 41), (8, 512, 16, 64, 700), (3, 20, 8, 6, 7)])  # fmt: skip
def test_mla_f16_matches_float64(isa, H, R, dn, dr, pos):
    """mla_decode over F16 caches against the float64 absorbed attention over their values:
    score = scale (q_lat . latent + q_rope . k_rope), out = softmax . latent; q_rope read back
    rotated from q."""
    n_ctx = pos + 3
    rng = np.random.default_rng(pos + R)
    lat, krc = f16_caches((n_ctx, R), (n_ctx, dr), pos + 1)
    q_lat = rng.standard_normal(H * R).astype(np.float32) * 0.2
    q = rng.standard_normal(H * (dn + dr)).astype(np.float32)
    kv = rng.standard_normal(R + dr).astype(np.float32)
    norm = rng.uniform(0.5, 1.5, R).astype(np.float32)
    rope = Rope.plain(dr, 10000.0, False)
    cos, sin = (t[0].numpy() for t in rope.cos_sin(pos, 1, torch.device("cpu")))
    with kernels.using_isa(isa):
        out = _cpu.mla_decode(q_lat, q, dn, kv, norm, 1e-6, lat, krc, pos, 0.3, cos, sin, False)
    L = lat[: pos + 1].astype(np.float64)  # [S, R]
    KR = krc[: pos + 1].astype(np.float64)  # [S, dr]
    QL = q_lat.astype(np.float64).reshape(H, R)
    QR = q.astype(np.float64).reshape(H, dn + dr)[:, dn:]  # [H, dr], rotated in place
    want = softmax_pv(0.3 * (QL @ L.T + QR @ KR.T), L[None])  # [H, R]
    np.testing.assert_allclose(out.reshape(H, R), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("H,Hkv,Dh,pos", [(8, 2, 32, 37), (6, 1, 32, 300), (32, 4, 128, 900)])
def test_gqa_f16_equals_f32_path_on_the_same_values(isa, H, Hkv, Dh, pos):
    """F16 rows and float32 rows holding the same (F16-representable) values give the same
    output bit for bit: the bodies differ only in their exact load conversion (no norm or
    rope here, so this token's K/V store the same values in both)."""
    kc, vc = f16_caches((pos + 2, Hkv, Dh), (pos + 2, Hkv, Dh), 7)
    rng = np.random.default_rng(8)
    q = rng.standard_normal(H * Dh).astype(np.float32)
    k, v = (rng.standard_normal(Hkv * Dh).astype(np.float16).astype(np.float32) for _ in "kv")
    with kernels.using_isa(isa):
        o16 = _cpu.gqa_decode(q.copy(), k.copy(), v, kc, vc, pos, Dh**-0.5)
        k32, v32 = kc.astype(np.float32), vc.astype(np.float32)
        o32 = _cpu.gqa_decode(q.copy(), k.copy(), v, k32, v32, pos, Dh**-0.5)
    assert np.array_equal(o16, o32)
    assert np.array_equal(kc.astype(np.float32), k32)  # the same row stored


# F16 against float32 caches of unrounded values: each cached value moves by a relative
# <= 2^-11 (4.9e-4); with O(1) values that moves a score by ~|q| |k| 2^-11 and an output
# (a convex mix of value rows) by about as much: 5e-3 bounds it with room.
F16_VS_F32_ATOL = 5e-3


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_f16_vs_f32_caches_within_rounding(isa):
    H, Hkv, Dh, pos = 16, 4, 64, 500
    rng = np.random.default_rng(3)
    k32 = rng.standard_normal((pos + 1, Hkv, Dh)).astype(np.float32)
    v32 = rng.standard_normal((pos + 1, Hkv, Dh)).astype(np.float32)
    q, k, v = (rng.standard_normal(n * Dh).astype(np.float32) for n in (H, Hkv, Hkv))
    with kernels.using_isa(isa):
        o32 = _cpu.gqa_decode(q.copy(), k.copy(), v, k32.copy(), v32.copy(), pos, Dh**-0.5)
        o16 = _cpu.gqa_decode(
            q.copy(), k.copy(), v, k32.astype(np.float16), v32.astype(np.float16), pos, Dh**-0.5
        )
    err = np.abs(o16 - o32).max()
    assert 0 < err < F16_VS_F32_ATOL


def test_cache_dtype_and_shape_errors():
    """A cache of another dtype is a TypeError naming it; a shape that does not fit is a
    ValueError (never a crash)."""
    z = np.zeros
    q, kv = z(32, np.float32), z(16, np.float32)
    with pytest.raises(TypeError, match="v_cache must be a float32 or float16 array"):
        _cpu.gqa_decode(q, kv.copy(), kv, z((4, 2, 8), np.float16), z((4, 2, 8)), 0, 1.0)
    with pytest.raises(TypeError, match="k_cache must be a float32 or float16"):
        _cpu.gqa_decode(q, kv.copy(), kv, z((4, 2, 8), np.int16), z((4, 2, 8), np.float16), 0, 1)
    with pytest.raises(ValueError, match="caches"):
        _cpu.gqa_decode(q, kv.copy(), kv, z((4, 2, 8), np.float16), z((4, 1, 8), np.float16), 0, 1)
    with pytest.raises(TypeError, match="latent_cache must be a float32 or float16"):
        _cpu.mla_decode(z(16, np.float32), z(2 * 12, np.float32), 4, z(16, np.float32),
                        z(8, np.float32), 1e-6, z((4, 8)), z((4, 8), np.float16), 0, 1.0,
                        z(4, np.float32), z(4, np.float32), True)  # fmt: skip
    with pytest.raises(TypeError):  # read-only (a cache is written): nanobind refuses it
        ro = z((4, 2, 8), np.float16)
        ro.flags.writeable = False
        _cpu.gqa_decode(q, kv.copy(), kv, ro, z((4, 2, 8), np.float16), 0, 1.0)


def test_decode_block_cache_errors(tmp_path):
    path = tmp_path / "m.gguf"
    synth.synth("tiny-qwen3moe", path, "Q4_K_M")
    model = numoe_model(path)
    blk = model.cpp_blocks()[0]
    D = model.cfg.n_embd
    x, f = np.zeros(D, np.float32), np.zeros(D, np.float32)
    good = model.new_cache(8).numpy_layer(0)  # float16 views [capacity, Hkv, Dh]
    cs = np.ones(model.rope.dim // 2, np.float32)
    with pytest.raises(TypeError, match=r"step: cache 1 must be a float32 or float16"):
        blk.step(x, f, False, good[0], good[1].astype(np.float64), 0, cs, cs)
    with pytest.raises(TypeError, match=r"sequence 1: cache 0 must be a float32 or float16"):
        blk.step_batch(
            x[None], f[None].copy(), False, [good[0], good[0].astype(np.int32)],
            [good[1], good[1]], np.int32([0]), np.int64([0]), cs[None], cs[None],
        )  # fmt: skip
    blk.step(x, f, False, good[0], good[1], 0, cs, cs)  # float16 caches: fine


# --------------------------------------------------------------------- flags and plumbing


@pytest.mark.parametrize("cmd", ["run", "chat", "serve", "bench", "tune"])
def test_cli_flags(cmd, capsys):
    """-ctk/--cache-type-k, -ctv/--cache-type-v: llama.cpp's names, f16 by default; an
    unknown type is a flag error listing the choices."""
    from numoe.cli import _parser
    from numoe.cli.flags import CACHE_TYPES as FLAG_TYPES

    assert FLAG_TYPES == tuple(CACHE_TYPES)  # the torch-free copy the flags use
    a = _parser().parse_args([cmd])
    assert (a.cache_type_k, a.cache_type_v) == ("f16", "f16")
    a = _parser().parse_args([cmd, "-ctk", "f32", "--cache-type-v", "f32"])
    assert (a.cache_type_k, a.cache_type_v) == ("f32", "f32")
    with pytest.raises(SystemExit) as e:
        _parser().parse_args([cmd, "-ctv", "q8_0"])
    assert e.value.code == 2
    assert "unknown KV cache type 'q8_0': choose from f32, f16" in capsys.readouterr().err


def test_serve_slots_take_the_types(tmp_path):
    """ServeConfig's types reach every slot's cache (Server.attach -> Scheduler)."""
    from numoe.serve.api import ServeConfig, Server
    from numoe.serve.scheduler import Scheduler

    path = tmp_path / "m.gguf"
    synth.synth("tiny-qwen3moe", path, "Q4_K_M")
    model = numoe_model(path)
    assert [s.cache.types for s in Scheduler(model, None, 2, 16).slots] == [("f16", "f16")] * 2
    srv = Server(ServeConfig("m", n_slots=2, n_ctx=16, cache_type_k="f32", cache_type_v="f16"))
    srv.attach(model, None)
    try:
        assert [s.cache.types for s in srv.scheduler.slots] == [("f32", "f16")] * 2
    finally:
        srv.scheduler.stop()
