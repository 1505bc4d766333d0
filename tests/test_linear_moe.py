"""The thread pool, the quantized linear op and the fused MoE op (numoe._cpu), and the
Python layers over them (layers.linear.Linear / Embedding, layers.moe.Experts).

Oracles: torch matmuls on weights dequantized by gguf.quants.dequantize, and for the
linear op also the single-threaded C++ reference GEMV (vec_dot_rows), which it must equal
bit for bit (every output is one vec_dot whatever the task split).

Tolerances (relative Frobenius error against float64 on the dequantized weights): the float
formats pair with float32 activations, so only summation order differs: 1e-5. Q8_0/Q4_0
weights use Q8_0 activations (int8 per 32 values): observed ~0.6 %, bound 1e-2. The K-quants
use Q8_K / Q8_K4 (int8 per 256 values, so a coarser step for the same data) against random-byte
blocks whose mins add large cancelling terms: observed 0.7-1.1 %, bound 1.5e-2. The MoE op
quantizes twice (x, then h): observed up to 1.6 %, bound 3e-2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize
from isa_params import ISA_PARAMS

from numoe import _cpu
from numoe.gguf import open_gguf
from numoe.gguf.write import Raw, write_gguf
from numoe.layers.linear import Embedding, Linear, linear_many
from numoe.layers.moe import Experts
from numoe.runtime import pool

TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_K, Q.Q5_K, Q.Q6_K]
FLOAT_TYPES = {Q.F32, Q.F16, Q.BF16}
K_TYPES = {Q.Q4_K, Q.Q5_K, Q.Q6_K}
TYPE_SIZE = {Q.Q4_K: 144, Q.Q5_K: 176, Q.Q6_K: 210}
HALF_FIELDS = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}  # fp16 d / dmin offsets
CPUS = sorted(_cpu.sched_getaffinity())


MOE_TOL = 3e-2


def tol(qtype) -> float:
    return 1e-5 if qtype in FLOAT_TYPES else 1.5e-2 if qtype in K_TYPES else 1e-2


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def encode(qtype, rows: int, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """(raw bytes [rows, row_bytes], dequantized float32 [rows, n]) of a random matrix.

    K-quant blocks are random valid bytes with small finite fp16 scales (as test_quant)."""
    if qtype in K_TYPES:
        nb = rows * n // 256
        raw = rng.integers(0, 256, (nb, TYPE_SIZE[qtype]), dtype=np.uint8)
        for off in HALF_FIELDS[qtype]:
            d = (
                rng.uniform(0.5, 1.0, nb)
                * rng.choice([-1, 1], nb)
                * 2.0 ** rng.integers(-9, -6, nb)
            )
            raw[:, off : off + 2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
        raw = raw.reshape(rows, -1)
    else:
        w = rng.standard_normal((rows, n)).astype(np.float32)
        raw = np.ascontiguousarray(gguf_quantize(w, qtype)).view(np.uint8).reshape(rows, -1)
    deq = np.asarray(gguf_dequantize(raw, qtype), np.float32).reshape(rows, n)
    return raw, deq


@pytest.fixture(autouse=True)
def _all_threads():
    pool.set_threads(None)
    yield
    pool.set_threads(None)


# ---- thread pool ----


def test_pool_runs_every_task_on_pinned_workers():
    _cpu.set_threads(CPUS)
    assert _cpu.num_threads() == len(CPUS)
    assert _cpu.thread_groups() == [CPUS]
    threads, cpus = _cpu.pool_trace(200, 20_000)
    assert len(threads) == 200 and set(threads) <= set(range(len(CPUS)))
    for th, cpu in zip(threads, cpus, strict=True):
        if th > 0:  # workers stay on their CPU; the caller is not pinned
            assert cpu == CPUS[th]
    if len(CPUS) > 1:
        # work is shared: on a loaded machine a worker may get no CPU time within one call
        # (the caller then runs every task), so a few calls are allowed
        for _ in range(10):
            if len(set(threads)) > 1:
                break
            threads, _ = _cpu.pool_trace(200, 100_000)
        assert len(set(threads)) > 1


def test_pool_groups_reuse_and_resize():
    _cpu.set_threads([[CPUS[0]], CPUS[1:]] if len(CPUS) > 1 else [[CPUS[0]]])
    assert _cpu.num_threads() == len(CPUS)
    for _ in range(50):  # many back-to-back calls, and sleeping workers woken again
        threads, _ = _cpu.pool_trace(7)
        assert len(threads) == 7
    threads, _ = _cpu.pool_trace(3, 300_000)
    _cpu.set_threads([CPUS[0]])
    assert _cpu.num_threads() == 1
    assert _cpu.pool_trace(10)[0] == [0] * 10
    assert _cpu.pool_trace(0) == ([], [])


def test_pool_bad_plans():
    with pytest.raises(ValueError):
        _cpu.set_threads([])
    with pytest.raises(ValueError):
        _cpu.set_threads([-1])
    assert pool.set_threads(1) == 1
    assert _cpu.num_threads() == 1


def test_read_bandwidth_checksum():
    a = np.arange(3 << 20, dtype=np.uint8)
    assert _cpu.read_bandwidth_bytes(a) == int(a.view(np.uint64).sum(dtype=np.uint64))


# ---- linear op ----


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("T", [1, 3, 64])
def test_linear_matches_torch_and_reference(qtype, T):
    rng = np.random.default_rng([int(qtype), T])
    n_out, n_in = 72, 512
    raw, w = encode(qtype, n_out, n_in, rng)
    x = rng.standard_normal((T, n_in)).astype(np.float32)
    op = _cpu.Linear(raw.reshape(-1), int(qtype), n_out, n_in)
    y = op.forward(x)
    assert y.shape == (T, n_out) and y.dtype == np.float32
    ref = (torch.from_numpy(x).double() @ torch.from_numpy(w).double().T).numpy()
    assert rel_err(y, ref) < tol(qtype)
    # Bit for bit the single-threaded C++ GEMV, whatever the split and thread count.
    for t in range(T):
        act = _cpu.quantize_activation(int(qtype), x[t])
        exact = _cpu.vec_dot_rows(int(qtype), raw.reshape(-1), act, n_in, n_out)
        np.testing.assert_array_equal(y[t], exact)


@pytest.mark.parametrize("qtype", [Q.F32, Q.Q8_0, Q.Q4_K])
def test_linear_same_for_any_thread_count(qtype):
    rng = np.random.default_rng(1)
    raw, _ = encode(qtype, 300, 512, rng)
    x = rng.standard_normal((37, 512)).astype(np.float32)
    op = _cpu.Linear(raw.reshape(-1), int(qtype), 300, 512)
    outs = []
    for cpus in ([CPUS[0]], CPUS):
        _cpu.set_threads(cpus)
        outs += [op.forward(x), op.forward(x)]
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_linear_any_T_equals_row_by_row(qtype, isa):
    """Prefill (token groups through vec_dot_n, token-split tasks) gives every token's row
    bit for bit as a T = 1 call, on every ISA and thread count."""
    rng = np.random.default_rng([int(qtype), 9])
    n_out, n_in = 37, 1280  # 5 K-quant super-blocks: the 4-block step and a tail
    raw, _ = encode(qtype, n_out, n_in, rng)
    x = rng.standard_normal((129, n_in)).astype(np.float32)
    op = _cpu.Linear(raw.reshape(-1), int(qtype), n_out, n_in)
    prev = _cpu.set_isa(isa)
    try:
        one = np.concatenate([op.forward(x[t : t + 1]) for t in range(len(x))])
        for cpus in (CPUS, [CPUS[0]]):
            _cpu.set_threads(cpus)
            for T in (1, 3, 5, 64, 129):
                np.testing.assert_array_equal(op.forward(x[:T]), one[:T], err_msg=f"{isa} {T}")
    finally:
        _cpu.set_isa(prev)


def test_linear_groups_are_per_head_matmuls():
    rng = np.random.default_rng(2)
    G, n_out, n_in = 5, 24, 64
    raw, _ = encode(Q.Q8_0, G * n_out, n_in, rng)
    x = rng.standard_normal((6, G * n_in)).astype(np.float32)
    y = _cpu.Linear(raw.reshape(-1), int(Q.Q8_0), n_out, n_in, G).forward(x)
    assert y.shape == (6, G * n_out)
    raw3 = raw.reshape(G, n_out, -1)
    for g in range(G):
        one = _cpu.Linear(np.ascontiguousarray(raw3[g]).reshape(-1), int(Q.Q8_0), n_out, n_in)
        np.testing.assert_array_equal(
            y[:, g * n_out : (g + 1) * n_out], one.forward(x[:, g * n_in : (g + 1) * n_in].copy())
        )


def test_linear_forward_many_equals_each_op():
    """q, k, v in one pool call: the same bits as three calls, across activation types (the
    K-quants' Q8_K, Q8_0's Q8_0, F16's float) and token counts."""
    rng = np.random.default_rng(4)
    n_in = 512
    parts = [(Q.Q4_K, 300), (Q.Q8_0, 64), (Q.Q6_K, 64), (Q.F16, 40), (Q.Q5_K, 8)]
    ops = []
    for qtype, n_out in parts:
        raw, _ = encode(qtype, n_out, n_in, rng)
        ops.append(_cpu.Linear(raw.reshape(-1), int(qtype), n_out, n_in))
    for T in (1, 5, 64):
        x = rng.standard_normal((T, n_in)).astype(np.float32)
        ys = _cpu.Linear.forward_many(ops, x)
        assert len(ys) == len(ops)
        for op, y in zip(ops, ys):
            np.testing.assert_array_equal(y, op.forward(x))
    for bad, words in (([], "no ops"), ([None], "None"), ([ops[0], None], "None")):
        with pytest.raises(ValueError, match=words):
            _cpu.Linear.forward_many(bad, x)
    other = _cpu.Linear(encode(Q.Q8_0, 4, 256, rng)[0].reshape(-1), int(Q.Q8_0), 4, 256)
    with pytest.raises(ValueError, match="input width"):
        _cpu.Linear.forward_many([ops[0], other], x)


def test_linear_many_layer_adds_biases():
    rng = np.random.default_rng(5)
    lins = []
    for n_out in (32, 8):
        raw, _ = encode(Q.Q8_0, n_out, 64, rng)
        op = _cpu.Linear(raw.reshape(-1), int(Q.Q8_0), n_out, 64)
        lins.append(Linear(op=op, bias=torch.randn(n_out)))
    x = torch.randn(3, 64)
    for y, lin in zip(linear_many(lins, x), lins):
        torch.testing.assert_close(y, lin(x), rtol=0, atol=0)


def test_linear_rows_and_checks():
    rng = np.random.default_rng(3)
    raw, w = encode(Q.Q6_K, 10, 256, rng)
    op = _cpu.Linear(raw.reshape(-1), int(Q.Q6_K), 10, 256)
    np.testing.assert_array_equal(op.rows(np.array([9, 0, 9], np.int64)), w[[9, 0, 9]])
    assert op.nbytes == raw.nbytes and (op.n_out, op.n_in, op.groups) == (10, 256, 1)
    with pytest.raises(ValueError, match="not in"):
        op.rows(np.array([10], np.int64))
    with pytest.raises(ValueError, match="not in"):
        op.rows(np.array([-1], np.int64))
    with pytest.raises(ValueError, match="bytes"):  # one row short
        _cpu.Linear(raw[:-1].reshape(-1), int(Q.Q6_K), 10, 256)
    with pytest.raises(ValueError, match="block size"):
        _cpu.Linear(raw.reshape(-1), int(Q.Q6_K), 20, 128)
    with pytest.raises(ValueError):
        _cpu.Linear(raw.reshape(-1), int(Q.Q8_K), 10, 256)  # an activation type
    with pytest.raises(ValueError, match="x must be"):
        op.forward(np.zeros((2, 255), np.float32))
    with pytest.raises(TypeError):
        _cpu.Linear(raw.reshape(-1).view(np.int8), int(Q.Q6_K), 10, 256)


# ---- the layers, from a GGUF file ----


def _gguf(tmp_path, tensors: dict[str, tuple[np.ndarray, Q, tuple[int, ...]]]):
    path = tmp_path / "t.gguf"
    write_gguf(
        path,
        "llama",
        {},
        {name: Raw(shape, q, raw) for name, (raw, q, shape) in tensors.items()},
    )
    return open_gguf(path)


def test_layers_read_weights_in_place(tmp_path):
    rng = np.random.default_rng(4)
    V, D = 40, 256
    emb_raw, emb = encode(Q.Q4_K, V, D, rng)
    out_raw, out_w = encode(Q.Q6_K, V, D, rng)
    g = _gguf(
        tmp_path,
        {
            "token_embd.weight": (emb_raw, Q.Q4_K, (V, D)),
            "output.weight": (out_raw, Q.Q6_K, (V, D)),
        },
    )
    cpu = torch.device("cpu")
    head = Linear.load(g, "output", V, D, cpu)
    assert head.weight is None and head.shape == (V, D)
    x = torch.from_numpy(rng.standard_normal((3, D)).astype(np.float32))
    assert rel_err(head(x), x.double().numpy() @ out_w.T) < tol(Q.Q6_K)
    embd = Embedding.load(g, "token_embd.weight", V, D, cpu)
    tok = torch.tensor([5, 0, 39, 5])
    np.testing.assert_array_equal(embd(tok).numpy(), emb[[5, 0, 39, 5]])
    with pytest.raises(ValueError):
        embd(torch.tensor([V]))
    tied = embd.as_linear()
    assert rel_err(tied(x), x.double().numpy() @ emb.T) < tol(Q.Q4_K)
    # leading batch dims pass through
    assert head(x.view(3, 1, D)).shape == (3, 1, V)


def ref_moe(x, ids, w, gate, up, down):
    """Float64 torch reference: sum_j w[t, j] * down_e(silu(gate_e x) * up_e x)."""
    x, w = torch.from_numpy(x).double(), torch.from_numpy(w).double()
    gate, up, down = (torch.from_numpy(a).double() for a in (gate, up, down))
    ids = torch.from_numpy(ids).long()
    out = torch.zeros_like(x)
    for e in torch.unique(ids).tolist():
        tok, slot = (ids == e).nonzero(as_tuple=True)
        h = x[tok]
        y = (F.silu(h @ gate[e].T) * (h @ up[e].T)) @ down[e].T
        out.index_add_(0, tok, y * w[tok, slot, None])
    return out.numpy()


def make_experts(types, E, Fd, D, rng):
    gt, ut, dt = types
    g_raw, g = encode(gt, E * Fd, D, rng)
    u_raw, u = encode(ut, E * Fd, D, rng)
    d_raw, d = encode(dt, E * D, Fd, rng)
    return (
        (g_raw, u_raw, d_raw),
        (g.reshape(E, Fd, D), u.reshape(E, Fd, D), d.reshape(E, D, Fd)),
    )


def skewed_routing(T, E, k, rng):
    """Most tokens pick expert 0 first; experts E-2, E-1 are never picked."""
    ids = np.empty((T, k), np.int64)
    for t in range(T):
        rest = rng.permutation(E - 3)[: k - 1] + 1
        ids[t] = [0, *rest] if rng.random() < 0.8 else rng.permutation(E - 2)[:k]
    w = rng.random((T, k)).astype(np.float32)
    return ids, w / w.sum(1, keepdims=True)


MOE_TYPES = [
    (Q.F32, Q.F32, Q.F32),
    (Q.Q8_0, Q.Q8_0, Q.Q8_0),
    (Q.Q4_K, Q.Q4_K, Q.Q6_K),  # Q4_K_M's expert mix
    (Q.BF16, Q.F16, Q.Q5_K),
]


@pytest.mark.parametrize("types", MOE_TYPES, ids=lambda t: "-".join(q.name for q in t))
@pytest.mark.parametrize("T", [1, 7, 64, 512])
def test_moe_matches_torch(types, T):
    rng = np.random.default_rng([T, *map(int, types)])
    E, Fd, D, k = 8, 256, 256, 3
    raws, ws = make_experts(types, E, Fd, D, rng)
    x = rng.standard_normal((T, D)).astype(np.float32)
    ids, w = skewed_routing(T, E, k, rng)
    op = _cpu.MoE(*([r.reshape(-1)] for r in raws), *map(int, types), E, Fd, D)
    y = op.forward(x, ids, w)
    assert y.shape == (T, D) and y.dtype == np.float32
    tolerance = 1e-5 if set(types) <= FLOAT_TYPES else MOE_TOL
    assert rel_err(y, ref_moe(x, ids, w, *ws)) < tolerance
    # repeated calls, int32 ids, other thread counts: bit for bit the same
    np.testing.assert_array_equal(op.forward(x, ids, w), y)
    np.testing.assert_array_equal(op.forward(x, ids.astype(np.int32), w), y)
    _cpu.set_threads([CPUS[0]])
    np.testing.assert_array_equal(op.forward(x, ids, w), y)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("types", MOE_TYPES, ids=lambda t: "-".join(q.name for q in t))
def test_moe_any_T_equals_token_by_token(types, isa):
    """Tokens gathered per expert (vec_dot_n over token lists) give each token's output bit
    for bit as a call with that token alone, on every ISA."""
    rng = np.random.default_rng([5, *map(int, types)])
    E, Fd, D, k, T = 8, 256, 512, 3, 45
    raws, _ = make_experts(types, E, Fd, D, rng)
    op = _cpu.MoE(*([r.reshape(-1)] for r in raws), *map(int, types), E, Fd, D)
    x = rng.standard_normal((T, D)).astype(np.float32)
    ids, w = skewed_routing(T, E, k, rng)
    prev = _cpu.set_isa(isa)
    try:
        y = op.forward(x, ids, w)
        for t in range(T):
            np.testing.assert_array_equal(
                y[t], op.forward(x[t : t + 1], ids[t : t + 1], w[t : t + 1])[0], err_msg=isa
            )
    finally:
        _cpu.set_isa(prev)


def test_moe_per_expert_tensors_equal_merged():
    rng = np.random.default_rng(5)
    E, Fd, D, T, k = 4, 256, 256, 9, 2
    types = (Q.Q4_K, Q.Q4_K, Q.Q6_K)
    raws, _ = make_experts(types, E, Fd, D, rng)
    merged = _cpu.MoE(*([r.reshape(-1)] for r in raws), *map(int, types), E, Fd, D)
    split = _cpu.MoE(
        *([np.ascontiguousarray(p).reshape(-1) for p in np.split(r, E)] for r in raws),
        *map(int, types),
        E,
        Fd,
        D,
    )
    x = rng.standard_normal((T, D)).astype(np.float32)
    ids = rng.integers(0, E, (T, k))
    w = rng.random((T, k)).astype(np.float32)
    np.testing.assert_array_equal(merged.forward(x, ids, w), split.forward(x, ids, w))
    # a token may pick the same expert twice: both slots count
    ids[0] = [1, 1]
    ref = ref_moe(x, ids, w, *make_experts(types, E, Fd, D, np.random.default_rng(5))[1])
    assert rel_err(merged.forward(x, ids, w), ref) < MOE_TOL


def test_moe_checks():
    rng = np.random.default_rng(6)
    E, Fd, D = 4, 32, 64
    types = (Q.Q8_0,) * 3
    raws, _ = make_experts(types, E, Fd, D, rng)
    op = _cpu.MoE(*([r.reshape(-1)] for r in raws), *map(int, types), E, Fd, D)
    x = rng.standard_normal((3, D)).astype(np.float32)
    w = np.ones((3, 2), np.float32)
    for bad in (E, -1, 1 << 40):
        ids = np.zeros((3, 2), np.int64)
        ids[2, 1] = bad
        with pytest.raises(ValueError, match="expert id"):
            op.forward(x, ids, w)
    with pytest.raises(ValueError, match="int64 or int32"):
        op.forward(x, np.zeros((3, 2), np.int16), w)
    with pytest.raises(ValueError, match="ids must be"):
        op.forward(x, np.zeros((2, 2), np.int64), w)
    with pytest.raises(ValueError, match="weights must be"):
        op.forward(x, np.zeros((3, 2), np.int64), np.ones((3, 3), np.float32))
    with pytest.raises(ValueError, match="merged tensor"):
        _cpu.MoE(*([r.reshape(-1)[:-1]] for r in raws), *map(int, types), E, Fd, D)
    with pytest.raises(ValueError, match="per-expert"):
        _cpu.MoE(*([r.reshape(-1)] * 2 for r in raws), *map(int, types), E, Fd, D)
    assert op.forward(x[:0], np.zeros((0, 2), np.int64), w[:0]).shape == (0, D)


def test_experts_layer_from_gguf(tmp_path):
    rng = np.random.default_rng(7)
    E, Fd, D, T, k = 6, 256, 256, 11, 2
    types = (Q.Q4_K, Q.Q4_K, Q.Q6_K)
    raws, ws = make_experts(types, E, Fd, D, rng)
    shapes = [(E, Fd, D), (E, Fd, D), (E, D, Fd)]
    g = _gguf(
        tmp_path,
        {
            f"blk.0.ffn_{p}_exps.weight": (r, q, s)
            for p, r, q, s in zip(("gate", "up", "down"), raws, types, shapes, strict=True)
        },
    )
    ex = Experts.load(g, 0, E, D, Fd)
    assert ex.op is not None and ex.policy == "off"
    x = rng.standard_normal((T, D)).astype(np.float32)
    ids, w = skewed_routing(T, E, k, rng)
    y = ex(torch.from_numpy(x), torch.from_numpy(ids), torch.from_numpy(w))
    assert rel_err(y.numpy(), ref_moe(x, ids, w, *ws)) < MOE_TOL
    with pytest.raises(ValueError, match="expert id"):
        ex(torch.from_numpy(x), torch.full((T, k), E), torch.from_numpy(w))
