"""numoe.runtime.topology and numoe._cpu's sysfs reader, on sysfs trees built in tmp_path and on
this machine's /sys. Expected values are worked out by hand from each tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from numoe import _cpu
from numoe.runtime.numa import plan_threads
from numoe.runtime.topology import Topology


def thread_plan(topo, n=None):
    """The pool's CPU groups for n threads (the default plan's rules)."""
    return plan_threads(topo, n).groups


GiB_kB = 1024 * 1024  # kB in a GiB


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def make_sysfs(
    root: Path,
    cpus: dict[int, tuple[int, int, str]],
    nodes: dict[int, tuple[str, int | None, str]] | None = None,
    online: str | None = "auto",
    present: str | None = None,
    siblings_file: str = "both",
    extra_cpu_files: bool = True,
) -> Path:
    """A sysfs tree shaped like Linux's under root.

    cpus: cpu id -> (physical_package_id, core_id, thread_siblings_list)
    nodes: node id -> (cpulist, MemTotal kB or None for no meminfo, distance line)
    online: text of cpu/online ("auto": from cpus; None: no file)
    siblings_file: "both", "thread_siblings_list", "core_cpus_list" or "none"
    """
    sysdir = root / "devices" / "system"
    cpu_dir = sysdir / "cpu"
    cpu_dir.mkdir(parents=True, exist_ok=True)
    if online == "auto":
        online = _cpulist(sorted(cpus))
    if online is not None:
        _write(cpu_dir / "online", online + "\n")
    if present is not None:
        _write(cpu_dir / "present", present + "\n")
    if extra_cpu_files:  # real trees have these next to cpuN; they must be ignored
        (cpu_dir / "cpufreq").mkdir(exist_ok=True)
        (cpu_dir / "cpuidle").mkdir(exist_ok=True)
        _write(cpu_dir / "possible", "0-1023\n")
    for cpu, (pkg, core, sib) in cpus.items():
        t = cpu_dir / f"cpu{cpu}" / "topology"
        _write(t / "physical_package_id", f"{pkg}\n")
        _write(t / "core_id", f"{core}\n")
        _write(t / "die_id", "0\n")
        if siblings_file in ("both", "thread_siblings_list"):
            _write(t / "thread_siblings_list", sib + "\n")
        if siblings_file in ("both", "core_cpus_list"):
            _write(t / "core_cpus_list", sib + "\n")
    if nodes is not None:
        node_dir = sysdir / "node"
        node_dir.mkdir(parents=True, exist_ok=True)
        _write(node_dir / "online", _cpulist(sorted(nodes)) + "\n")
        _write(node_dir / "possible", _cpulist(sorted(nodes)) + "\n")
        for nid, (cpulist, mem_kb, distance) in nodes.items():
            d = node_dir / f"node{nid}"
            _write(d / "cpulist", cpulist + "\n")
            if mem_kb is not None:
                free_kb = mem_kb // 2
                used_kb = mem_kb - free_kb
                _write(
                    d / "meminfo",
                    f"Node {nid} MemTotal:       {mem_kb} kB\n"
                    f"Node {nid} MemFree:        {free_kb} kB\n"
                    f"Node {nid} MemUsed:        {used_kb} kB\n"
                    f"Node {nid} SwapCached:            0 kB\n"
                    f"Node {nid} HugePages_Total:     0\n",
                )
            _write(d / "distance", distance + "\n")
            (d / "memory0").mkdir(exist_ok=True)
    return root


def _cpulist(ids: list[int]) -> str:
    """[0,1,2,5] -> '0-2,5' (the kernel's format)."""
    out, i = [], 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(out)


# --- trees -------------------------------------------------------------------------------


def two_socket_smt(root: Path) -> Path:
    """2 sockets x 4 cores x 2 threads, one node per socket, Intel-style numbering:
    CPUs 0-3 = socket 0 cores, 4-7 = socket 1 cores, 8-11 / 12-15 their SMT siblings.
    core_ids are not contiguous (0,1,8,9), as on real Xeons. 16 GiB / 32 GiB."""
    core_ids = [0, 1, 8, 9]
    cpus = {}
    for cpu in range(16):
        pkg = (cpu // 4) % 2
        idx = cpu % 4
        first = pkg * 4 + idx
        cpus[cpu] = (pkg, core_ids[idx], f"{first},{first + 8}")
    nodes = {
        0: ("0-3,8-11", 16 * GiB_kB, "10 21"),
        1: ("4-7,12-15", 32 * GiB_kB, "21 10"),
    }
    return make_sysfs(root, cpus, nodes)


def six_nodes(root: Path) -> Path:
    """One socket set to one NUMA node per memory channel: 6 nodes x 2 cores, no SMT."""
    cpus = {cpu: (0, cpu, str(cpu)) for cpu in range(12)}
    nodes = {}
    for n in range(6):
        dist = " ".join("10" if m == n else "12" for m in range(6))
        nodes[n] = (f"{2 * n}-{2 * n + 1}", 4 * GiB_kB, dist)
    return make_sysfs(root, cpus, nodes)


# --- parse_cpulist -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0-3,8,10-11", [0, 1, 2, 3, 8, 10, 11]),
        ("0-3,8,10-11\n", [0, 1, 2, 3, 8, 10, 11]),
        ("5", [5]),
        ("", []),
        ("\n", []),
        ("  \n", []),
        ("3,1,2,1", [1, 2, 3]),
        ("0-1,1-2", [0, 1, 2]),
        ("2-2", [2]),
        ("0-7:2/4", [0, 1, 4, 5]),
        ("0-9:1/3", [0, 3, 6, 9]),
        ("8191", [8191]),
    ],
)
def test_parse_cpulist(text, expected):
    assert _cpu.parse_cpulist(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "x",
        "0-3,x",
        "3-1",
        "1,,2",
        "1,2,",
        ",1",
        "1-",
        "-1",
        "1 2",
        "0-3:0/4",
        "0-3:5/4",
        "0-3:2",
        "99999999999",
        "0-99999999999",
        "1\x002",
        "0x3",
    ],
)
def test_parse_cpulist_malformed(text):
    with pytest.raises(ValueError, match="cpulist"):
        _cpu.parse_cpulist(text)


