"""The linear op, the fused MoE op and the layers over them with issue 13's new tensor types,
and MoE experts whose gate, up and down each have a different type, differing from layer to
layer (numoe._cpu.Linear / MoE, layers.linear, layers.moe.Experts, the NUMA slices).

Weights: random valid blocks (tests/random_quant.py: random bytes, finite fp16 scales).
Oracles, both torch in float64 on the weights the `gguf` package dequantizes:

- `exact`: the activations rounded first as numoe rounds them (quant_oracle.activation_rounding:
  Q8_0 blocks for the 32-element types, Q8_K for the 256-element ones; the MoE's hidden h
  again for the down projection, by the down type). Then only the float32 summation order
  differs: the linear op within EXACT_TOL = 1e-5 (relative Frobenius error; observed
  <= 1.1e-7). The MoE op's h is rounded from float32 values, ours and the reference's
  differing in the last bits, so an element of h may land one rounding step apart (none
  does in these cases; a sweep of 300 random T = 1 cases over all 19 block types found one,
  an h at 29.4999969 quantized units, one float32 ulp from the step: nudging it by that ulp
  brought the error from 1.4e-4 to 1.5e-7; at T = 200, 1-3 tokens in some cases, old
  types too), which moves that token's output by 5e-5 to 3e-3: `moe_mismatch`
  asks that each token's output be within EXACT_TOL (observed <= 1.5e-7 over a whole
  output) for at least 3 tokens in 4, and the whole output within 1e-3.
- `plain`: no activation rounding, the bound the existing tests use (test_linear_moe: 1e-2 /
  1.5e-2 for one product, 3e-2 for the MoE op; observed <= 0.8e-2 and 2.3e-2 here): the
  rounding is the only approximation.

A scale off by 2 % on a single 32-value block of one expert's down projection (one of its
4096 blocks) moves most tokens that pick the expert by 5-20 x EXACT_TOL, and fails the check
(test_exact_oracle_catches_one_scaled_block).
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q
from isa_params import ISA_PARAMS
from quant_oracle import activation_rounding
from random_quant import NEW_TYPES, block_size, get_scales, random_blocks, set_scales

from numoe import _cpu
from numoe.gguf import open_gguf
from numoe.gguf.write import Raw, write_gguf
from numoe.layers.linear import Embedding, Linear
from numoe.layers.moe import Experts
from numoe.runtime import numa, pool
from numoe.runtime.settings import Runtime
from numoe.runtime.topology import Topology

EXACT_TOL = 1e-5
PLAIN_TOL = {32: 1e-2, 256: 1.5e-2}  # one product, by the activation's block size
MOE_PLAIN_TOL = 3e-2
CPUS = sorted(_cpu.sched_getaffinity())

# gate, up, down: every new type at least once, 32- and 256-element types side by side
MIXES = [
    (Q.IQ2_XXS, Q.Q3_K, Q.Q5_0),
    (Q.IQ1_S, Q.IQ4_XS, Q.Q2_K),
    (Q.Q4_1, Q.IQ3_S, Q.IQ4_NL),  # x rounded to Q8_0 for gate, to Q8_K for up
    (Q.IQ2_XS, Q.IQ1_M, Q.Q5_1),
    (Q.IQ2_S, Q.Q6_K, Q.IQ3_XXS),
]
assert {q for m in MIXES for q in m} >= set(NEW_TYPES)


def mix_id(types) -> str:
    return "-".join(q.name for q in types)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def row_errors(y, ref) -> np.ndarray:
    """Per token: |y - ref| / |ref| (Euclidean norms over the row)."""
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    return np.linalg.norm(y - ref, axis=-1) / np.maximum(np.linalg.norm(ref, axis=-1), 1e-30)


def moe_mismatch(y, ref) -> str | None:
    """None when >= 3/4 of the tokens' outputs are within EXACT_TOL of the exact oracle's
    and the whole output within 1e-3 (room for an element of h rounded one step apart)."""
    rows, whole = row_errors(y, ref), rel_err(y, ref)
    share = float(np.mean(rows <= EXACT_TOL))
    if share < 0.75 or whole > 1e-3:
        return f"{share:.0%} of {len(rows)} tokens within {EXACT_TOL:g}; max {rows.max():.2g}"
    return None


def rounded(qtype, x: np.ndarray) -> torch.Tensor:
    """x (float32) as numoe's activation for a `qtype` weight, in float64."""
    f = activation_rounding(qtype)
    t = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    return (t if f is None else f(t)).double()


