"""numoe.runtime.numa: thread plans (logical nodes, --numa-nodes, SMT, -t), policies, libnuma and
NUMA balancing probes, on sysfs trees of real shapes (numa_fixtures) and this machine."""

from __future__ import annotations

import os

import pytest
from numa_fixtures import (
    cpu_node_without_memory,
    memory_only_node,
    one_node,
    twenty_four_nodes,
    two_sockets_32,
)

from numoe import _cpu
from numoe.runtime import numa
from numoe.runtime.numa import (
    LibNuma,
    PlanError,
    format_ids,
    parse_numa_nodes,
    plan_threads,
    probe_libnuma,
    resolve_policy,
)
from numoe.runtime.topology import Topology, read_mems_allowed


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """The two large trees, built once."""
    return {
        "2x32": two_sockets_32(tmp_path_factory.mktemp("2x32")),
        "24": twenty_four_nodes(tmp_path_factory.mktemp("24")),
    }


def _read(root, allowed_cpus=None, allowed_mems=None):
    topo = Topology.read(str(root), allowed_cpus=[])
    cpus = list(topo.online_cpus) if allowed_cpus is None else allowed_cpus
    return Topology.read(str(root), allowed_cpus=cpus, allowed_mems=allowed_mems)


# --- the five shapes -----------------------------------------------------------------------


def test_two_sockets_32_cores_smt(big):
    topo = _read(big["2x32"])
    assert [n.id for n in topo.nodes] == [0, 1]
    assert topo.smt and len(topo.cpus) == 128
    assert topo.physical_cores() == list(range(64))
    assert topo.packages(0) == (0,) and topo.packages(1) == (1,)
    assert topo.allowed_mems == (0, 1)
    assert topo.distance(0, 1) == 21 and topo.distance(1, 1) == 10
    plan = plan_threads(topo)
    assert plan.groups == [list(range(32)), list(range(32, 64))]
    assert [(n.node, n.mem_node, n.cores) for n in plan.nodes] == [(0, 0, 32), (1, 1, 32)]
    assert plan.threads == 64 and plan.smt_cpus == ()
    assert resolve_policy("auto", plan).name == "shard"
    # -t 8: 4 + 4, the lowest cores of each node
    assert plan_threads(topo, 8).groups == [[0, 1, 2, 3], [32, 33, 34, 35]]
    # --smt: every allowed thread, each node's siblings after its cores
    smt = plan_threads(topo, smt=True)
    assert smt.groups == [
        list(range(32)) + list(range(64, 96)),
        list(range(32, 64)) + list(range(96, 128)),
    ]
    assert smt.smt_cpus == tuple(range(64, 128))
    # -t beyond the cores adds siblings (asked for), split in proportion
    assert plan_threads(topo, 66).groups == [list(range(32)) + [64], list(range(32, 64)) + [96]]
    assert plan_threads(topo, 66).smt_cpus == (64, 96)
    # one socket only
    one = plan_threads(topo, numa_nodes=[1])
    assert one.groups == [list(range(32, 64))] and resolve_policy("auto", one).name == "off"


def test_twenty_four_nodes(big):
    topo = _read(big["24"])
    assert len(topo.nodes) == 24 and len(topo.cpus) == 384
    assert topo.nodes[5].cpus == tuple(range(40, 48)) + tuple(range(232, 240))
    assert topo.distance(0, 11) == 12 and topo.distance(0, 12) == 32
    assert topo.packages(11) == (0,) and topo.packages(12) == (1,)
    plan = plan_threads(topo)
    assert len(plan.nodes) == 24 and plan.threads == 192
    assert plan.groups[5] == list(range(40, 48))
    assert all(n.mem_node == n.node for n in plan.nodes)
    assert resolve_policy("auto", plan).name == "shard"
    # -t 30 over 24 equal nodes: the first 6 get 2
    assert [len(g) for g in plan_threads(topo, 30).groups] == [2] * 6 + [1] * 18
    # one node per socket, chosen by hand
    assert plan_threads(topo, numa_nodes=[0, 12]).groups == [list(range(8)), list(range(96, 104))]


def test_container_confined_to_part_of_a_node(big):
    """docker --cpuset-cpus=40-47,104-111 --cpuset-mems=1: 8 cores of node 1 and their
    siblings; the whole machine is still described."""
    allowed = list(range(40, 48)) + list(range(104, 112))
    topo = _read(big["2x32"], allowed, allowed_mems=[1])
    assert topo.allowed_cpus == tuple(allowed) and topo.allowed_mems == (1,)
    assert len(topo.cpus) == 128
    plan = plan_threads(topo)
    assert plan.groups == [list(range(40, 48))]
    assert [(n.node, n.mem_node) for n in plan.nodes] == [(1, 1)]
    assert resolve_policy("auto", plan).name == "off"
    assert plan_threads(topo, smt=True).groups == [allowed]
    # memory only on node 0 (numactl -m 0 on node 1's CPUs): served from node 0
    assert plan_threads(_read(big["2x32"], allowed, [0])).nodes[0].mem_node == 0
    with pytest.raises(PlanError, match="node 0 has no CPU this process may use"):
        plan_threads(topo, numa_nodes=[0])


