"""GGUF files: metadata and memory-mapped tensor views.

`open_gguf` validates the whole header with a small bounded parser of its own (the
`gguf` package's reader walks arrays element by element, which is slow for 150k-token
vocabularies, and trusts lengths and counts from the file). Every length, count, type and
offset is checked against the file size before it is used, so a truncated or hostile
file gives a one-line `GGUFError` naming the file and the key or tensor at fault, never a
crash, a hang or a huge allocation. Tensor bytes are never read at open: `TensorInfo.data`
is a view into one `np.memmap` of the file.

Split models (llama.cpp's gguf-split: `PREFIX-00001-of-00009.gguf` ...; every shard a whole
GGUF file with the keys split.no (u16, 0-based), split.count (u16) and split.tensors.count
(i32, all shards' tensors); the first shard holds all the model's metadata, the others only
the split.* keys and their tensors) open as one `GGUFFile`: each shard is mapped in place
and its tensors are views into its own map. `open_gguf` takes the first shard, a later one
(the set is opened from its first shard, found by the name), or a directory holding one
model's files. A missing, extra or mismatched shard is a GGUFError naming the file.

Only little-endian GGUF v2/v3 files are supported.
"""

from __future__ import annotations

import itertools
import re
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from gguf.constants import GGML_QUANT_SIZES

from .. import _cpu
from ..quote import quote

QT = gguf.GGMLQuantizationType
VT = gguf.GGUFValueType

# The weight formats numoe's CPU kernels read (csrc/quant/registry.cpp is the one list).
SUPPORTED_TYPES: frozenset[QT] = frozenset(QT(t) for t in _cpu.weight_types())

MAX_DIMS = 4  # GGML_MAX_DIMS
DEFAULT_ALIGNMENT = 32

# value type -> (struct format, numpy dtype); BOOL is read as a byte and compared to 0
_SCALARS: dict[int, tuple[str, str]] = {
    VT.UINT8: ("<B", "<u1"),
    VT.INT8: ("<b", "<i1"),
    VT.UINT16: ("<H", "<u2"),
    VT.INT16: ("<h", "<i2"),
    VT.UINT32: ("<I", "<u4"),
    VT.INT32: ("<i", "<i4"),
    VT.FLOAT32: ("<f", "<f4"),
    VT.BOOL: ("<B", "<u1"),
    VT.UINT64: ("<Q", "<u8"),
    VT.INT64: ("<q", "<i8"),
    VT.FLOAT64: ("<d", "<f8"),
}
_INT_TYPES = frozenset(
    {VT.UINT8, VT.INT8, VT.UINT16, VT.INT16, VT.UINT32, VT.INT32, VT.UINT64, VT.INT64}
)
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

# smallest possible encodings, used to reject impossible counts before looping
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, 1-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset


class GGUFError(ValueError):
    """A GGUF file is unreadable, or lacks a key/tensor a caller needs.

    The message names the file and the key or tensor at fault."""


REQUIRED: Any = object()  # sentinel: `get(key)` without a default raises on a missing key


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order: rows first, i.e. reversed GGUF ne[]
    qtype: gguf.GGMLQuantizationType
    # raw bytes, a view into the file's memmap (no copy): uint8 of shape
    # shape[:-1] + (bytes per row,), i.e. rows of whole quantization blocks
    data: np.ndarray
    offset: int = 0  # absolute byte offset of the data in its file
    shard: int = 0  # which file of a split model holds it (index into GGUFFile.paths)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True, eq=False)
class GGUFShard:
    """One file of a model: its own header and map (a later shard's meta: only split.*)."""

    path: Path
    version: int
    meta: dict[str, Any]
    tensors: dict[str, TensorInfo]
    map: np.memmap
    alignment: int
    data_offset: int

    @property
    def size(self) -> int:
        return int(self.map.size)


