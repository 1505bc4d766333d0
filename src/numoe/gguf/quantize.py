"""`numoe quantize`: re-quantize a GGUF file into another with llama.cpp's per-tensor type
mix (`numoe.gguf.mix`).

`quantize_file` streams: one tensor at a time, in row chunks (dequantize with numoe's C++
kernels -> quantize), so memory stays ~ one chunk whatever the model size.
"""

from __future__ import annotations

import struct
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from .. import _cpu
from .mix import FTYPES, Q, V, check_ftype, plan, quantize_array
from .read import GGUFFile, _Parser, open_gguf
from .write import Raw, write_gguf

_CHUNK_ELEMENTS = 1 << 24  # rows per streamed chunk: ~64 MB of float32


def _kv_types(path: Path) -> dict[str, tuple[V, V | None]]:
    """Value type (and array element type) of every metadata key, as stored in the file."""
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    buf = memoryview(mm)
    try:
        r = _Parser(path, buf, int(mm.size))
        r.off = 8  # magic, version
        r.u64("tensor count")
        n_kv = r.u64("metadata key count")
        out: dict[str, tuple[V, V | None]] = {}
        for _ in range(n_kv):
            key = r.name_str("key")
            vt = r.value_type("value type")
            sub = V(struct.unpack_from("<I", buf, r.off)[0]) if vt == V.ARRAY else None
            r.value(vt)
            out[key] = (V(vt), sub)
        return out
    finally:
        buf.release()
        del mm


def _dequantize_rows(t, r0: int, r1: int) -> np.ndarray:
    """Rows [r0, r1) of tensor t (flattened to 2-D) as float32 [r1 - r0, cols]."""
    cols = t.shape[-1]
    raw = t.data.reshape(-1, t.data.shape[-1])[r0:r1]
    flat = np.ascontiguousarray(raw).reshape(-1)
    return np.asarray(_cpu.dequantize(int(t.qtype), flat, (r1 - r0) * cols)).reshape(r1 - r0, cols)


def _chunks(t, qtype: Q, n_threads: int) -> Callable[[], Iterator[np.ndarray]]:
    def gen() -> Iterator[np.ndarray]:
        cols = t.shape[-1]
        rows = t.n_elements // cols
        step = max(1, _CHUNK_ELEMENTS // cols)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            yield quantize_array(_dequantize_rows(t, r0, r1), qtype, n_threads)

    return gen


def quantize_file(
    src: str | Path | GGUFFile,
    dst: str | Path,
    ftype: str,
    n_threads: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Q]:
    """Re-quantize GGUF `src` to `dst` at file type `ftype` (one of numoe.gguf.mix.FTYPES).

    `src`: what open_gguf takes (a file, a split model's shard or directory) or an open
    GGUFFile; a split model is written as one file. All metadata (tokenizer included) is
    copied with its stored types; general.file_type and general.quantization_version are set;
    split.* keys are dropped. Returns name -> the type written. `progress(line)` is called
    once per tensor."""
    ftype = check_ftype(ftype)
    g = src if isinstance(src, GGUFFile) else open_gguf(src)
    dst = Path(dst)
    if dst.exists() and any(dst.resolve() == p.resolve() for p in g.paths):
        raise ValueError(f"output {dst} is an input file: choose another output path")
    g.check_supported()
    types = _kv_types(g.path)  # the first file's: it holds all the metadata
    meta: dict[str, Any] = {}
    for key, value in g.meta.items():
        if key.startswith("split.") or key in ("general.architecture", "general.file_type"):
            continue
        vt, sub = types[key]
        meta[key] = (value, sub if vt == V.ARRAY else vt)
    meta["general.file_type"] = (FTYPES[ftype][1], V.UINT32)
    meta["general.quantization_version"] = (gguf.GGML_QUANT_VERSION, V.UINT32)

    chosen = plan(g.arch, meta, {n: t.shape for n, t in g.tensors.items()}, ftype)
    tensors: dict[str, Raw] = {}
    written: dict[str, Q] = {}
    for name, t in g.tensors.items():
        q = chosen[name]
        if q is None or q == t.qtype:
            tensors[name] = Raw(t.shape, t.qtype, t.data)
            written[name] = t.qtype
        else:
            tensors[name] = Raw(t.shape, q, _chunks(t, q, n_threads))
            written[name] = q
    write_gguf(dst, g.arch, meta, tensors, ftype, progress=progress)
    return written


def quantize_cli(src: str, dst: str, ftype: str, n_threads: int = 0) -> None:
    """`numoe quantize`: quantize_file with progress and a summary on stderr. `src` may be a
    split model (any shard, or its directory): the output is one file."""
    src_p, dst_p = Path(src), Path(dst)
    ftype = check_ftype(ftype)
    if not src_p.exists():
        raise ValueError(f"{src}: no such file")
    if src_p.resolve() == dst_p.resolve():
        raise ValueError(f"output {dst} is the input file: choose another output path")
    if dst_p.parent and not dst_p.parent.exists():
        raise ValueError(f"{dst}: directory {dst_p.parent} does not exist")
    g = open_gguf(src_p)
    t0 = time.perf_counter()
    written = quantize_file(
        g, dst_p, ftype, n_threads, progress=lambda s: print(s, file=sys.stderr)
    )
    dt = time.perf_counter() - t0
    counts: dict[str, int] = {}
    for q in written.values():
        counts[q.name] = counts.get(q.name, 0) + 1
    mix = ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    a, b = g.file_size, dst_p.stat().st_size
    print(
        f"numoe: wrote {dst} ({ftype}): {len(written)} tensors ({mix}), "
        f"{a / 2**20:.1f} MiB -> {b / 2**20:.1f} MiB in {dt:.1f} s "
        f"({a / 2**20 / max(dt, 1e-9):.1f} MiB/s of input)",
        file=sys.stderr,
    )