# --- fixture trees -----------------------------------------------------------------------


def test_two_sockets_smt(tmp_path):
    root = two_socket_smt(tmp_path)
    topo = Topology.read(root, allowed_cpus=list(range(16)))

    assert [n.id for n in topo.nodes] == [0, 1]
    assert topo.nodes[0].cpus == (0, 1, 2, 3, 8, 9, 10, 11)
    assert topo.nodes[1].cpus == (4, 5, 6, 7, 12, 13, 14, 15)
    assert topo.nodes[0].mem_total == 16 * 2**30
    assert topo.nodes[0].mem_free == 8 * 2**30
    assert topo.nodes[1].mem_total == 32 * 2**30
    assert topo.nodes[0].distances == (10, 21)
    assert topo.nodes[1].distances == (21, 10)
    assert not topo.nodes[0].synthetic
    assert topo.smt is True
    assert topo.allowed_cpus == tuple(range(16))

    c0, c8, c5, c13 = topo.cpu(0), topo.cpu(8), topo.cpu(5), topo.cpu(13)
    assert (c0.node, c0.package, c0.core, c0.siblings, c0.primary) == (
        0,
        0,
        0,
        (0, 8),
        True,
    )
    assert (c8.node, c8.package, c8.core, c8.siblings, c8.primary) == (
        0,
        0,
        0,
        (0, 8),
        False,
    )
    assert (c5.node, c5.package, c5.core, c5.siblings, c5.primary) == (
        1,
        1,
        1,
        (5, 13),
        True,
    )
    assert (c13.node, c13.siblings, c13.primary) == (1, (5, 13), False)
    assert [c.id for c in topo.cpus if c.primary] == list(range(8))

    assert topo.physical_cores() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert topo.physical_cores(allowed_only=False) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert topo.cores_by_node() == {0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}
    assert topo.default_threads() == 8

    assert thread_plan(topo) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert thread_plan(topo, 8) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert thread_plan(topo, 3) == [[0, 1], [4]]
    assert thread_plan(topo, 1) == [[0]]
    # beyond the physical cores: SMT siblings, node by node; never more than allowed CPUs
    assert thread_plan(topo, 10) == [[0, 1, 2, 3, 8], [4, 5, 6, 7, 12]]
    assert thread_plan(topo, 16) == [
        [0, 1, 2, 3, 8, 9, 10, 11],
        [4, 5, 6, 7, 12, 13, 14, 15],
    ]
    assert thread_plan(topo, 100) == thread_plan(topo, 16)
    with pytest.raises(ValueError):
        thread_plan(topo, 0)


