"""numoe's C++ decode-step ops (RMS norm, rotary embedding, routing) against their torch
references and hand-computed cases."""

import math

import numpy as np
import pytest
import torch
from isa_params import ISA_PARAMS

from numoe import _cpu, kernels
from numoe.layers.moe import route, route_torch
from numoe.layers.norms import add_rms_norm, rms_norm, rms_norm_torch
from numoe.layers.rope import Rope


@pytest.mark.parametrize("shape", [(1, 2048), (3, 32, 128), (5, 64), (2, 4, 128)])
def test_rms_norm_matches_torch(shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g) * 3
    w = torch.randn(shape[-1], generator=g)
    y = rms_norm(x, w, 1e-6)
    assert y.shape == x.shape
    torch.testing.assert_close(y, rms_norm_torch(x, w, 1e-6), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("rows", [1, 7])
def test_add_rms_norm(rows):
    """The fused residual add + norm: the sum exactly torch's x + y, the norm exactly the C++
    rms_norm of that sum (and within float rounding of torch's); bad shapes raise."""
    g = torch.Generator().manual_seed(rows)
    x, y = torch.randn(rows, 256, generator=g) * 3, torch.randn(rows, 256, generator=g)
    w = torch.randn(256, generator=g)
    s, n = add_rms_norm(x, y, w, 1e-6)
    assert torch.equal(s, x + y)
    assert torch.equal(n, rms_norm(x + y, w, 1e-6))
    s0, n0 = add_rms_norm(x, None, w, 1e-6)  # nothing to add (the first block)
    assert s0 is x and torch.equal(n0, rms_norm(x, w, 1e-6))
    torch.testing.assert_close(n, rms_norm_torch(x + y, w, 1e-6), rtol=2e-6, atol=1e-6)
    s2, n2 = add_rms_norm(x[:, :128].contiguous(), y[:, ::2], w[:128], 1e-6)  # strided y: torch
    assert torch.equal(s2, x[:, :128] + y[:, ::2])
    torch.testing.assert_close(n2, rms_norm_torch(s2, w[:128], 1e-6), rtol=2e-6, atol=1e-6)
    with pytest.raises(ValueError, match="must agree"):
        _cpu.add_rms_norm(x.numpy(), y[:, :128].contiguous().numpy(), w.numpy(), 1e-6)


def test_rms_norm_hand_case():
    x = torch.tensor([[3.0, 4.0]])  # mean of squares 12.5
    y = rms_norm(x, torch.tensor([1.0, 2.0]), 0.0)
    s = 1 / math.sqrt(12.5)
    torch.testing.assert_close(y, torch.tensor([[3 * s, 8 * s]]))


def test_rms_norm_leaves_other_dtypes_to_torch():
    x = torch.randn(2, 16, dtype=torch.float64)
    w = torch.ones(16, dtype=torch.float64)
    assert rms_norm(x, w, 1e-6).dtype == torch.float64


@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("T,H,dim", [(1, 32, 128), (7, 4, 64), (3, 1, 2)])
def test_rope_equals_torch_exactly(neox, T, H, dim):
    rope = Rope.plain(dim, 10000.0, neox)
    g = torch.Generator().manual_seed(T * H + dim)
    x = torch.randn(T, H, dim, generator=g)
    cos, sin = rope.cos_sin(11, T, torch.device("cpu"))
    y = rope.apply(x, cos, sin)
    assert torch.equal(y, rope.apply_torch(x, cos, sin))  # each product rounded as torch does
    assert not torch.equal(y, x)  # rotated, and the input left as it was
    assert torch.equal(
        x, torch.randn(T, H, dim, generator=torch.Generator().manual_seed(T * H + dim))
    )


def test_ops_read_strided_slices():
    """MLA's latent kv[:, :R] and rope part q[..., dn:] are slices of wider tensors."""
    g = torch.Generator().manual_seed(3)
    kv = torch.randn(5, 48, generator=g)
    w = torch.randn(32, generator=g)
    torch.testing.assert_close(
        rms_norm(kv[:, :32], w, 1e-6), rms_norm_torch(kv[:, :32], w, 1e-6), rtol=2e-6, atol=1e-6
    )
    rope = Rope.plain(16, 10000.0, False)
    cos, sin = rope.cos_sin(0, 5, torch.device("cpu"))
    q = torch.randn(5, 3, 40, generator=g)
    for x in (q[..., 24:], kv[:, None, 32:]):
        assert not x.is_contiguous()
        assert torch.equal(rope.apply(x, cos, sin), rope.apply_torch(x, cos, sin))


def test_rope_hand_case():
    # one pair at angle pi/2: (a, b) -> (-b, a)
    x = np.array([[[1.0, 2.0]]], dtype=np.float32)
    c, s = np.zeros((1, 1), np.float32), np.ones((1, 1), np.float32)
    assert _cpu.rope(x, c, s, 2, True).tolist() == [[-2.0, 1.0]]


def test_empty_inputs():
    assert _cpu.rms_norm(np.zeros((0, 4), np.float32), np.ones(4, np.float32), 1e-6).shape == (0, 4)
    z = np.zeros((0, 2), np.float32)
    assert _cpu.rope(np.zeros((0, 2, 4), np.float32), z, z, 4, True).shape == (0, 8)
    ids, w = _cpu.route(np.zeros((0, 8), np.float32), 2, "softmax")
    assert ids.size == w.size == 0


def test_rope_bad_shapes():
    x = np.zeros((1, 2, 8), np.float32)
    with pytest.raises(ValueError, match="cos and sin"):
        _cpu.rope(x, np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float32), 8, True)
    with pytest.raises(ValueError, match="even"):
        _cpu.rope(x, np.zeros((1, 2), np.float32), np.zeros((1, 2), np.float32), 5, True)
    with pytest.raises(ValueError, match="head_dim"):
        _cpu.rope(np.zeros((1, 8), np.float32), x[0], x[0], 8, True)


