"""--numa shard / replicate for the routed experts (numoe.layers.numa_experts, MoE slices in
csrc/moe.*, ThreadPool::parallel_for_groups), with 2 logical nodes mapped onto this machine's
first node (--numa-nodes N,N): each logical node is a pool group of its own.

Tolerances: shard changes only the float summation order of the down products (each slice's
partial dot over its F columns, summed in node order, then weighted), so one MoE call equals
off within a relative (Frobenius) error of 1e-5 (observed 5e-8 to 1e-7); replicate computes exactly
as shard (same split, reading its own full copy), so they are equal bit for bit. Through a whole
model the next layer quantizes its activations again, so an order-of-summation difference can
move a value across an int8 rounding step: logits within 1e-3 of the largest |logit|
(observed 0 on the synthetic models: the experts' 1e-7 differences vanish in the residual sum).

Memory: the allocator's own accounting (node_allocated) grows by 1x the experts' bytes under
shard (rounded up to 2 MiB per buffer) and 2x under replicate; resident memory after loading
and running every expert likewise, because the map pages of the copied tensors are released.
"""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from numoe import _cpu
from numoe.gguf import open_gguf
from numoe.gguf.write import Raw, write_gguf
from numoe.layers import numa_experts
from numoe.layers.moe import Experts
from numoe.models import load
from numoe.runtime import numa, pool
from numoe.runtime.settings import Runtime
from numoe.runtime.topology import Topology
from numoe.synth import synth

MiB = 1 << 20
MOE_RTOL = 1e-5
LOGIT_TOL = 1e-3


def _two_nodes():
    topo = Topology.read()
    n0 = numa.plan_threads(topo).nodes[0].node
    if len(topo.cores_by_node()[n0]) < 2:
        pytest.skip("needs two cores on one node for two logical nodes")
    return numa.plan_threads(topo, numa_nodes=[n0, n0])