def test_two_sockets_only_siblings_allowed(tmp_path):
    """taskset on SMT siblings: a core counts when any of its threads is allowed, and is
    represented by its lowest allowed thread."""
    topo = Topology.read(two_socket_smt(tmp_path), allowed_cpus=[9, 8, 1, 15])
    assert topo.allowed_cpus == (1, 8, 9, 15)
    assert topo.physical_cores() == [
        1,
        8,
        15,
    ]  # cores (0,8) -> 8, (1,9) -> 1, (7,15) -> 15
    assert topo.cores_by_node() == {0: [1, 8], 1: [15]}
    assert topo.default_threads() == 3
    assert thread_plan(topo) == [[1, 8], [15]]
    assert thread_plan(topo, 4) == [[1, 8, 9], [15]]
    assert [c.id for c in topo.cpus if c.allowed] == [1, 8, 9, 15]


def test_six_nodes_one_per_memory_channel(tmp_path):
    topo = Topology.read(six_nodes(tmp_path), allowed_cpus=list(range(12)))
    assert [n.id for n in topo.nodes] == [0, 1, 2, 3, 4, 5]
    assert [n.cpus for n in topo.nodes] == [
        (0, 1),
        (2, 3),
        (4, 5),
        (6, 7),
        (8, 9),
        (10, 11),
    ]
    assert topo.nodes[3].distances == (12, 12, 12, 10, 12, 12)
    assert all(n.mem_total == 4 * 2**30 for n in topo.nodes)
    assert topo.smt is False
    assert all(c.primary and c.siblings == (c.id,) for c in topo.cpus)
    assert topo.cpu(7).node == 3
    assert topo.default_threads() == 12
    assert thread_plan(topo) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11]]
    assert thread_plan(topo, 6) == [[0], [2], [4], [6], [8], [10]]
    assert thread_plan(topo, 4) == [[0], [2], [4], [6]]
    assert thread_plan(topo, 7) == [[0, 1], [2], [4], [6], [8], [10]]
    assert thread_plan(topo, 13) == thread_plan(topo, 12)  # no SMT to add


def test_container_confined_to_part_of_a_node(tmp_path):
    root = two_socket_smt(tmp_path)
    # cgroup cpuset 4,5,12 (+ a CPU id that is not online here, which is dropped)
    topo = Topology.read(root, allowed_cpus=[12, 4, 5, 99])
    assert topo.allowed_cpus == (4, 5, 12)
    assert topo.physical_cores() == [4, 5]
    assert topo.physical_cores(allowed_only=False) == list(range(8))
    assert topo.cores_by_node() == {1: [4, 5]}
    assert topo.default_threads() == 2
    assert thread_plan(topo) == [[4, 5]]
    assert thread_plan(topo, 3) == [[4, 5, 12]]
    assert thread_plan(topo, 8) == [[4, 5, 12]]
    # the whole machine is still described
    assert len(topo.cpus) == 16 and len(topo.nodes) == 2


