"""sysfs trees of real machine shapes for the NUMA plan and doctor tests, built in a temporary
directory (test_topology.make_sysfs writes them). Expected values are worked out by hand."""

from __future__ import annotations

from pathlib import Path

from test_topology import GiB_kB, make_sysfs


def two_sockets_32(root: Path) -> Path:
    """2 sockets x 32 cores x 2 threads, one node per socket, Intel numbering: CPUs 0-31 are
    socket 0's cores, 32-63 socket 1's, 64-95 / 96-127 their SMT siblings. 256 GiB a node."""
    cpus = {}
    for cpu in range(128):
        core = cpu % 64  # 0-31 socket 0, 32-63 socket 1
        pkg = core // 32
        cpus[cpu] = (pkg, core % 32, f"{core},{core + 64}")
    nodes = {
        0: ("0-31,64-95", 256 * GiB_kB, "10 21"),
        1: ("32-63,96-127", 256 * GiB_kB, "21 10"),
    }
    return make_sysfs(root, cpus, nodes)


def twenty_four_nodes(root: Path) -> Path:
    """2 sockets x 96 cores x 2 threads set to one NUMA node per 8 cores (12 per socket, the
    shape of a dual EPYC 9655 with one node per memory channel / CCD). AMD numbering: CPUs
    0-191 are the cores, 192-383 their siblings. 32 GiB a node; distance 12 within a
    socket, 32 across."""
    cpus = {}
    for cpu in range(384):
        core = cpu % 192
        cpus[cpu] = (core // 96, core % 96, f"{core},{core + 192}")
    nodes = {}
    for n in range(24):
        dist = " ".join("10" if m == n else "12" if m // 12 == n // 12 else "32" for m in range(24))
        cl = f"{8 * n}-{8 * n + 7},{192 + 8 * n}-{192 + 8 * n + 7}"
        nodes[n] = (cl, 32 * GiB_kB, dist)
    return make_sysfs(root, cpus, nodes)


def cpu_node_without_memory(root: Path) -> Path:
    """2 nodes x 4 cores, no SMT; node 1 has CPUs and no memory (DIMMs missing on socket 1)."""
    cpus = {cpu: (cpu // 4, cpu % 4, str(cpu)) for cpu in range(8)}
    nodes = {0: ("0-3", 64 * GiB_kB, "10 21"), 1: ("4-7", 0, "21 10")}
    return make_sysfs(root, cpus, nodes)


def memory_only_node(root: Path) -> Path:
    """1 socket x 4 cores x 2 threads on node 0 (16 GiB), plus node 1: 64 GiB and no CPUs
    (CXL memory, or HBM in flat mode)."""
    cpus = {cpu: (0, cpu % 4, f"{cpu % 4},{cpu % 4 + 4}") for cpu in range(8)}
    nodes = {0: ("0-7", 16 * GiB_kB, "10 14"), 1: ("", 64 * GiB_kB, "14 10")}
    return make_sysfs(root, cpus, nodes)


def one_node(root: Path, n_cores: int = 8, smt: bool = False) -> Path:
    """One socket, one node; n_cores cores (CPUs n..2n-1 their siblings when smt)."""
    n = n_cores
    cpus = {}
    for cpu in range(2 * n if smt else n):
        core = cpu % n
        cpus[cpu] = (0, core, f"{core},{core + n}" if smt else str(core))
    last = 2 * n - 1 if smt else n - 1
    return make_sysfs(root, cpus, {0: (f"0-{last}", 32 * GiB_kB, "10")})