class GGUFFile:
    """Metadata (`meta`, plain Python values) and tensor views of a GGUF model: one file, or
    the shards of a split model (`shards`; `meta` is the first shard's, `tensors` all of
    theirs, each a view into its own shard's map)."""

    def __init__(self, shards: list[GGUFShard], tensors: dict[str, TensorInfo] | None = None):
        first = shards[0]
        self.shards = shards
        self.path = first.path  # the file (a split model: its first shard)
        self.paths = [s.path for s in shards]
        self.maps = [s.map for s in shards]  # one read-only memmap per file
        self.mmap = first.map  # the first (only) file's map; `maps` holds every shard's
        self.version = first.version
        self.meta = first.meta
        self.tensors = first.tensors if tensors is None else tensors
        self.alignment = first.alignment
        self.data_offset = first.data_offset  # of the first file
        self.file_size = sum(s.size for s in shards)  # bytes of all the files
        self.arch: str = self.meta["general.architecture"]
        # tensors of a type numoe cannot compute with: `tensor()` raises for these
        self.unsupported: dict[str, QT] = {
            n: t.qtype for n, t in self.tensors.items() if t.qtype not in SUPPORTED_TYPES
        }
        # called with each TensorInfo that `tensor()` hands out (load progress)
        self.on_tensor: Callable[[TensorInfo], None] | None = None

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r})"

    def get(self, key: str, default: Any = REQUIRED) -> Any:
        if key in self.meta:
            return self.meta[key]
        if default is REQUIRED:
            raise GGUFError(f"{self.path}: missing metadata key '{key}'")
        return default

    def arch_get(self, suffix: str, default: Any = REQUIRED) -> Any:
        return self.get(f"{self.arch}.{suffix}", default)

    def has(self, name: str) -> bool:
        """Whether the file holds tensor `name`."""
        return name in self.tensors

    def tensor(self, name: str, shape: tuple[int, ...] | None = None) -> TensorInfo:
        t = self.tensors.get(name)
        if t is None:
            raise GGUFError(f"{self.path}: missing tensor '{name}'")
        if t.qtype not in SUPPORTED_TYPES:
            raise GGUFError(_unsupported_msg(self.path, name, t.qtype))
        if shape is not None and tuple(int(s) for s in shape) != t.shape:
            raise GGUFError(
                f"{self.path}: tensor '{name}' has shape {t.shape}, expected {tuple(shape)}"
            )
        if self.on_tensor is not None:
            self.on_tensor(t)
        return t

    def check_supported(self) -> None:
        """Raise GGUFError listing every tensor of a type numoe does not support."""
        if self.unsupported:
            items = ", ".join(
                f"{quote(n)} ({q.name})" for n, q in list(self.unsupported.items())[:5]
            )
            more = len(self.unsupported) - 5
            more_s = f" and {more} more" if more > 0 else ""
            raise GGUFError(
                f"{self.path}: unsupported tensor types: {items}{more_s}; supported: "
                + ", ".join(sorted(q.name for q in SUPPORTED_TYPES))
            )

    def describe(self) -> str:
        counts = Counter(t.qtype.name for t in self.tensors.values())
        types = ", ".join(f"{n} {k}" for k, n in counts.most_common())
        nbytes = sum(t.nbytes for t in self.tensors.values())
        files = f" in {len(self.shards)} files" if len(self.shards) > 1 else ""
        return (
            f"{self.path.name}: {self.arch}, GGUF v{self.version}, {len(self.meta)} keys, "
            f"{len(self.tensors)} tensors ({types}), {nbytes / 2**30:.2f} GiB of tensor data"
            f"{files}"
        )


def _unsupported_msg(path: Path, name: str, qtype: QT) -> str:
    return (
        f"{path}: tensor {quote(name)} has type {qtype.name}, which numoe does not support "
        f"(supported: {', '.join(sorted(q.name for q in SUPPORTED_TYPES))})"
    )