def test_allowed_cpus_none_online(tmp_path):
    topo = Topology.read(six_nodes(tmp_path), allowed_cpus=[50])
    assert topo.allowed_cpus == ()
    assert topo.physical_cores() == []
    assert topo.default_threads() == 1
    with pytest.raises(ValueError, match="no allowed CPU"):
        thread_plan(topo)


def test_allowed_cpus_negative(tmp_path):
    with pytest.raises(ValueError, match="allowed_cpus"):
        Topology.read(six_nodes(tmp_path), allowed_cpus=[-1])


def test_node_with_cpus_and_no_memory(tmp_path):
    cpus = {cpu: (0, cpu, str(cpu)) for cpu in range(4)}
    nodes = {0: ("0-1", 8 * GiB_kB, "10 20"), 1: ("2-3", 0, "20 10")}
    topo = Topology.read(make_sysfs(tmp_path, cpus, nodes), allowed_cpus=[0, 1, 2, 3])
    assert topo.nodes[1].cpus == (2, 3)
    assert topo.nodes[1].mem_total == 0 and topo.nodes[1].mem_free == 0
    assert topo.nodes[0].mem_total == 8 * 2**30 and topo.nodes[0].mem_free == 4 * 2**30
    assert topo.cores_by_node() == {0: [0, 1], 1: [2, 3]}
    assert thread_plan(topo) == [[0, 1], [2, 3]]
    assert thread_plan(topo, 3) == [[0, 1], [2]]


def test_memory_only_node(tmp_path):
    """E.g. CXL memory or HBM in flat mode: a node with memory and an empty cpulist."""
    cpus = {cpu: (0, cpu, str(cpu)) for cpu in range(4)}
    nodes = {0: ("0-3", 16 * GiB_kB, "10 14"), 1: ("", 64 * GiB_kB, "14 10")}
    topo = Topology.read(make_sysfs(tmp_path, cpus, nodes), allowed_cpus=[0, 1, 2, 3])
    assert [n.id for n in topo.nodes] == [0, 1]
    assert topo.nodes[1].cpus == ()
    assert topo.nodes[1].mem_total == 64 * 2**30
    assert topo.nodes[1].distances == (14, 10)
    assert all(c.node == 0 for c in topo.cpus)
    assert topo.cores_by_node() == {0: [0, 1, 2, 3]}
    assert thread_plan(topo) == [[0, 1, 2, 3]]
    assert thread_plan(topo, 2) == [[0, 1]]


def test_no_node_directory(tmp_path):
    """Kernels without NUMA (or containers hiding it): one synthetic node 0 with every CPU.
    AMD-style SMT numbering: CPUs 0-1 are the cores, 2-3 their siblings."""
    cpus = {0: (0, 0, "0,2"), 1: (0, 1, "1,3"), 2: (0, 0, "0,2"), 3: (0, 1, "1,3")}
    topo = Topology.read(make_sysfs(tmp_path, cpus, nodes=None), allowed_cpus=[0, 1, 2, 3])
    assert len(topo.nodes) == 1
    node = topo.nodes[0]
    assert (node.id, node.cpus, node.synthetic) == (0, (0, 1, 2, 3), True)
    assert (node.mem_total, node.distances) == (
        0,
        (10,),
    )  # not the live /sys: no memory info
    assert all(c.node == 0 for c in topo.cpus)
    assert topo.smt is True
    assert topo.cpu(3).siblings == (1, 3) and not topo.cpu(3).primary
    assert topo.physical_cores() == [0, 1]
    assert thread_plan(topo) == [[0, 1]]