CASES = [
    {"k": 2, "gating": "softmax"},  # Mixtral
    {"k": 8, "gating": "softmax", "norm": True},  # Qwen3-MoE
    {"k": 6, "gating": "softmax", "n_group": 8, "topk_group": 3, "scale": 16.0},  # DeepSeek-V2
    {
        "k": 8,
        "gating": "sigmoid",
        "norm": True,
        "scale": 2.5,
        "n_group": 8,
        "topk_group": 4,
        "bias": True,
    },  # V3
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("T", [1, 7])
def test_route_matches_torch(case, T):
    E = 64
    g = torch.Generator().manual_seed(T + case["k"])
    logits = torch.randn(T, E, generator=g) * 2
    kw = dict(case)
    kw["bias"] = torch.rand(E, generator=g) * 0.1 if case.get("bias") else None
    ids, w = route(logits, **kw)
    ids_ref, w_ref = route_torch(logits, **kw)
    assert ids.dtype == torch.int64 and w.dtype == torch.float32
    assert torch.equal(ids, ids_ref)
    torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-7)


def test_route_hand_case():
    # softmax of [0, ln 3, ln 2, -inf-ish]: 1/6, 3/6, 2/6, ~0; top-2 = experts 1, 2
    logits = torch.tensor([[0.0, math.log(3), math.log(2), -50.0]])
    ids, w = route(logits, 2)
    assert ids.tolist() == [[1, 2]]
    torch.testing.assert_close(w, torch.tensor([[0.5, 1 / 3]]))
    ids, w = route(logits, 2, norm=True, scale=2.0)
    torch.testing.assert_close(w, torch.tensor([[1.2, 0.8]]))


def test_route_ties_go_to_the_lower_index():
    ids, _ = route(torch.zeros(1, 8), 3)
    assert ids.tolist() == [[0, 1, 2]]


def test_route_grouping_off_and_nan():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(3, 8, generator=g)
    for kw in (
        {"n_group": 3, "topk_group": 3},
        {"n_group": 1, "topk_group": 0},
        {"n_group": 0, "topk_group": 1},
        {"n_group": -2, "topk_group": 1},
    ):
        ids, w = route(x, 2, **kw)  # grouping off: ignored, as in the torch reference
        ids_ref, w_ref = route_torch(x, 2, **kw)
        assert torch.equal(ids, ids_ref)
        torch.testing.assert_close(w, w_ref)
    x[1, 5] = float("nan")
    ids, _ = route(x, 2, gating="sigmoid")
    assert ids[1, 0] == 5  # NaN ranks first, as in torch.topk; no undefined sort order


def test_route_bad_input():
    x = torch.zeros(1, 8)
    with pytest.raises(ValueError, match="gating"):
        route(x, 2, gating="relu")
    with pytest.raises(ValueError, match="k must be"):
        route(x, 9)
    with pytest.raises(ValueError, match="bias"):
        route(x, 2, bias=torch.zeros(7))
    with pytest.raises(ValueError, match="n_group"):
        route(x, 2, n_group=3, topk_group=1)
    with pytest.raises(ValueError, match="fewer than k"):
        route(x, 4, n_group=4, topk_group=1)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("qk_norm", [True, False])
