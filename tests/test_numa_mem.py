"""Node memory (csrc/numa_mem.*, numoe.runtime.memory): NodeBuffer placement and the allocator's
accounting, page placement queries on anonymous and file memory, releasing file pages from
RSS, and the placement report of a GGUF file. Must pass on one node, without libnuma, and where
mbind / move_pages are refused (containers): the code falls back, the tests accept either."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

from numoe import _cpu
from numoe.runtime import memory, pool
from numoe.runtime.memory import NOT_RESIDENT, UNKNOWN_NODE, NodeBuffer

MiB = 1 << 20
NODES = sorted(_cpu.node_memory())
NODE = NODES[0]


def rss() -> int:
    """Resident bytes of this process (/proc/self/statm, field 2)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def on_node(p: dict, node: int) -> int:
    """Bytes placed on `node`; on a machine with several nodes where move_pages is refused,
    resident pages have no node (UNKNOWN_NODE) and count here too."""
    return p.get(node, 0) + (p.get(UNKNOWN_NODE, 0) if len(NODES) > 1 else 0)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "w.bin"
    np.random.default_rng(0).integers(0, 256, 32 * MiB, dtype=np.uint8).tofile(path)
    return path


# --- NodeBuffer ----------------------------------------------------------------------------


@pytest.mark.parametrize("groups", [None, "two"])
def test_node_buffer_is_on_its_node(groups):
    cpus = sorted(_cpu.sched_getaffinity())
    if groups == "two":  # first touch by the pool's pinned workers of the node
        _cpu.set_threads([[cpus[0]], cpus[1:]] if len(cpus) > 1 else [[cpus[0]]])
    try:
        before = _cpu.node_allocated().get(NODE, 0)
        b = NodeBuffer(4 * MiB + 5, NODE)
        assert b.nbytes == 4 * MiB + 5 and b.mapped == 6 * MiB and b.node == NODE
        assert b.address % (2 * MiB) == 0
        assert b.how in ("mbind+touch", "first-touch")
        assert b.bound == (b.mbind_error == "") and (b.how == "mbind+touch") == b.bound
        a = b.array
        assert a.dtype == np.uint8 and a.shape == (4 * MiB + 5,) and not a.any()  # zeroed
        a[:] = 7
        assert int(a[-1]) == 7
        p = memory.pages_per_node(a)
        assert sum(p.values()) == a.nbytes
        assert on_node(p, NODE) == a.nbytes, p
        if len(NODES) == 1:
            assert p == {NODE: a.nbytes}
        assert _cpu.node_allocated()[NODE] == before + 6 * MiB
        del b
        gc.collect()
        assert _cpu.node_allocated()[NODE] == before + 6 * MiB  # the view keeps it alive
        del a
        gc.collect()
        assert _cpu.node_allocated().get(NODE, 0) == before
    finally:
        pool.set_threads(None)


def test_node_buffer_strict():
    b = NodeBuffer(1, NODE, strict=True)
    assert b.mapped == 2 * MiB and on_node(memory.pages_per_node(b.array), NODE) == 1


def test_node_buffer_bad_arguments():
    with pytest.raises(ValueError, match=r"node 999: this machine has nodes"):
        NodeBuffer(MiB, 999)
    with pytest.raises(ValueError, match=r"node -1"):
        NodeBuffer(MiB, -1)
    with pytest.raises(ValueError, match="bytes must be > 0"):
        NodeBuffer(0, NODE)
    with pytest.raises(ValueError, match="bytes must be > 0"):
        NodeBuffer(-5, NODE)
    with pytest.raises(ValueError, match="more than this machine's memory"):
        NodeBuffer(1 << 62, NODE)
    phys = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    with pytest.raises(ValueError, match="more than the memory available now"):
        NodeBuffer(phys, NODE)  # would end in the OOM killer: refused before mapping
    with pytest.raises(TypeError):
        NodeBuffer(1 << 70, NODE)  # does not fit in int64: nanobind refuses the argument
    assert NODE not in _cpu.node_allocated() or _cpu.node_allocated()[NODE] >= 0


def test_fallbacks_when_the_kernel_refuses(monkeypatch, data_file):
    # as under a container's seccomp profile: no mbind, no move_pages
    monkeypatch.setenv("NUMOE_NUMA_SYSCALLS", "off")
    b = NodeBuffer(3 * MiB, NODE)
    assert not b.bound and b.how == "first-touch" and "NUMOE_NUMA_SYSCALLS=off" in b.mbind_error
    p = memory.pages_per_node(b.array)  # mincore: resident, on the only node (one node)
    assert sum(p.values()) == b.nbytes and on_node(p, NODE) == b.nbytes, p
    m = np.memmap(data_file, dtype=np.uint8, mode="r")
    int(m[: 4 * MiB].sum())
    p = memory.pages_per_node(m[: 4 * MiB])
    assert on_node(p, NODE) == 4 * MiB, p
    memory.release(m)  # page-cache residency stays (mincore): only RSS drops
    assert sum(memory.pages_per_node(m).values()) == m.nbytes