def test_cpu_node_without_memory(tmp_path):
    topo = _read(cpu_node_without_memory(tmp_path))
    assert topo.node(1).mem_total == 0 and topo.node(1).cpus == (4, 5, 6, 7)
    plan = plan_threads(topo)
    assert plan.groups == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # node 1's threads are served by the nearest node with memory
    assert [(n.node, n.mem_node) for n in plan.nodes] == [(0, 0), (1, 0)]
    assert plan.mem_nodes == (0,)


def test_memory_only_node(tmp_path):
    topo = _read(memory_only_node(tmp_path))
    assert topo.node(1).cpus == () and topo.node(1).mem_total == 64 * 2**30
    assert topo.packages(1) == ()
    plan = plan_threads(topo)
    assert plan.groups == [[0, 1, 2, 3]]
    assert [(n.node, n.mem_node) for n in plan.nodes] == [(0, 0)]
    assert resolve_policy("auto", plan).name == "off"
    with pytest.raises(PlanError, match=r"node 1 has no CPUs \(memory only\)"):
        plan_threads(topo, numa_nodes=[1])


# --- logical nodes, -t, SMT ----------------------------------------------------------------


def test_node_listed_twice_splits_its_cores(tmp_path):
    topo = _read(one_node(tmp_path, 8))
    plan = plan_threads(topo, numa_nodes=[0, 0])
    assert plan.groups == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [(n.node, n.mem_node, n.split) for n in plan.nodes] == [(0, 0, (0, 2)), (0, 0, (1, 2))]
    assert plan.physical_nodes == (0,) and plan.mem_nodes == (0,)
    assert resolve_policy("auto", plan).name == "shard"
    assert plan_threads(topo, numa_nodes=[0, 0, 0]).groups == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert plan_threads(topo, 3, numa_nodes=[0, 0]).groups == [[0, 1], [4]]
    with pytest.raises(PlanError, match="listed 9 times but has 8 physical cores"):
        plan_threads(topo, numa_nodes=[0] * 9)


def test_split_node_with_smt_keeps_siblings_with_their_cores(tmp_path):
    topo = _read(one_node(tmp_path, 4, smt=True))
    plan = plan_threads(topo, numa_nodes=[0, 0], smt=True)
    assert plan.groups == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert plan.smt_cpus == (4, 5, 6, 7)
    assert plan_threads(topo, numa_nodes=[0, 0]).groups == [[0, 1], [2, 3]]


def test_threads_split_in_proportion_to_cores(big):
    """A container with 2 cores on node 0 and 6 on node 1: -t 4 gives 1 + 3, not 2 + 2."""
    topo = _read(big["2x32"], [0, 1] + list(range(32, 38)))
    assert plan_threads(topo).groups == [[0, 1], list(range(32, 38))]
    assert plan_threads(topo, 4).groups == [[0], [32, 33, 34]]
    assert plan_threads(topo, 1).groups == [[32]]  # largest share first


def test_numa_nodes_order_is_kept(big):
    topo = _read(big["2x32"])
    plan = plan_threads(topo, 4, numa_nodes=[1, 0])
    assert plan.groups == [[32, 33], [0, 1]]
    assert [n.index for n in plan.nodes] == [0, 1]


def test_numa_nodes_that_do_not_exist(tmp_path):
    topo = _read(one_node(tmp_path, 2))
    with pytest.raises(PlanError, match="^this machine has nodes 0$"):
        plan_threads(topo, numa_nodes=[5])
    with pytest.raises(ValueError, match=">= 1"):
        plan_threads(topo, 0)


@pytest.mark.parametrize(
    "text, ids",
    [("0", [0]), ("0,1", [0, 1]), ("0-3", [0, 1, 2, 3]), ("0,0", [0, 0]), ("1,0", [1, 0]),
     ("0-1,0-1", [0, 1, 0, 1]), (" 2 , 3 ", [2, 3])],
)  # fmt: skip
def test_parse_numa_nodes(text, ids):
    assert parse_numa_nodes(text) == ids


@pytest.mark.parametrize("text", ["", "x", "0,", ",0", "-1", "3-1", "0-", "1.5", "0-99999"])
def test_parse_numa_nodes_malformed(text):
    with pytest.raises(ValueError):
        parse_numa_nodes(text)