class _Parser:
    """Bounded little-endian reader over the memmap; every read is checked first."""

    def __init__(self, path: Path, buf: memoryview, size: int):
        self.path = path
        self.buf = buf
        self.size = size
        self.off = 0
        self.where = "header"

    def fail(self, msg: str) -> GGUFError:
        return GGUFError(f"{self.path}: {msg}")

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.off:
            raise self.fail(
                f"truncated header while reading {self.where}: {what} needs {n} bytes at "
                f"offset {self.off}, file size {self.size}"
            )

    def u32(self, what: str) -> int:
        self.need(4, what)
        v = _U32.unpack_from(self.buf, self.off)[0]
        self.off += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        v = _U64.unpack_from(self.buf, self.off)[0]
        self.off += 8
        return v

    def raw_str(self, what: str) -> bytes:
        n = self.u64(f"{what} length")
        self.need(n, f"{what} of length {n}")
        b = bytes(self.buf[self.off : self.off + n])
        self.off += n
        return b

    def name_str(self, what: str) -> str:
        b = self.raw_str(what)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{self.where}: {what} is not valid UTF-8 ({b[:40]!r})") from None

    def value_type(self, what: str) -> int:
        t = self.u32(what)
        if t not in _SCALARS and t not in (VT.STRING, VT.ARRAY):
            raise self.fail(f"{self.where}: unknown {what} {t}")
        return t

    def value(self, vtype: int) -> Any:
        if vtype == VT.STRING:
            return self.raw_str("string").decode("utf-8", errors="replace")
        if vtype == VT.ARRAY:
            return self.array()
        fmt, _ = _SCALARS[vtype]
        n = struct.calcsize(fmt)
        self.need(n, VT(vtype).name.lower())
        v = struct.unpack_from(fmt, self.buf, self.off)[0]
        self.off += n
        return bool(v) if vtype == VT.BOOL else v

    def array(self) -> list[Any]:
        itype = self.value_type("array element type")
        if itype == VT.ARRAY:
            raise self.fail(f"{self.where}: nested arrays are not supported")
        count = self.u64("array length")
        if itype == VT.STRING:
            self.need(count * 8, f"array of {count} strings")
            out = []
            buf, size, unpack = self.buf, self.size, _U64.unpack_from
            off = self.off
            for i in range(count):
                if off + 8 > size:
                    self.off = off
                    self.need(8, f"string #{i} length")
                n = unpack(buf, off)[0]
                off += 8
                if n > size - off:
                    self.off = off
                    self.need(n, f"string #{i} of length {n}")
                out.append(bytes(buf[off : off + n]).decode("utf-8", errors="replace"))
                off += n
            self.off = off
            return out
        fmt, dt = _SCALARS[itype]
        item = struct.calcsize(fmt)
        self.need(count * item, f"array of {count} {VT(itype).name.lower()}")
        a = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.off)
        self.off += count * item
        if itype == VT.BOOL:
            return (a != 0).tolist()
        return a.tolist()


# gguf-split's file names (llama.cpp's llama_split_path: "%s-%05d-of-%05d.gguf", 1-based)
_SHARD_NAME = re.compile(r"(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf")


def shard_name(prefix: str, no: int, count: int) -> str:
    """The file name of shard `no` (0-based) of `count`, as gguf-split writes it."""
    return f"{prefix}-{no + 1:05d}-of-{count:05d}.gguf"


def _shard_prefix(name: str, no: int, count: int) -> str | None:
    """llama.cpp's llama_split_prefix: the prefix when `name` ends in shard_name's suffix."""
    suffix = shard_name("", no, count)
    return name[: -len(suffix)] if len(name) > len(suffix) and name.endswith(suffix) else None