# --- pages_per_node ------------------------------------------------------------------------


def test_file_pages_untouched_then_read(data_file):
    m = np.memmap(data_file, dtype=np.uint8, mode="r")
    assert memory.pages_per_node(m) == {NOT_RESIDENT: m.nbytes}  # nothing mapped yet
    part = m[12345 : 5 * MiB + 17]  # partial first and last pages count only their bytes
    int(part.sum())
    p = memory.pages_per_node(part)
    assert sum(p.values()) == part.nbytes and on_node(p, NODE) == part.nbytes, p
    int(m.sum())
    assert on_node(memory.pages_per_node(m), NODE) == m.nbytes


def test_file_pages_in_the_page_cache(data_file):
    # just written: the page cache holds the file; map_cached maps those pages to find them
    m = np.memmap(data_file, dtype=np.uint8, mode="r")
    p = memory.pages_per_node(m, map_cached=True)
    assert sum(p.values()) == m.nbytes
    assert on_node(p, NODE) > 0, p


def test_pages_per_node_edges():
    assert memory.pages_per_node(np.zeros(0, np.uint8)) == {}
    x = np.ones((64, 64), np.float32)
    assert sum(memory.pages_per_node(x).values()) == x.nbytes
    with pytest.raises(ValueError, match="C-contiguous"):
        memory.pages_per_node(x[:, ::2])


# --- release -------------------------------------------------------------------------------


def test_release_drops_rss(data_file):
    m = np.memmap(data_file, dtype=np.uint8, mode="r")
    int(m.sum())
    before = rss()
    assert memory.release(m) == m.nbytes
    after = rss()
    assert before - after >= 0.9 * m.nbytes, (before, after)
    assert memory.pages_per_node(m) == {NOT_RESIDENT: m.nbytes}
    assert int(m[:16].sum()) >= 0  # still mapped: re-reads fault the pages back in
    pg = os.sysconf("SC_PAGE_SIZE")
    assert memory.release(m[1 : 3 * pg + 1]) == 2 * pg  # whole pages inside only
    assert memory.release(m[1:100]) == 0


def test_release_refuses_memory_it_would_lose(data_file):
    with pytest.raises(ValueError, match="read-only file mapping"):
        memory.release(np.ones(8 * MiB, np.uint8))
    b = NodeBuffer(MiB, NODE)
    with pytest.raises(ValueError, match="read-only file mapping"):
        memory.release(b.array)
    w = np.memmap(data_file, dtype=np.uint8, mode="r+")
    with pytest.raises(ValueError, match="read-only file mapping"):
        memory.release(w)
    del w


# --- the placement report ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from numoe.synth import synth

    path = tmp_path_factory.mktemp("m") / "tiny.gguf"
    synth("tiny-qwen3moe", path, "Q8_0")
    return str(path)


def test_placement_of_a_gguf(tiny):
    from numoe.gguf import open_gguf

    g = open_gguf(tiny)
    total = sum(t.nbytes for t in g.tensors.values())
    p = memory.placement(g)  # only the pages shared with the header (just parsed) are in
    assert sum(p.values()) == total and p[NOT_RESIDENT] > 0, p
    for t in g.tensors.values():
        int(t.data.sum())
    p = memory.placement(g)
    assert on_node(p, NODE) == total, p
    experts = memory.placement(g, select=lambda n: "_exps" in n)
    assert 0 < sum(experts.values()) < total
    text = memory.format_placement(p)
    assert f"on node {NODE}" in text and "MiB" in text
    fresh = memory.placement(tiny, map_cached=True)  # a path: mapped afresh
    assert sum(fresh.values()) == total


def test_doctor_prints_the_page_cache(tiny, capsys):
    from numoe.cli import main

    assert main(["doctor", "-m", tiny]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "page cache now:" in x)
    assert "on node" in line or "not cached" in line


def test_prefault_maps_every_page(tmp_path):
    """memory.prefault: after it, no page of the file is missing from the process (the
    page-placement report's "not resident" is 0)."""
    from numoe.runtime import memory

    p = tmp_path / "f.bin"
    p.write_bytes(np.arange(3 << 20, dtype=np.uint32).tobytes()[: (3 << 20) * 4 - 100])
    mm = np.memmap(p, dtype=np.uint8, mode="r")
    assert memory.pages_per_node(mm).get("not resident", 0) > 0  # nothing touched yet
    assert _cpu.prefault_pages(mm) in (True, False)
    assert memory.pages_per_node(mm).get("not resident", 0) == 0
    assert int(mm[-1]) == np.frombuffer(p.read_bytes()[-1:], np.uint8)[0]

    class Huge:  # what prefault reads of a GGUFFile, larger than the available memory
        file_size = 1 << 60
        maps = (mm,)

    assert memory.prefault(Huge()) is False  # left alone: pages come in on first use


def test_load_prefaults_the_file(tiny_model):
    from numoe.gguf import open_gguf
    from numoe.models import load
    from numoe.runtime import memory

    g = open_gguf(tiny_model)
    load(g)
    assert memory.pages_per_node(g.mmap).get("not resident", 0) == 0