def test_format_ids():
    assert format_ids([]) == "" and format_ids([3, 0, 1, 2, 7]) == "0-3,7"


def test_policies(tmp_path):
    topo = _read(one_node(tmp_path, 4))
    one, two = plan_threads(topo), plan_threads(topo, numa_nodes=[0, 0])
    assert resolve_policy("auto", one).name == "off"
    pol = resolve_policy("auto", two)
    assert (pol.name, pol.reason, len(pol.nodes)) == ("shard", "auto: 2 logical nodes", 2)
    assert resolve_policy("replicate", one).name == "replicate"
    assert (resolve_policy("off", two).name, resolve_policy("shard", two).reason) == (
        "off",
        "asked",
    )
    with pytest.raises(ValueError, match="--numa must be one of"):
        resolve_policy("interleave", one)


# --- this machine, the pool ----------------------------------------------------------------


def test_plan_on_this_machine():
    topo = Topology.read()
    plan = plan_threads(topo)
    assert plan.groups == plan_threads(topo).groups
    assert plan.threads == topo.default_threads()
    assert set(topo.allowed_mems) <= {n.id for n in topo.nodes}
    n0 = plan.nodes[0].node
    if len(topo.cores_by_node()[n0]) >= 2:
        split = plan_threads(topo, numa_nodes=[n0, n0])
        assert len(split.nodes) == 2
        assert sorted(c for g in split.groups for c in g) == sorted(topo.cores_by_node()[n0])


def test_pool_workers_run_where_the_plan_says():
    """Each pinned worker, asked from inside (sched_getcpu in pool_trace), runs on its CPU of
    the plan; the caller (thread 0) is the Python thread and is not pinned."""
    topo = Topology.read()
    n0 = plan_threads(topo).nodes[0].node
    k = 2 if len(topo.cores_by_node()[n0]) >= 2 else 1
    plan = plan_threads(topo, numa_nodes=[n0] * k)
    try:
        _cpu.set_threads(plan.groups)
        assert _cpu.thread_groups() == plan.groups
        flat = [c for g in plan.groups for c in g]
        threads, cpus = _cpu.pool_trace(400, 20_000)
        for th, cpu in zip(threads, cpus, strict=True):
            if th > 0:
                assert cpu == flat[th]
    finally:
        from numoe.runtime import pool

        pool.set_threads(None)


# --- system probes -------------------------------------------------------------------------


def test_read_mems_allowed(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nCpus_allowed_list:\t0-3\nMems_allowed_list:\t0,2-3\n")
    assert read_mems_allowed(str(status)) == [0, 2, 3]
    status.write_text("Name:\tpython\n")
    assert read_mems_allowed(str(status)) is None
    assert read_mems_allowed(str(tmp_path / "missing")) is None
    # the live /sys takes Mems_allowed_list from status_path, intersected with its nodes
    status.write_text("Mems_allowed_list:\t0-1023\n")
    topo = Topology.read(status_path=str(status))
    assert topo.allowed_mems == tuple(n.id for n in topo.nodes)
    assert Topology.read().allowed_mems == tuple(read_mems_allowed())


class _FakeLib:
    def __init__(self, available):
        self._available = available

    def numa_available(self):
        return self._available

    def numa_max_node(self):
        return 3


def test_probe_libnuma():
    missing = probe_libnuma("libnuma-does-not-exist.so.9")
    assert (missing.status, missing.ok) == ("missing", False)
    assert "not installed" in missing.text
    refused = probe_libnuma(lib=_FakeLib(-1))
    assert refused.status == "refused" and refused.text == "refused (numa_available() == -1)"
    ok = probe_libnuma(lib=_FakeLib(0))
    assert ok.ok and ok.max_node == 3 and ok.text.startswith("ok")
    real = numa.libnuma()  # whatever this machine has, it answers
    assert real.status in ("ok", "missing", "refused")


def test_fallback_notice():
    refused = numa.fallback_notice(LibNuma("refused", "refused (numa_available() == -1)"))
    assert "libnuma refused" in refused and "first touch from pinned threads" in refused
    assert "libnuma not installed" in numa.fallback_notice(LibNuma("missing", "x"))
    assert numa.fallback_notice(LibNuma("ok", "ok")) is None


def test_numa_balancing(tmp_path):
    f = tmp_path / "numa_balancing"
    f.write_text("1\n")
    assert numa.numa_balancing(str(f)) == 1
    f.write_text("0\n")
    assert numa.numa_balancing(str(f)) == 0
    assert numa.numa_balancing(str(tmp_path / "none")) is None
    if os.path.exists("/proc/sys/kernel/numa_balancing"):
        assert numa.numa_balancing() in (0, 1, 2, 3)
