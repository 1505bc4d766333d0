"""The torch-threads / pool-spin policy a Runtime applies before each forward
(numoe.runtime.settings, numoe.runtime.pool)."""

import pytest
import torch

from numoe import _cpu
from numoe.engine import Session
from numoe.runtime import pool
from numoe.runtime.settings import Runtime
from numoe.synth import synth


@pytest.fixture(autouse=True)
def restore():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
    _cpu.set_spin_us(100)


def test_decode_runs_torch_on_one_thread_and_spins_long():
    rt = Runtime.create()
    rt.activate(1)
    assert torch.get_num_threads() == 1
    assert _cpu.spin_us() == pool.SPIN_US["decode"]
    assert pool.thread_groups() == rt.plan.groups
    rt.activate(64)
    assert torch.get_num_threads() == pool.num_threads() == rt.threads
    assert _cpu.spin_us() == pool.SPIN_US["prefill"]


def test_policy_can_be_changed_and_is_checked():
    rt = Runtime.create(torch_threads_decode=2, torch_threads_prefill=1)
    rt.activate(1)
    assert torch.get_num_threads() == 2
    rt.activate(7)
    assert torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="torch_threads_decode"):
        Runtime.create(torch_threads_decode=0)


def test_two_runtimes_in_one_process_each_run_with_their_own_plan(tmp_path):
    """Two models loaded with different thread counts: each forward runs on its own plan
    (the pool is the process's; each model's runtime applies its plan), with equal logits."""
    from numoe.gguf import open_gguf
    from numoe.models import load

    synth("tiny-qwen3moe", tmp_path / "m.gguf", "Q8_0")
    one = Runtime.create(threads=1)
    full = Runtime.create()
    _, m1 = load(open_gguf(tmp_path / "m.gguf"), one)
    _, m2 = load(open_gguf(tmp_path / "m.gguf"), full)
    tok = torch.tensor([3, 1, 4, 1, 5])
    a = m1.forward(tok, m1.new_cache(16), 0)
    assert pool.num_threads() == 1
    b = m2.forward(tok, m2.new_cache(16), 0)
    assert pool.num_threads() == full.threads
    assert torch.equal(a, b)  # results do not depend on the thread count
    assert "1 thread, NUMA" in str(one)


def test_spin_time_is_clamped():
    _cpu.set_spin_us(-5)
    assert _cpu.spin_us() == 0
    _cpu.set_spin_us(5_000_000)
    assert _cpu.spin_us() == 1_000_000


def test_session_applies_the_policy(tmp_path):
    from numoe.gguf import open_gguf
    from numoe.models import load

    synth("tiny-qwen3moe", tmp_path / "m.gguf", "Q8_0")
    _, model = load(open_gguf(tmp_path / "m.gguf"))
    s = Session(model, n_ctx=32)
    s.prefill([1, 2, 3, 4])  # through the C++ blocks: torch has nothing heavy to do
    assert torch.get_num_threads() == 1 and model.cpp_chunks == 1
    model.forward(torch.tensor([1, 2, 3]), s.cache, 0, path="torch")  # torch's attention
    assert torch.get_num_threads() == pool.num_threads()
    s.step(5)
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("split", [False, True])
def test_each_worker_reads_the_affinity_the_plan_gives(split):
    """Every pool worker reads its own mask (sched_getaffinity, inside the worker) after
    pinning: exactly the one CPU of its slot in the plan."""
    from numoe.runtime import numa
    from numoe.runtime.topology import Topology

    topo = Topology.read()
    node = topo.nodes[0].id
    plan = numa.plan_threads(topo, None, [node, node] if split else None)
    pool.set_plan(plan)
    groups = pool.thread_groups()
    cpus = [c for g in groups for c in g]  # slot i -> CPU
    got = _cpu.worker_affinity()
    assert len(got) == len(cpus) == pool.num_threads()
    assert got[0] == []  # the caller's slot: not pinned by the pool
    for slot in range(1, len(cpus)):
        assert got[slot] == [cpus[slot]], (slot, got, groups)
    pool.set_threads(None)