def open_gguf(path: str | Path) -> GGUFFile:
    """Open a GGUF model memory-mapped; validate its header, counts, offsets and bounds.

    `path` is a GGUF file, any shard of a split model (the set is opened from its first
    shard) or a directory holding one model (one .gguf file, or one split set)."""
    p = Path(path)
    if not p.exists():
        raise GGUFError(f"{p}: no such file")
    folder = None
    if p.is_dir():
        folder, p = p, _model_in_dir(p)
    first = _open_file(p, 0)
    split = _split_keys(first)
    if split is not None and split[0] != 0:
        p = _first_shard_of(first, *split)
        first = _open_file(p, 0)
        split = _split_keys(first)
        if split is None or split[0] != 0:
            raise GGUFError(f"{p}: not the first shard of a split model (split.no, split.count)")
    if "general.architecture" not in first.meta:
        raise GGUFError(f"{p}: missing metadata key 'general.architecture'")
    shards, tensors = [first], dict(first.tensors)
    if split is not None:
        _, count, n_total = split
        prefix = _shard_prefix(p.name, 0, count)
        if prefix is None:
            raise GGUFError(
                f"{p}: shard 1 of a {count}-file split model, but its name does not end in "
                f"-00001-of-{count:05d}.gguf, so its other shards cannot be found (gguf-split "
                f"names them PREFIX-00001-of-{count:05d}.gguf, PREFIX-00002-of-{count:05d}.gguf ...)"
            )
        where = {n: p for n in tensors}
        for no in range(1, count):
            q = p.with_name(shard_name(prefix, no, count))
            if not q.is_file():
                raise GGUFError(f"{q}: missing shard {no + 1} of {count} ({p.name} is shard 1)")
            sh = _open_file(q, no)
            _check_shard(sh, no, count, n_total, first)
            for name in sh.tensors:
                if name in where:
                    raise GGUFError(f"{q}: tensor {quote(name)} is also in {where[name]}")
                where[name] = q
            tensors |= sh.tensors
            shards.append(sh)
        if len(tensors) != n_total:
            raise GGUFError(
                f"{p}: split.tensors.count is {n_total}, but the {count} shards hold "
                f"{len(tensors)} tensors"
            )
    g = GGUFFile(shards, tensors)
    if folder is not None:
        mine = {q.resolve() for q in g.paths}
        extra = [q for q in _gguf_files(folder) if q.resolve() not in mine]
        if extra:
            raise GGUFError(
                f"{extra[0]}: not a file of the model {p.name}, but in its directory: a "
                "directory must hold one model's files only (or pass -m the model's file)"
            )
    return g


def _gguf_files(folder: Path) -> list[Path]:
    """The .gguf files in a directory (not hidden ones), sorted by name."""
    return sorted(
        q
        for q in folder.iterdir()
        if q.suffix == ".gguf" and not q.name.startswith(".") and q.is_file()
    )


def _model_in_dir(folder: Path) -> Path:
    """The file to open for the model in `folder`: its one .gguf file, or the first shard of
    its one split set."""
    try:
        files = _gguf_files(folder)
    except OSError as e:
        raise GGUFError(f"{folder}: cannot list the directory: {e}") from e
    if not files:
        raise GGUFError(f"{folder}: is a directory without a .gguf file")
    if len(files) == 1:
        return files[0]
    firsts = [q for q in files if (m := _SHARD_NAME.fullmatch(q.name)) and int(m["no"]) == 1]
    if len(firsts) == 1:
        return firsts[0]
    names = ", ".join(q.name for q in (firsts or files)[:4])
    more = len(firsts or files) - 4
    raise GGUFError(
        f"{folder}: is a directory with "
        + (f"{len(firsts)} first shards" if firsts else f"{len(files)} .gguf files")
        + f" ({names}{f' and {more} more' if more > 0 else ''}), not one model: pass -m the "
        "model's file (a split model: its -00001-of-N.gguf)"
    )


def _split_keys(sh: GGUFShard) -> tuple[int, int, int] | None:
    """(split.no, split.count, split.tensors.count) of a shard of a split model; None for a
    whole file (no split.count, or 0 or 1: gguf-split --merge writes 0)."""
    count = sh.meta.get("split.count")
    if count is None:
        return None
    if not _is_int(count) or not 0 <= count <= 0xFFFF:
        raise GGUFError(f"{sh.path}: split.count {count!r} is not a u16 count")
    if count <= 1:
        return None
    no = sh.meta.get("split.no")
    if no is None:
        raise GGUFError(f"{sh.path}: split.count {count} but no split.no (the shard's number)")
    if not _is_int(no) or not 0 <= no < count:
        raise GGUFError(f"{sh.path}: split.no {no!r} is not a shard number of split.count {count}")
    n = sh.meta.get("split.tensors.count")
    if not _is_int(n) or n < 0:
        what = "no split.tensors.count" if n is None else f"split.tensors.count {n!r}"
        raise GGUFError(f"{sh.path}: shard {no + 1} of a {count}-file split model with {what}")
    return no, count, n


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _first_shard_of(sh: GGUFShard, no: int, count: int, _n: int) -> Path:
    """The first shard's path, from a later shard's name."""
    prefix = _shard_prefix(sh.path.name, no, count)
    if prefix is None:
        raise GGUFError(
            f"{sh.path}: shard {no + 1} of a {count}-file split model, and its name does not "
            f"end in -{no + 1:05d}-of-{count:05d}.gguf: open its first shard"
        )
    q = sh.path.with_name(shard_name(prefix, 0, count))
    if not q.is_file():
        raise GGUFError(f"{q}: missing shard 1 of {count} ({sh.path.name} is shard {no + 1})")
    return q


