"""The torch-threads / pool-spin policy applied before each forward (numoe.pool)."""

import pytest
import torch

from numoe import _cpu, pool
from numoe.engine import Session
from numoe.synth import synth


@pytest.fixture(autouse=True)
def restore():
    n = torch.get_num_threads()
    yield
    pool.set_torch_threads()
    torch.set_num_threads(n)
    _cpu.set_spin_us(100)


def test_decode_runs_torch_on_one_thread_and_spins_long():
    pool.set_threads(None)
    pool.torch_threads_for(1)
    assert torch.get_num_threads() == 1
    assert _cpu.spin_us() == pool.SPIN_US["decode"]
    pool.torch_threads_for(64)
    assert torch.get_num_threads() == pool.num_threads()
    assert _cpu.spin_us() == pool.SPIN_US["prefill"]


def test_policy_can_be_changed_and_is_checked():
    pool.set_torch_threads(decode=2, prefill=1)
    pool.torch_threads_for(1)
    assert torch.get_num_threads() == 2
    pool.torch_threads_for(7)
    assert torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="decode"):
        pool.set_torch_threads(decode=0)


def test_spin_time_is_clamped():
    _cpu.set_spin_us(-5)
    assert _cpu.spin_us() == 0
    _cpu.set_spin_us(5_000_000)
    assert _cpu.spin_us() == 1_000_000


def test_session_applies_the_policy(tmp_path):
    from numoe.gguf import open_gguf
    from numoe.models import load
    from numoe.placement import Placement

    synth("tiny-qwen3moe", tmp_path / "m.gguf", "Q8_0")
    _, model = load(open_gguf(tmp_path / "m.gguf"), Placement.parse("cpu"))
    s = Session(model, n_ctx=32)
    s.prefill([1, 2, 3, 4])
    assert torch.get_num_threads() == pool.num_threads()
    s.step(5)
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("split", [False, True])
def test_each_worker_reads_the_affinity_the_plan_gives(split):
    """Every pool worker reads its own mask (sched_getaffinity, inside the worker) after
    pinning: exactly the one CPU of its slot in the plan."""
    from numoe import numa
    from numoe.topology import Topology

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
