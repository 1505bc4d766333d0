"""Node memory and page placement: NUMA-placed buffers, where a file's pages are, prefault.

The C++ side (``csrc/numa_mem.*``, in ``numoe._cpu``):

- ``NodeBuffer(bytes, node, strict=False)``: anonymous memory on one NUMA node (mbind by system
  call when the kernel allows it, first touch from threads pinned to the node's CPUs always),
  2 MiB aligned; ``.array`` is a uint8 view; ``.how`` says how it was placed.
- ``node_allocated()``: the allocator's own accounting, node -> bytes mapped by live buffers.
- ``pages_per_node(a, map_cached=False)``: where the pages of a uint8 array are (move_pages in
  query mode; mincore when that is refused), node -> bytes plus ``NOT_RESIDENT``.
- ``release_file_pages(a)``: drop the pages of a read-only file mapping from RSS after a copy.
- ``prefault(g)``: map a whole GGUF model (every file of a split one) now (llama.cpp's
  MAP_POPULATE) when it fits in memory.

This module names the special keys and builds the placement report of a GGUF file.
"""

from __future__ import annotations

import os

import numpy as np

from .. import _cpu
from ..gguf import GGUFFile, open_gguf
from .machine import mem_available

NodeBuffer = _cpu.NodeBuffer
node_allocated = _cpu.node_allocated
node_memory = _cpu.node_memory

NOT_RESIDENT = "not resident"
UNKNOWN_NODE = "unknown node"
_NAMES = {_cpu.NOT_RESIDENT: NOT_RESIDENT, _cpu.UNKNOWN_NODE: UNKNOWN_NODE}


def _bytes_view(a) -> np.ndarray:
    """A C-contiguous array as flat uint8 (no copy); ValueError for a strided one."""
    a = np.asarray(a)
    if not a.flags.c_contiguous:
        raise ValueError("pages_per_node/release: the array must be C-contiguous")
    return a.reshape(-1).view(np.uint8)


def _named(d: dict[int, int]) -> dict:
    return {_NAMES.get(k, k): v for k, v in d.items()}


def pages_per_node(a, map_cached: bool = False) -> dict:
    """{node: bytes, "not resident": bytes[, "unknown node": bytes]} for the bytes of array `a`
    (the values add up to a.nbytes). map_cached: also count page-cache pages of a file mapping
    that this process has not mapped yet (reads one byte of each; no disk reads)."""
    return _named(_cpu.pages_per_node(_bytes_view(a), map_cached))


def prefault(g) -> bool:
    """Map every page of GGUF model `g` (every file of a split model: `g.maps`) into this
    process now (MADV_POPULATE_READ, else one read per page on the pool), reading from disk
    what is not cached, when the files fit in the available memory; False when they do not
    (pages then come in on first use)."""
    avail = mem_available()
    if avail is not None and g.file_size > avail * 0.9:
        return False
    for m in g.maps:
        _cpu.prefault_pages(_bytes_view(m))
    return True


def release(a) -> int:
    """Drop the whole pages inside `a` (a view of a read-only file memmap) from this process's
    resident memory; returns the bytes released. ValueError for anything else."""
    return _cpu.release_file_pages(_bytes_view(a))


def placement(g, select=None, map_cached: bool = False) -> dict:
    """Placement report of a GGUF file's weights: {node: bytes, "not resident": bytes, ...} over
    every tensor (or those whose name `select(name)` accepts).

    `g` is a path (what ``open_gguf`` takes) or an open ``GGUFFile``; a split model's
    tensors are in all its files. For an open (loaded) file this is where this process
    has the weights (policy off: the memory map). For a path the file is mapped afresh, so pass
    map_cached=True to see where the page cache holds it (``numoe doctor -m``).
    """
    if not isinstance(g, GGUFFile):
        g = open_gguf(os.fspath(g))
    out: dict = {}
    for name, t in g.tensors.items():
        if select is not None and not select(name):
            continue
        for k, v in pages_per_node(t.data, map_cached).items():
            out[k] = out.get(k, 0) + v
    return dict(sorted(out.items(), key=lambda kv: (isinstance(kv[0], str), str(kv[0]))))


def format_placement(p: dict) -> str:
    """'0.5 GiB on node 0, 1.2 GiB not resident' (MiB below 1 GiB)."""

    def size(n: int) -> str:
        return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"

    parts = [
        f"{size(v)} on node {k}" if isinstance(k, int) else f"{size(v)} {k}" for k, v in p.items()
    ]
    return ", ".join(parts) if parts else "no weights"