def _check_shard(sh: GGUFShard, no: int, count: int, n_total: int, first: GGUFShard) -> None:
    """Shard `no` of the set whose first shard is `first`: its split.* keys must agree."""
    split = _split_keys(sh)
    if split is None:
        c = sh.meta.get("split.count")
        what = "no split.count" if c is None else f"split.count {c}"
        raise GGUFError(f"{sh.path}: {what}, but {first.path.name} says the model is {count} files")
    got_no, got_count, got_n = split
    if got_count != count:
        raise GGUFError(f"{sh.path}: split.count {got_count}, but {first.path.name} says {count}")
    if got_no != no:
        raise GGUFError(
            f"{sh.path}: split.no {got_no} (shard {got_no + 1}), but its name makes it shard "
            f"{no + 1} of {count}"
        )
    if got_n != n_total:
        raise GGUFError(
            f"{sh.path}: split.tensors.count {got_n}, but {first.path.name} says {n_total}: "
            "a shard of another model"
        )
    arch, want = sh.meta.get("general.architecture"), first.meta["general.architecture"]
    if arch is not None and arch != want:
        raise GGUFError(
            f"{sh.path}: architecture {quote(arch)}, but {first.path.name} is {quote(want)}: a "
            "shard of another model"
        )


def _open_file(p: Path, index: int) -> GGUFShard:
    """Map and parse one GGUF file (shard `index` of its model)."""
    if p.is_dir():
        raise GGUFError(f"{p}: is a directory, not a GGUF file")
    try:
        size = p.stat().st_size
        if size == 0:
            raise GGUFError(f"{p}: empty file, not a GGUF file")
        mm = np.memmap(p, dtype=np.uint8, mode="r")
    except GGUFError:
        raise
    except (OSError, ValueError) as e:
        raise GGUFError(f"{p}: cannot map file: {e}") from e
    buf = memoryview(mm)
    try:
        return _parse(p, mm, buf, size, index)
    except GGUFError:
        raise
    except Exception as e:  # any escape from the parser is a bad file, not a crash
        raise GGUFError(f"{p}: corrupt GGUF header ({type(e).__name__}: {e})") from e
    finally:
        buf.release()