def act_block(qtype) -> int:
    return 256 if activation_rounding(qtype).__name__ == "q8_K" else 32


@pytest.fixture(autouse=True)
def _all_threads():
    prev = _cpu.isa()
    pool.set_threads(None)
    yield
    pool.set_threads(None)
    _cpu.set_isa(prev)


# ---- linear op ----


@pytest.mark.parametrize("qtype", NEW_TYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("T", [1, 7, 64])
def test_linear_matches_torch(qtype, T):
    rng = np.random.default_rng([int(qtype), T, 13])
    n_out, n_in = 40, 1280  # 5 super-blocks: a 4-block step and a tail
    raw, w = random_blocks(qtype, n_out, n_in, rng)
    x = rng.standard_normal((T, n_in)).astype(np.float32)
    op = _cpu.Linear(raw.reshape(-1), int(qtype), n_out, n_in)
    y = op.forward(x)
    assert y.shape == (T, n_out) and y.dtype == np.float32
    wt = torch.from_numpy(w).double().T
    assert rel_err(y, (rounded(qtype, x) @ wt).numpy()) < EXACT_TOL
    assert rel_err(y, (torch.from_numpy(x).double() @ wt).numpy()) < PLAIN_TOL[act_block(qtype)]
    for t in (0, T - 1):  # each output one vec_dot, whatever the task split
        act = _cpu.quantize_activation(int(qtype), x[t])
        exact = _cpu.vec_dot_rows(int(qtype), raw.reshape(-1), act, n_in, n_out)
        np.testing.assert_array_equal(y[t], exact)


@pytest.mark.parametrize("qtype", NEW_TYPES, ids=lambda q: q.name)
def test_linear_check_catches_one_scaled_block(qtype):
    """The exact check fails when one block of 200 reads its scale fields x1.02 (observed:
    the error grows to 4e-4 .. 2e-3, 40-200 x EXACT_TOL)."""
    rng = np.random.default_rng([int(qtype), 17])
    n_out, n_in = 40, 1280
    raw, w = random_blocks(qtype, n_out, n_in, rng)
    x = rng.standard_normal((7, n_in)).astype(np.float32)
    ref = (rounded(qtype, x) @ torch.from_numpy(w).double().T).numpy()
    blocks = raw.reshape(-1, GGML_QUANT_SIZES[qtype][1])
    set_scales(qtype, blocks[:1], get_scales(qtype, blocks[:1]) * 1.02)
    y = _cpu.Linear(raw.reshape(-1), int(qtype), n_out, n_in).forward(x)
    assert rel_err(y, ref) > 10 * EXACT_TOL


@pytest.mark.parametrize("qtype", NEW_TYPES, ids=lambda q: q.name)
def test_linear_groups_new_types(qtype):
    """Per-head products (DeepSeek's attn_k_b / attn_v_b): G matrices in one op."""
    rng = np.random.default_rng([int(qtype), 19])
    G, n_out, n_in = 4, 32, 256
    raw, w = random_blocks(qtype, G * n_out, n_in, rng)
    x = rng.standard_normal((5, G * n_in)).astype(np.float32)
    y = _cpu.Linear(raw.reshape(-1), int(qtype), n_out, n_in, G).forward(x)
    ref = np.concatenate(
        [
            rounded(qtype, x[:, g * n_in : (g + 1) * n_in])
            @ torch.from_numpy(w[g * n_out : (g + 1) * n_out]).double().T
            for g in range(G)
        ],
        1,
    )
    assert rel_err(y, ref) < EXACT_TOL


def test_forward_many_mixed_new_types():
    """One pool call over ops of different new types (Q8_0 and Q8_K activations): the same
    bits as one call each."""
    rng = np.random.default_rng(11)
    n_in = 512
    parts = [(Q.Q5_0, 64), (Q.IQ4_NL, 32), (Q.Q3_K, 96), (Q.IQ2_XXS, 64), (Q.Q4_1, 8)]
    ops = [
        _cpu.Linear(random_blocks(q, n, n_in, rng)[0].reshape(-1), int(q), n, n_in)
        for q, n in parts
    ]
    for T in (1, 7, 64):
        x = rng.standard_normal((T, n_in)).astype(np.float32)
        for op, y in zip(ops, _cpu.Linear.forward_many(ops, x), strict=True):
            np.testing.assert_array_equal(y, op.forward(x))


# ---- MoE op ----


def ref_moe(x, ids, w, types, ws, exact: bool):
    """float64 torch: sum_j w[t, j] * down_e(silu(gate_e x) * up_e x); `exact`: x and h
    rounded as numoe rounds them for each of the three types."""
    gate, up, down = (torch.from_numpy(a).double() for a in ws)
    gt, ut, dt = types
    x64 = torch.from_numpy(x).double()
    xg, xu = (rounded(gt, x), rounded(ut, x)) if exact else (x64, x64)
    ids_t = torch.from_numpy(np.asarray(ids)).long()
    w = torch.from_numpy(w).double()
    out = torch.zeros_like(x64)
    for e in torch.unique(ids_t).tolist():
        tok, slot = (ids_t == e).nonzero(as_tuple=True)
        h = F.silu(xg[tok] @ gate[e].T) * (xu[tok] @ up[e].T)
        if exact:
            h = rounded(dt, h.float().numpy())
        out.index_add_(0, tok, (h @ down[e].T) * w[tok, slot, None])
    return out.numpy()


def make_experts(types, E, Fd, D, rng):
    """(raw [rows, row bytes] per part, dequantized [E, out, in] per part)."""
    shapes = [(Fd, D), (Fd, D), (D, Fd)]
    raws, ws = [], []
    for q, (n_out, n_in) in zip(types, shapes, strict=True):
        raw, w = random_blocks(q, E * n_out, n_in, rng, rms=n_in**-0.5)
        raws.append(raw)
        ws.append(w.reshape(E, n_out, n_in))
    return raws, ws


def skewed_routing(T, E, k, rng):
    """Most tokens pick expert 0 first; experts E-2, E-1 are never picked."""
    ids = np.empty((T, k), np.int64)
    for t in range(T):
        rest = rng.permutation(E - 3)[: k - 1] + 1
        ids[t] = [0, *rest] if rng.random() < 0.8 else rng.permutation(E - 2)[:k]
    w = rng.random((T, k)).astype(np.float32)
    return ids, w / w.sum(1, keepdims=True)


def moe_op(raws, types, E, Fd, D):
    return _cpu.MoE(*([r.reshape(-1)] for r in raws), *map(int, types), E, Fd, D)


@pytest.mark.parametrize("types", MIXES, ids=mix_id)
@pytest.mark.parametrize("T", [1, 7, 64])
def test_moe_mixed_types_match_torch(types, T):
    rng = np.random.default_rng([T, *map(int, types)])
    E, Fd, D, k = 8, 256, 512, 3
    raws, ws = make_experts(types, E, Fd, D, rng)
    x = rng.standard_normal((T, D)).astype(np.float32)
    ids, w = skewed_routing(T, E, k, rng)
    op = moe_op(raws, types, E, Fd, D)
    y = op.forward(x, ids, w)
    assert y.shape == (T, D) and y.dtype == np.float32
    assert moe_mismatch(y, ref_moe(x, ids, w, types, ws, exact=True)) is None
    assert rel_err(y, ref_moe(x, ids, w, types, ws, exact=False)) < MOE_PLAIN_TOL
    np.testing.assert_array_equal(op.forward(x, ids.astype(np.int32), w), y)
    _cpu.set_threads([CPUS[0]])
    np.testing.assert_array_equal(op.forward(x, ids, w), y)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("types", MIXES, ids=mix_id)
def test_moe_mixed_types_same_bits_on_every_isa(types, isa):
    """Each ISA's output equals the scalar bodies' bit for bit, and a batch equals its tokens
    one at a time."""
    rng = np.random.default_rng([3, *map(int, types)])
    E, Fd, D, k, T = 6, 256, 256, 2, 9
    raws, _ = make_experts(types, E, Fd, D, rng)
    op = moe_op(raws, types, E, Fd, D)
    x = rng.standard_normal((T, D)).astype(np.float32)
    ids, w = skewed_routing(T, E, k, rng)
    _cpu.set_isa("scalar")
    want = op.forward(x, ids, w)
    _cpu.set_isa(isa)
    np.testing.assert_array_equal(op.forward(x, ids, w), want, err_msg=isa)
    for t in (0, T - 1):
        one = op.forward(x[t : t + 1], ids[t : t + 1], w[t : t + 1])[0]
        np.testing.assert_array_equal(one, want[t], err_msg=isa)


def test_exact_oracle_catches_one_scaled_block():
    """The check must fail on a kernel that misreads one block's scale: the first block of
    expert 0's down projection (the expert most tokens pick) with its scale fields x1.02."""
    types = MIXES[0]
    rng = np.random.default_rng(5)
    E, Fd, D, k, T = 8, 256, 512, 3, 7
    raws, ws = make_experts(types, E, Fd, D, rng)
    x = rng.standard_normal((T, D)).astype(np.float32)
    ids, w = skewed_routing(T, E, k, rng)
    ref = ref_moe(x, ids, w, types, ws, exact=True)
    assert moe_mismatch(moe_op(raws, types, E, Fd, D).forward(x, ids, w), ref) is None
    dt = types[2]
    blocks = raws[2].reshape(-1, GGML_QUANT_SIZES[dt][1])
    set_scales(dt, blocks[:1], get_scales(dt, blocks[:1]) * 1.02)
    y = moe_op(raws, types, E, Fd, D).forward(x, ids, w)
    assert moe_mismatch(y, ref) is not None
    picked = (ids == 0).any(1)
    assert picked.sum() >= 4 and np.mean(row_errors(y, ref)[picked] > EXACT_TOL) >= 0.75


# ---- the layers, from a GGUF file: types differing from layer to layer ----

LAYER_MIXES = [MIXES[0], MIXES[3], MIXES[2]]  # blk.0, blk.1, blk.2


def experts_file(path, layer_types, E, Fd, D, rng):
    """blk.N.ffn_{gate,up,down}_exps of random blocks, layer N's types layer_types[N].
    Returns each layer's dequantized weights."""
    tensors, weights = {}, []
    for blk, types in enumerate(layer_types):
        raws, ws = make_experts(types, E, Fd, D, rng)
        shapes = [(E, Fd, D), (E, Fd, D), (E, D, Fd)]
        for p, r, q, s in zip(("gate", "up", "down"), raws, types, shapes, strict=True):
            tensors[f"blk.{blk}.ffn_{p}_exps.weight"] = Raw(s, q, r.reshape(-1))
        weights.append(ws)
    write_gguf(path, "llama", {}, tensors)
    return weights


def test_experts_differ_layer_to_layer(tmp_path):
    """Three layers, each gate/up/down a different type and no two layers alike, run one
    after the other (each layer's input the previous one's residual sum)."""
    rng = np.random.default_rng(8)
    E, Fd, D, k = 8, 256, 256, 2
    ws = experts_file(tmp_path / "e.gguf", LAYER_MIXES, E, Fd, D, rng)
    g = open_gguf(tmp_path / "e.gguf")
    for T in (1, 7, 64):
        x = rng.standard_normal((T, D)).astype(np.float32)
        for blk, types in enumerate(LAYER_MIXES):
            ex = Experts.load(g, blk, E, D, Fd)
            ids, w = skewed_routing(T, E, k, rng)
            y = ex(torch.from_numpy(x), torch.from_numpy(ids), torch.from_numpy(w)).numpy()
            ref = ref_moe(x, ids, w, types, ws[blk], exact=True)
            problem = moe_mismatch(y, ref)
            assert problem is None, f"blk.{blk} {mix_id(types)} T={T}: {problem}"
            x = x + y


@pytest.mark.parametrize("types", MIXES[:2], ids=mix_id)
def test_per_expert_tensors_mixed_types(tmp_path, types):
    """Older Mixtral files: one tensor per expert ('blk.0.ffn_gate.E'), mixed types."""
    rng = np.random.default_rng([4, *map(int, types)])
    E, Fd, D, k, T = 4, 256, 256, 2, 9
    raws, ws = make_experts(types, E, Fd, D, rng)
    tensors = {}
    shapes = [(Fd, D), (Fd, D), (D, Fd)]
    for p, r, q, s in zip(("gate", "up", "down"), raws, types, shapes, strict=True):
        per = r.reshape(E, s[0], -1)
        for e in range(E):
            raw_e = np.ascontiguousarray(per[e]).reshape(-1)
            tensors[f"blk.0.ffn_{p}.{e}.weight"] = Raw(s, q, raw_e)
    write_gguf(tmp_path / "e.gguf", "llama", {}, tensors)
    ex = Experts.load(open_gguf(tmp_path / "e.gguf"), 0, E, D, Fd)
    x = rng.standard_normal((T, D)).astype(np.float32)
    ids, w = skewed_routing(T, E, k, rng)
    y = ex(*map(torch.from_numpy, (x, ids, w))).numpy()
    assert moe_mismatch(y, ref_moe(x, ids, w, types, ws, exact=True)) is None


@pytest.mark.parametrize("qtype", NEW_TYPES, ids=lambda q: q.name)
def test_embedding_rows_and_head(tmp_path, qtype):
    """token_embd rows are the `gguf` package's dequantized rows bit for bit; the output head
    and the tied head are the exact product."""
    rng = np.random.default_rng([int(qtype), 21])
    V, D = 24, 512
    emb_raw, emb = random_blocks(qtype, V, D, rng)
    out_raw, out_w = random_blocks(qtype, V, D, rng)
    path = tmp_path / "t.gguf"
    write_gguf(
        path,
        "llama",
        {},
        {
            "token_embd.weight": Raw((V, D), qtype, emb_raw.reshape(-1)),
            "output.weight": Raw((V, D), qtype, out_raw.reshape(-1)),
        },
    )
    g = open_gguf(path)
    cpu = torch.device("cpu")
    embd = Embedding.load(g, "token_embd.weight", V, D, cpu)
    tok = torch.tensor([5, 0, V - 1, 5])
    np.testing.assert_array_equal(embd(tok).numpy(), emb[[5, 0, V - 1, 5]])
    x = rng.standard_normal((3, D)).astype(np.float32)
    head = Linear.load(g, "output", V, D, cpu)
    assert head.weight is None
    for lin, wm in ((head, out_w), (embd.as_linear(), emb)):
        ref = rounded(qtype, x) @ torch.from_numpy(wm).double().T
        assert rel_err(lin(torch.from_numpy(x)).numpy(), ref.numpy()) < EXACT_TOL


# ---- NUMA shard / replicate slices (2 logical nodes on this machine's first node) ----


@pytest.fixture
def policy():
    topo = Topology.read()
    n0 = numa.plan_threads(topo).nodes[0].node
    if len(topo.cores_by_node()[n0]) < 2:
        pytest.skip("needs two cores on one node for two logical nodes")
    plan = numa.plan_threads(topo, numa_nodes=[n0, n0])
    pool.set_plan(plan)

    def runtime(name: str) -> Runtime:
        rt = Runtime.create(numa_nodes=[n0, n0], numa=name)
        rt.activate()
        return rt

    yield runtime
    pool.set_threads(None)


@pytest.mark.parametrize(
    "types,Fd",
    [((Q.IQ1_M, Q.Q3_K, Q.IQ4_XS), 768), ((Q.IQ2_XXS, Q.Q4_1, Q.Q5_1), 96)],
    ids=["IQ1_M-Q3_K-IQ4_XS-F768", "IQ2_XXS-Q4_1-Q5_1-F96"],
)
@pytest.mark.parametrize("T", [1, 13])
def test_moe_mixed_shard_and_replicate(tmp_path, policy, types, Fd, T):
    """Shard splits F at the down type's blocks (768 = 512 + 256; 96 = 64 + 32): shard equals
    off within 1e-5 (summation order of the down products), replicate equals shard bit for
    bit, and all three match the exact oracle."""
    rng = np.random.default_rng([T, Fd, 2])
    E, D, k = 6, 256, 2
    assert Fd % block_size(types[2]) == 0
    [ws] = experts_file(tmp_path / "e.gguf", [types], E, Fd, D, rng)
    x = rng.standard_normal((T, D)).astype(np.float32)
    ids, w = skewed_routing(T, E, k, rng)
    ref = ref_moe(x, ids, w, types, ws, exact=True)
    out = {}
    for name in ("off", "shard", "replicate"):
        rt = policy(name)
        ex = Experts.load(open_gguf(tmp_path / "e.gguf"), 0, E, D, Fd, rt.policy)
        assert ex.policy == name and ex.op.n_slices == (1 if name == "off" else 2)
        out[name] = ex(*map(torch.from_numpy, (x, ids, w))).numpy()
        del ex
        gc.collect()
        assert moe_mismatch(out[name], ref) is None, name
    assert rel_err(out["shard"], out["off"]) < 1e-5
    np.testing.assert_array_equal(out["replicate"], out["shard"])