def test_no_node_directory_present_only_core_cpus_list(tmp_path):
    """No cpu/online (use cpu/present), and only the newer core_cpus_list file."""
    cpus = {0: (0, 0, "0-1"), 1: (0, 0, "0-1"), 2: (0, 1, "2-3"), 3: (0, 1, "2-3")}
    root = make_sysfs(
        tmp_path,
        cpus,
        nodes=None,
        online=None,
        present="0-3",
        siblings_file="core_cpus_list",
    )
    topo = Topology.read(root, allowed_cpus=[0, 1, 2, 3])
    assert topo.nodes[0].cpus == (0, 1, 2, 3)
    assert [c.siblings for c in topo.cpus] == [(0, 1), (0, 1), (2, 3), (2, 3)]
    assert topo.physical_cores() == [0, 2]


def test_no_sibling_files_group_by_package_and_core(tmp_path):
    """Without thread_siblings_list/core_cpus_list, (package, die, core_id) groups threads."""
    cpus = {0: (0, 0, ""), 1: (0, 1, ""), 2: (1, 0, ""), 3: (0, 0, ""), 4: (0, 1, "")}
    root = make_sysfs(tmp_path, cpus, {0: ("0-4", GiB_kB, "10")}, online=None, siblings_file="none")
    topo = Topology.read(root, allowed_cpus=list(range(5)))
    assert [n.cpus for n in topo.nodes] == [(0, 1, 2, 3, 4)]  # cpuN directories found
    assert [c.siblings for c in topo.cpus] == [(0, 3), (1, 4), (2,), (0, 3), (1, 4)]
    assert topo.physical_cores() == [0, 1, 2]
    assert topo.smt is True


def test_siblings_file_wins_over_repeated_core_id(tmp_path):
    """Some virtual machines report core_id 0 for every CPU; thread_siblings_list says each
    CPU is its own core, and that is what counts (else default_threads would be 1)."""
    cpus = {cpu: (0, 0, str(cpu)) for cpu in range(4)}
    topo = Topology.read(
        make_sysfs(tmp_path, cpus, {0: ("0-3", GiB_kB, "10")}),
        allowed_cpus=[0, 1, 2, 3],
    )
    assert topo.smt is False
    assert topo.physical_cores() == [0, 1, 2, 3]
    assert topo.default_threads() == 4