def _parse(p: Path, mm: np.memmap, buf: memoryview, size: int, index: int = 0) -> GGUFShard:
    r = _Parser(p, buf, size)
    magic = bytes(buf[:4])
    if magic != b"GGUF":
        raise r.fail(f"not a GGUF file (magic {magic!r})")
    r.off = 4
    version = r.u32("version")
    if version not in (2, 3):
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        if version & 0xFFFF == 0 and swapped in (2, 3):
            raise r.fail(
                f"big-endian GGUF (version {swapped} byte-swapped); only little-endian "
                "files are supported"
            )
        raise r.fail(f"unsupported GGUF version {version} (supported: 2, 3)")
    n_tensors = r.u64("tensor count")
    n_kv = r.u64("metadata key count")
    for count, what, least in (
        (n_kv, "metadata key count", _MIN_KV_BYTES),
        (n_tensors, "tensor count", _MIN_TENSOR_INFO_BYTES),
    ):
        if count * least > size - r.off:
            raise r.fail(
                f"{what} {count} is impossible: needs at least {count * least} bytes, "
                f"{size - r.off} left in the file (truncated or corrupt)"
            )

    meta: dict[str, Any] = {}
    vtypes: dict[str, int] = {}
    for i in range(n_kv):
        r.where = f"key #{i}"
        key = r.name_str("key")
        r.where = f"key #{i} ({quote(key)})"
        if key in meta:
            raise r.fail(f"duplicate metadata key {quote(key)}")
        vtype = r.value_type("value type")
        meta[key] = r.value(vtype)
        vtypes[key] = vtype

    arch = meta.get("general.architecture")
    if arch is None and not _split_file(meta):  # gguf-split's later shards have none
        raise r.fail("missing metadata key 'general.architecture'")
    if arch is not None and vtypes["general.architecture"] != VT.STRING:
        raise r.fail("general.architecture is not a string")
    alignment = meta.get("general.alignment", DEFAULT_ALIGNMENT)
    if "general.alignment" in meta and vtypes["general.alignment"] not in _INT_TYPES:
        raise r.fail("general.alignment is not an integer")
    if alignment <= 0 or alignment & (alignment - 1) or alignment > 1 << 30:
        raise r.fail(f"general.alignment {alignment} is not a power of two")

    infos: list[tuple[str, tuple[int, ...], QT, int, int]] = []
    names: set[str] = set()
    for i in range(n_tensors):
        r.where = f"tensor info #{i}"
        name = r.name_str("tensor name")
        r.where = f"tensor info #{i} ({quote(name)})"
        if name in names:
            raise r.fail(f"duplicate tensor {quote(name)}")
        names.add(name)
        n_dims = r.u32("n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise r.fail(f"tensor {quote(name)} has n_dims {n_dims} (must be 1..{MAX_DIMS})")
        ne = [r.u64(f"dim {d}") for d in range(n_dims)]
        n_el = 1
        for d in ne:
            if d == 0:
                raise r.fail(f"tensor {quote(name)} has a zero dimension (ne {ne})")
            n_el *= d
            if n_el >= 1 << 62:
                raise r.fail(f"tensor {quote(name)} dimensions {ne} overflow")
        type_id = r.u32("tensor type")
        try:
            qtype = QT(type_id)
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise r.fail(f"tensor {quote(name)} has unknown type id {type_id}") from None
        if ne[0] % block:
            raise r.fail(
                f"tensor {quote(name)} row length {ne[0]} is not a multiple of the "
                f"{qtype.name} block size {block}"
            )
        rel = r.u64("data offset")
        if rel % alignment:
            raise r.fail(
                f"tensor {quote(name)} data offset {rel} is not aligned to {alignment} bytes"
            )
        nbytes = n_el // block * type_size
        infos.append((name, tuple(reversed(ne)), qtype, rel, nbytes))

    data_offset = -(-r.off // alignment) * alignment
    spans = []
    tensors: dict[str, TensorInfo] = {}
    for name, shape, qtype, rel, nbytes in infos:
        start = data_offset + rel
        end = start + nbytes
        if end > size:
            raise r.fail(
                f"tensor {quote(name)} data [{start}, {end}) past end of file (size {size})"
            )
        spans.append((start, end, name))
        block, type_size = GGML_QUANT_SIZES[qtype]
        row_bytes = shape[-1] // block * type_size
        view = mm[start:end].reshape(shape[:-1] + (row_bytes,))
        tensors[name] = TensorInfo(name, shape, qtype, view, start, index)
    spans.sort()
    for (s0, e0, n0), (s1, _e1, n1) in itertools.pairwise(spans):
        if s1 < e0:
            raise r.fail(f"tensors {quote(n0)} [{s0}, {e0}) and {quote(n1)} (from {s1}) overlap")
    return GGUFShard(p, version, meta, tensors, mm, alignment, data_offset)


def _split_file(meta: dict[str, Any]) -> bool:
    """Whether the metadata is a shard's (split.count > 1; open_gguf checks the rest)."""
    count = meta.get("split.count")
    return _is_int(count) and count > 1


def dequantize(t: TensorInfo) -> torch.Tensor:
    """A float32 copy of tensor `t`, shape `t.shape` (GGUFError for unsupported types)."""
    q = t.qtype
    if q not in SUPPORTED_TYPES:
        raise GGUFError(f"tensor {quote(t.name)} has type {q.name}, which numoe does not support")
    flat = t.data.reshape(-1)
    if q == QT.F32:
        out = torch.from_numpy(np.array(flat.view("<f4")))
    elif q == QT.F16:
        out = torch.from_numpy(np.array(flat.view("<f2"))).float()
    elif q == QT.BF16:
        out = torch.from_numpy(np.array(flat.view("<i2"))).view(torch.bfloat16).float()
    else:
        out = torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(t.data, q), np.float32))
    return out.reshape(t.shape)