@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize(
    "H,Hkv,Dh,pos",
    [(8, 2, 32, 0), (8, 2, 32, 37), (4, 4, 36, 5), (6, 1, 32, 300), (16, 2, 24, 9),
     (32, 4, 128, 1100)],  # Qwen3's heads, rows in registers 64 at a time, 2 position chunks
)  # fmt: skip
def test_gqa_decode_matches_torch(isa, qk_norm, neox, H, Hkv, Dh, pos):
    """One token's attention in C++ (each ISA's body; head groups split over the pool or
    not): norms, rope, the cache store and softmax(q K^T) V against the torch path
    (rms_norm_torch, Rope.apply_torch, causal_attention)."""
    from numoe.layers.attention import causal_attention

    n_ctx = max(320, pos + 8)
    g = torch.Generator().manual_seed(H * 1000 + pos + qk_norm)
    q, k, v = (torch.randn(1, n * Dh, generator=g) for n in (H, Hkv, Hkv))
    kc, vc = torch.randn(n_ctx, Hkv, Dh, generator=g), torch.randn(n_ctx, Hkv, Dh, generator=g)
    qn, kn = torch.rand(Dh, generator=g) + 0.5, torch.rand(Dh, generator=g) + 0.5
    rope = Rope.plain(Dh, 10000.0, neox)
    cos, sin = rope.cos_sin(pos, 1, torch.device("cpu"))
    scale = Dh**-0.5

    qr, kr = q.view(1, H, Dh), k.view(1, Hkv, Dh)
    if qk_norm:
        qr, kr = rms_norm_torch(qr, qn, 1e-6), rms_norm_torch(kr, kn, 1e-6)
    qr, kr = rope.apply_torch(qr, cos, sin), rope.apply_torch(kr, cos, sin)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    kc_ref[pos], vc_ref[pos] = kr[0], v.view(Hkv, Dh)
    want = causal_attention(qr, kc_ref[: pos + 1], vc_ref[: pos + 1], pos, scale)  # [1, H, Dh]

    norms = {"q_norm": qn.numpy(), "k_norm": kn.numpy()} if qk_norm else {}
    with kernels.using_isa(isa):
        out = _cpu.gqa_decode(
            q.numpy(), k.numpy(), v.numpy(), kc.numpy(), vc.numpy(), pos, scale, eps=1e-6,
            cos=cos[0].numpy(), sin=sin[0].numpy(), rope_dim=Dh, neox=neox, **norms,
        )  # fmt: skip
    torch.testing.assert_close(torch.from_numpy(out).view(1, H, Dh), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kc, kc_ref, rtol=1e-6, atol=1e-6)  # stored at pos, rest kept
    assert torch.equal(vc, vc_ref)