def test_offline_cpu_excluded(tmp_path):
    """cpu/online leaves out CPU 3 (offline): it is nowhere in the result."""
    cpus = {cpu: (0, cpu // 2, "0-1" if cpu < 2 else "2-3") for cpu in range(4)}
    root = make_sysfs(tmp_path, cpus, {0: ("0-3", GiB_kB, "10")}, online="0-2")
    topo = Topology.read(root, allowed_cpus=[0, 1, 2, 3])
    assert [c.id for c in topo.cpus] == [0, 1, 2]
    assert topo.nodes[0].cpus == (0, 1, 2)
    assert topo.allowed_cpus == (0, 1, 2)
    assert topo.cpu(2).siblings == (2,)
    assert topo.physical_cores() == [0, 2]


def test_cpu_in_no_node(tmp_path):
    cpus = {cpu: (0, cpu, str(cpu)) for cpu in range(3)}
    root = make_sysfs(tmp_path, cpus, {0: ("0-1", GiB_kB, "10")})
    topo = Topology.read(root, allowed_cpus=[0, 1, 2])
    assert topo.cpu(2).node == -1
    assert topo.cores_by_node() == {0: [0, 1], -1: [2]}
    assert thread_plan(topo) == [[0, 1], [2]]


def test_dict_interface(tmp_path):
    d = _cpu.read_topology(str(two_socket_smt(tmp_path)), [0, 8])
    assert set(d) >= {"nodes", "cpus", "allowed_cpus", "smt"}
    assert set(d["nodes"][0]) >= {"id", "cpus", "mem_total", "mem_free", "distances"}
    assert set(d["cpus"][0]) >= {"id", "node", "package", "core", "siblings", "primary"}
    assert d["allowed_cpus"] == [0, 8]
    assert d["smt"] is True
    assert d["cpus"][8] == {
        "id": 8,
        "node": 0,
        "package": 0,
        "die": 0,
        "core": 0,
        "siblings": [0, 8],
        "primary": False,
        "allowed": True,
    }


# --- malformed trees ---------------------------------------------------------------------


def test_malformed_node_cpulist(tmp_path):
    root = two_socket_smt(tmp_path)
    bad = root / "devices/system/node/node1/cpulist"
    bad.write_text("4-7,1x2\n")
    with pytest.raises(ValueError, match=r"node1/cpulist"):
        Topology.read(root, allowed_cpus=[0])


def test_malformed_online(tmp_path):
    root = six_nodes(tmp_path)
    (root / "devices/system/cpu/online").write_text("0-\n")
    with pytest.raises(ValueError, match=r"cpu/online"):
        Topology.read(root, allowed_cpus=[0])


def test_malformed_thread_siblings(tmp_path):
    root = six_nodes(tmp_path)
    (root / "devices/system/cpu/cpu3/topology/thread_siblings_list").write_text("3-2\n")
    with pytest.raises(ValueError, match=r"cpu3/topology/thread_siblings_list"):
        Topology.read(root, allowed_cpus=[0])


@pytest.mark.parametrize(
    "text",
    [
        "Node 0 MemTotal: lots kB\n",
        "Node 0 MemTotal:\n",
        "Node 0 MemTotal: 12 MB\n",
        "Node 0 MemTotal: 99999999999999999999999 kB\n",
    ],
)
def test_malformed_meminfo(tmp_path, text):
    root = six_nodes(tmp_path)
    (root / "devices/system/node/node2/meminfo").write_text(text)
    with pytest.raises(ValueError, match=r"node2/meminfo"):
        Topology.read(root, allowed_cpus=[0])


@pytest.mark.parametrize("text", ["abc\n", "1 2\n", "\n", "4294967296\n"])
def test_malformed_core_id(tmp_path, text):
    root = six_nodes(tmp_path)
    (root / "devices/system/cpu/cpu1/topology/core_id").write_text(text)
    with pytest.raises(ValueError, match=r"cpu1/topology/core_id"):
        Topology.read(root, allowed_cpus=[0])


def test_malformed_distance(tmp_path):
    root = six_nodes(tmp_path)
    (root / "devices/system/node/node0/distance").write_text("10 x 12\n")
    with pytest.raises(ValueError, match=r"node0/distance"):
        Topology.read(root, allowed_cpus=[0])


def test_binary_garbage_does_not_crash(tmp_path):
    root = six_nodes(tmp_path)
    (root / "devices/system/node/node0/cpulist").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ValueError, match="node0/cpulist"):
        Topology.read(root, allowed_cpus=[0])


def test_missing_root_is_empty_but_usable(tmp_path):
    """Nothing readable at all: the allowed CPUs are taken as the online CPUs."""
    topo = Topology.read(tmp_path / "nothing", allowed_cpus=[0, 1])
    assert [c.id for c in topo.cpus] == [0, 1]
    assert topo.nodes[0].synthetic and topo.nodes[0].cpus == (0, 1)
    assert thread_plan(topo) == [[0, 1]]


# --- this machine ------------------------------------------------------------------------


def test_real_sys():
    topo = Topology.read()
    affinity = sorted(os.sched_getaffinity(0))
    assert len(topo.nodes) >= 1
    assert list(topo.allowed_cpus) == affinity
    assert _cpu.sched_getaffinity() == affinity
    assert 1 <= topo.default_threads() <= len(affinity)
    assert sum(n.mem_total for n in topo.nodes) > 0
    assert {c.id for c in topo.cpus} >= set(affinity)
    plan = thread_plan(topo)
    assert sum(len(g) for g in plan) == topo.default_threads()
    assert all(c in affinity for g in plan for c in g)


def test_import_numoe_is_light():
    code = "import sys, numoe; assert 'torch' not in sys.modules; print(numoe.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