@pytest.fixture
def policy():
    """runtime(name): the Runtime of `--numa-nodes N,N --numa name`, its pool sized."""
    plan = _two_nodes()
    nodes = [n.node for n in plan.nodes]
    pool.set_plan(plan)

    def runtime(name: str) -> Runtime:
        rt = Runtime.create(numa_nodes=nodes, numa=name)
        rt.activate()
        return rt

    yield runtime
    pool.set_threads(None)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def random_blocks(qtype, n_bytes: int, rng) -> np.ndarray:
    """Random valid blocks: random bytes with small finite fp16 scales (d, and dmin for Q4_K)."""
    size = {Q.Q8_0: 34, Q.Q4_K: 144, Q.Q6_K: 210}[qtype]
    raw = rng.integers(0, 256, (n_bytes // size, size), dtype=np.uint8)
    for off in {Q.Q8_0: (0,), Q.Q4_K: (0, 2), Q.Q6_K: (208,)}[qtype]:
        d = rng.uniform(0.5, 1.0, len(raw)) * 2.0 ** rng.integers(-9, -6, len(raw))
        raw[:, off : off + 2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    return raw.reshape(-1)


def experts_file(path, types, E, Fd, D, rng):
    """A GGUF with blk.0.ffn_{gate,up,down}_exps of random blocks."""
    shapes = {"gate": (E, Fd, D), "up": (E, Fd, D), "down": (E, D, Fd)}
    tensors = {}
    for (p, shape), q in zip(shapes.items(), types, strict=True):
        n = numa_experts.row_bytes(int(q), shape[2]) * shape[0] * shape[1]
        tensors[f"blk.0.ffn_{p}_exps.weight"] = Raw(shape, q, random_blocks(q, n, rng))
    write_gguf(path, "llama", {}, tensors)
    return path


def skewed_ids(T, E, k, rng):
    ids = np.stack([rng.permutation(E)[:k] for _ in range(T)]).astype(np.int64)
    w = rng.random((T, k)).astype(np.float32)
    return ids, w / w.sum(1, keepdims=True)


def test_shard_bounds():
    assert numa_experts.shard_bounds(512, 2, int(Q.Q6_K)) == [(0, 256), (256, 512)]
    assert numa_experts.shard_bounds(768, 2, int(Q.Q6_K)) == [(0, 512), (512, 768)]
    assert numa_experts.shard_bounds(96, 2, int(Q.Q8_0)) == [(0, 64), (64, 96)]  # 32-blocks
    assert numa_experts.shard_bounds(256, 2, int(Q.Q4_K)) == [(0, 256), (256, 256)]  # one block
    assert numa_experts.shard_bounds(48, 2, int(Q.F32)) == [(0, 48), (48, 48)]  # no 32-blocks
    # in proportion to the nodes' threads: 3 + 1 threads, 8 blocks -> 6 + 2
    assert numa_experts.shard_bounds(2048, [3, 1], int(Q.Q6_K)) == [(0, 1536), (1536, 2048)]
    bounds = numa_experts.shard_bounds(7 * 256, [1, 1, 1], int(Q.Q6_K))
    assert [f1 - f0 for f0, f1 in bounds] == [512, 768, 512]
    assert bounds[0][0] == 0 and bounds[-1][1] == 7 * 256


def test_pool_groups_run_each_slot_on_its_group(policy):
    plan = _two_nodes()
    groups = pool.thread_groups()
    assert groups == plan.groups and len(groups) == 2
    trace = _cpu.pool_groups_trace([50, 50, 7], [0, 1, 0])
    for slot, g in ((0, 0), (1, 1), (2, 0)):
        assert sorted(t for t, _ in trace[slot]) == list(range([50, 50, 7][slot]))
        assert {cpu for _, cpu in trace[slot]} <= set(groups[g])


@pytest.mark.parametrize(
    "types,Fd,D",
    [((Q.Q8_0,) * 3, 96, 128), ((Q.Q4_K, Q.Q4_K, Q.Q6_K), 768, 256)],
    ids=["Q8_0-F96", "Q4_K_M-F768"],
)
@pytest.mark.parametrize("T", [1, 13])
def test_moe_shard_and_replicate_equal_off(tmp_path, policy, types, Fd, D, T):
    rng = np.random.default_rng([T, Fd])
    E, k = 6, 2
    path = experts_file(tmp_path / "e.gguf", types, E, Fd, D, rng)
    x = rng.standard_normal((T, D)).astype(np.float32)
    ids, w = skewed_ids(T, E, k, rng)
    xt, it, wt = map(torch.from_numpy, (x, ids, w))
    out, alloc = {}, {}
    for name in ("off", "shard", "replicate"):
        rt = policy(name)
        before = sum(_cpu.node_allocated().values())
        ex = Experts.load(open_gguf(path), 0, E, D, Fd, rt.policy)
        alloc[name] = sum(_cpu.node_allocated().values()) - before
        assert ex.policy == name and ex.op.n_slices == (1 if name == "off" else 2)
        out[name] = ex(xt, it, wt).numpy()
        nbytes = E * ex.op.expert_nbytes
        # accounting: the buffers hold 1x (shard) / 2x (replicate) the experts, each buffer
        # mapped in 2 MiB units
        asked = sum(b.nbytes for b in ex.buffers)
        assert asked == {"off": 0, "shard": nbytes, "replicate": 2 * nbytes}[name]
        assert alloc[name] == sum(b.mapped for b in ex.buffers)
        assert asked <= alloc[name] <= asked + 2 * MiB * len(ex.buffers)
        del ex
        gc.collect()
    assert rel_err(out["shard"], out["off"]) < MOE_RTOL
    np.testing.assert_array_equal(out["replicate"], out["shard"])


def test_rss_shard_1x_replicate_2x(tmp_path, policy):
    """Resident memory after loading and running every expert: the map's pages of the copied
    tensors are released, so shard ~ off ~ 1x and replicate ~ 2x the experts."""
    rng = np.random.default_rng(3)
    E, Fd, D, T, k = 8, 1024, 2048, 16, 4
    types = (Q.Q8_0,) * 3
    path = experts_file(tmp_path / "big.gguf", types, E, Fd, D, rng)
    x = torch.from_numpy(rng.standard_normal((T, D)).astype(np.float32))
    ids = torch.from_numpy((np.arange(T * k) % E).reshape(T, k))  # every expert
    w = torch.full((T, k), 1.0 / k)
    nbytes = E * 3 * numa_experts.row_bytes(int(Q.Q8_0), D) * Fd
    grew = {}
    for name in ("off", "shard", "replicate"):
        rt = policy(name)
        gc.collect()
        before = rss()
        g = open_gguf(path)
        ex = Experts.load(g, 0, E, D, Fd, rt.policy)
        ex(x, ids, w)
        grew[name] = (rss() - before) / nbytes
        del ex, g
        gc.collect()
    assert 0.9 < grew["off"] < 1.15, grew
    assert 0.9 < grew["shard"] < 1.25, grew  # + 2 MiB rounding of 2 buffers
    assert 1.8 < grew["replicate"] < 2.25, grew


@pytest.fixture(scope="module", params=["Q8_0", "Q4_K_M"])
def small_model(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("shard") / f"small-{request.param}.gguf"
    synth("small-qwen3moe", path, request.param)
    return path


def test_model_logits_equal_off(small_model, policy):
    prompt = torch.tensor([1, 17, 33, 200, 5, 99, 412])
    logits = {}
    for name in ("off", "shard", "replicate"):
        rt = policy(name)
        _, model = load(open_gguf(small_model), rt)
        with torch.no_grad():
            cache = model.new_cache(32)
            pre = model.forward(prompt, cache, 0).float()  # [T, V]
            n = len(prompt)
            dec = [  # decode: the (sliced) MoE op in the C++ blocks
                model.forward(torch.tensor([t]), cache, n + i, path="cpp")
                for i, t in enumerate([3, 8])
            ]
            assert model.cpp_steps == 2
            logits[name] = torch.cat([pre, *dec])  # [T + 2, V]
        del model
    scale = logits["off"].abs().max().item()
    err = (logits["shard"] - logits["off"]).abs().max().item() / scale
    assert err < LOGIT_TOL, err
    assert torch.equal(logits["replicate"], logits["shard"])


def test_fewer_blocks_than_nodes(tmp_path, policy):
    """F = one 32-block: node 1 gets nothing; node 0's one slice holds all of F and computes
    exactly as off (same dot products), only on its group's threads."""
    rng = np.random.default_rng(9)
    E, Fd, D, T, k = 4, 32, 64, 5, 2
    path = experts_file(tmp_path / "f32.gguf", (Q.Q8_0,) * 3, E, Fd, D, rng)
    x = torch.from_numpy(rng.standard_normal((T, D)).astype(np.float32))
    ids, w = map(torch.from_numpy, skewed_ids(T, E, k, rng))
    out = {}
    for name in ("off", "shard"):
        rt = policy(name)
        ex = Experts.load(open_gguf(path), 0, E, D, Fd, rt.policy)
        assert ex.op.n_slices == 1 and len(ex.buffers) == (name == "shard")
        out[name] = ex(x, ids, w)
    assert torch.equal(out["shard"], out["off"])


def test_sliced_op_checks():
    """The sliced constructor checks its slices (ValueError) and keeps the buffers alive."""
    E, Fd, D, q = 1, 64, 32, int(Q.Q8_0)
    rb = numa_experts.row_bytes(q, D)  # gate/up row; down row of 32 = rb too
    buf = np.zeros(3 * Fd * rb, np.uint8)
    ok = (buf, [0], [Fd * rb], [2 * Fd * rb], 0, Fd, 0, 0)
    assert _cpu.MoE([ok], q, q, q, E, Fd, D).n_slices == 1
    bad = {
        "C-contiguous uint8": (buf[::2], *ok[1:]),
        "outside the buffer": (buf, [0], [Fd * rb], [3 * Fd * rb], 0, Fd, 0, 0),
        "cover": (buf, [0], [Fd * rb], [2 * Fd * rb], 0, 32, 0, 0),
        "one offset per expert": (buf, [0, 0], [0], [0], 0, Fd, 0, 0),
    }
    for match, s in bad.items():
        with pytest.raises(ValueError, match=match):
            _cpu.MoE([s], q, q, q, E, Fd, D)
    with pytest.raises(ValueError, match="multiple of the block size|block"):  # f0 = 16
        _cpu.MoE(
            [(buf, [0], [0], [0], 0, 16, 0, 0), (buf, [0], [0], [0], 16, 48, 0, 1)],
            q, q, q, E, Fd, D,
        )  # fmt: skip