def test_gqa_decode_checks():
    z = np.zeros
    kc, vc = z((4, 2, 8), np.float32), z((4, 2, 8), np.float32)
    q, kv = z(32, np.float32), z(16, np.float32)
    with pytest.raises(ValueError, match="position"):
        _cpu.gqa_decode(q, kv.copy(), kv, kc, vc, 4, 1.0)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        _cpu.gqa_decode(z(24, np.float32), kv.copy(), kv, kc, vc, 0, 1.0)
    with pytest.raises(ValueError, match="one token"):
        _cpu.gqa_decode(q, z(8, np.float32), kv, kc, vc, 0, 1.0)
    with pytest.raises(ValueError, match="cos and sin"):
        _cpu.gqa_decode(q, kv.copy(), kv, kc, vc, 0, 1.0, rope_dim=8)
    with pytest.raises(ValueError, match="norms"):
        _cpu.gqa_decode(q, kv.copy(), kv, kc, vc, 0, 1.0, q_norm=z(4, np.float32))
    with pytest.raises(ValueError, match="caches"):
        _cpu.gqa_decode(q, kv.copy(), kv, kc, z((4, 1, 8), np.float32), 0, 1.0)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize(
    "H,R,dn,dr,pos", [(4, 32, 16, 8, 0), (16, 64, 24, 16, 41), (3, 20, 8, 6, 7)]
)
def test_mla_decode_matches_torch(isa, neox, H, R, dn, dr, pos):
    """One token's latent attention in C++ (each ISA's body): the latent's norm, both ropes,
    the cache store and the attention against the torch path of MLAttention (rms_norm_torch,
    Rope.apply_torch, latent_attention)."""
    from numoe.layers.mla import latent_attention

    n_ctx = max(64, pos + 8)
    g = torch.Generator().manual_seed(H * 100 + pos)
    q_lat = torch.randn(1, H, R, generator=g)
    q = torch.randn(1, H * (dn + dr), generator=g)
    kv = torch.randn(1, R + dr, generator=g)
    norm = torch.rand(R, generator=g) + 0.5
    lat_c, kr_c = torch.randn(n_ctx, R, generator=g), torch.randn(n_ctx, dr, generator=g)
    rope = Rope.plain(dr, 10000.0, neox)
    cos, sin = rope.cos_sin(pos, 1, torch.device("cpu"))
    scale = 0.3

    latent = rms_norm_torch(kv[:, :R], norm, 1e-6)  # [1, R]
    k_rope = rope.apply_torch(kv[:, None, R:], cos, sin)[:, 0]  # [1, dr]
    q_rope = rope.apply_torch(q.view(1, H, dn + dr)[..., dn:], cos, sin)  # [1, H, dr]
    lat_ref, kr_ref = lat_c.clone(), kr_c.clone()
    lat_ref[pos], kr_ref[pos] = latent[0], k_rope[0]
    want = latent_attention(q_lat, q_rope, lat_ref[: pos + 1], kr_ref[: pos + 1], pos, scale)

    with kernels.using_isa(isa):
        out = _cpu.mla_decode(
            q_lat.numpy(), q.numpy(), dn, kv.numpy(), norm.numpy(), 1e-6, lat_c.numpy(),
            kr_c.numpy(), pos, scale, cos[0].numpy(), sin[0].numpy(), neox,
        )  # fmt: skip
    torch.testing.assert_close(torch.from_numpy(out).view(1, H, R), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lat_c, lat_ref, rtol=1e-6, atol=1e-6)  # stored at pos only
    torch.testing.assert_close(kr_c, kr_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(q.view(1, H, dn + dr)[..., dn:], q_rope)  # rotated in place


def test_mla_decode_checks():
    z = np.zeros
    H, R, dn, dr = 2, 8, 4, 4
    lat, kr = z((4, R), np.float32), z((4, dr), np.float32)
    q_lat, q, kv, nrm, cs = z(H * R, np.float32), z(H * (dn + dr), np.float32), z(R + dr, np.float32), z(R, np.float32), z(dr // 2, np.float32)  # fmt: skip
    ok = (q_lat, q, dn, kv, nrm, 1e-6, lat, kr, 0, 1.0, cs, cs, True)
    assert _cpu.mla_decode(*ok).shape == (1, H * R)

    def call(i, v, match):
        args = list(ok)
        args[i] = v
        with pytest.raises(ValueError, match=match):
            _cpu.mla_decode(*args)

    call(8, 4, "position")
    call(0, z(H * R + 1, np.float32), "q_lat")
    call(2, dn + 1, "q must hold")
    call(3, z(R, np.float32), "kv must hold")
    call(4, z(R - 1, np.float32), "kv_norm")
    call(10, z(dr, np.float32), "cos and sin")
    call(7, z((5, dr), np.float32), "caches")
    call(6, z((4, 3), np.float32), "q_lat")  # R from the cache: 16 values are not H * 3


def test_silu_mul():
    from numoe.layers.ffn import silu_mul

    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(3, 200, generator=g) * 6, torch.randn(3, 200, generator=g)
    torch.testing.assert_close(
        silu_mul(a, b), torch.nn.functional.silu(a) * b, rtol=1e-6, atol=1e-6
    )
    with pytest.raises(ValueError, match="one shape"):
        _cpu.silu_mul(a.numpy(), b[:, :100].contiguous().numpy())


def test_rope_cos_sin_table():
    """The CPU table rows equal cos/sin computed for those positions alone, across growth."""
    rope = Rope.plain(16, 10000.0, True)
    for pos, n in [(0, 1), (300, 1), (5, 40), (1000, 3), (7, 1)]:
        t = torch.arange(pos, pos + n, dtype=torch.float64)
        ang = torch.outer(t, rope.inv_freq)
        cos, sin = rope.cos_sin(pos, n, torch.device("cpu"))
        assert torch.equal(cos, ang.cos().float()) and torch.equal(sin, ang.sin().float())


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_gqa_decode_propagates_nan(isa):
    """A NaN in a cached key makes the heads that read it NaN on every ISA (as torch's
    softmax), and leaves the other KV head's heads finite."""
    H, Hkv, Dh, pos = 8, 2, 32, 20
    r = np.random.default_rng(0)
    kc = r.standard_normal((32, Hkv, Dh)).astype(np.float32)
    vc = r.standard_normal((32, Hkv, Dh)).astype(np.float32)
    kc[5, 0, 3] = np.nan  # KV head 0 serves query heads 0..3
    q = r.standard_normal(H * Dh).astype(np.float32)
    k = r.standard_normal(Hkv * Dh).astype(np.float32)
    with kernels.using_isa(isa):
        out = _cpu.gqa_decode(q, k, k.copy(), kc, vc, pos, Dh**-0.5).reshape(H, Dh)
    assert np.isnan(out[:4]).all() and np.isfinite(out[4:]).all()
