"""Write GGUF files (synth, the HF converter) with llama.cpp's conventions.

Tensors stream: each value may be an array or a `Lazy(shape, make)` that produces the
float32 array only when its turn to be written comes, so a model larger than RAM can be
written one tensor at a time; at most one encoded tensor is held at once. The file is
written under a temporary name and renamed into place when complete.

qtype is a file type: F32, F16, BF16, Q8_0, or (through numoe.gguf.mix, whose C++
quantizers encode every quantized type) one of llama.cpp's mixes Q2_K, Q3_K_S/M/L, Q4_0,
Q4_1, Q5_0, Q5_1, Q4_K_S/M, Q5_K_S/M, Q6_K (see numoe.gguf.mix). A value may also be `Raw(shape, qtype, data)`: bytes
already encoded (numoe quantize copies and re-quantizes through it), written as they are.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ..files import check_output_dir
from .mix import FTYPES, QUANTIZERS, quantize_array  # C++, ggml's reference algorithms
from .mix import plan as mix_plan

Q = gguf.GGMLQuantizationType
V = gguf.GGUFValueType
# file type -> the tensor type of its matrices (the base type of a mix)
WRITE_TYPES = {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16} | {k: v[0] for k, v in FTYPES.items()}
# file types whose tensors take llama.cpp's per-tensor mix (numoe.gguf.mix.plan); Q8_0 is
# Q8_0 throughout, as in llama.cpp, so it needs none
MIXES = frozenset(FTYPES) - {"Q8_0"}
FILE_TYPES = {  # general.file_type, as llama.cpp's LlamaFileType
    "F32": gguf.LlamaFileType.ALL_F32,
    "F16": gguf.LlamaFileType.MOSTLY_F16,
    "BF16": gguf.LlamaFileType.MOSTLY_BF16,
} | {k: gguf.LlamaFileType(v[1]) for k, v in FTYPES.items()}


@dataclass(frozen=True)
class Lazy:
    """A tensor made on demand: shape (numpy order) and a function returning float32."""

    shape: tuple[int, ...]
    make: Callable[[], np.ndarray]


@dataclass(frozen=True)
class Raw:
    """A tensor already encoded as `qtype`: its bytes (any array, e.g. a memmap view), or a
    function returning an iterable of byte arrays that together make them (streamed)."""

    shape: tuple[int, ...]
    qtype: Q
    data: np.ndarray | Callable[[], Iterable[np.ndarray]]


KeepF32 = Callable[[str, "np.ndarray | Lazy"], bool]


def tensor_type(
    name: str, value: np.ndarray | Lazy, qtype: Q, keep_f32: KeepF32 | None = None
) -> Q:
    """The stored type: 1-D tensors, rows that don't split into blocks and tensors
    `keep_f32(name, value)` chooses stay F32."""
    shape = tuple(value.shape)
    if qtype == Q.F32 or len(shape) < 2 or (keep_f32 is not None and keep_f32(name, value)):
        return Q.F32
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    return qtype if shape[-1] % block == 0 else Q.F32


def _encode(arr: np.ndarray, t: Q) -> np.ndarray:
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if t == Q.F32:
        return arr
    if t == Q.F16:
        return arr.astype(np.float16)
    if t in QUANTIZERS:
        return quantize_array(arr, t)  # uint8 bytes [.., row bytes]
    return gguf.quants.quantize(arr, t)


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _elem_type(key: str, items: list[Any]) -> V:
    """GGUF element type of a metadata list: str, bool, int (INT32, INT64 if needed),
    float (FLOAT32; ints mixed with floats count as floats)."""
    if all(isinstance(x, str) for x in items):
        return V.STRING
    if all(isinstance(x, bool) for x in items):
        return V.BOOL
    if all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        if all(-(2**31) <= x < 2**31 for x in items):
            return V.INT32
        return V.INT64
    if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in items):
        return V.FLOAT32
    kinds = sorted({type(x).__name__ for x in items})
    raise TypeError(f"metadata '{key}': a list must hold one kind of value, got {kinds}")


def _kv(key: str, value: Any) -> tuple[Any, V, V | None]:
    """(value, type, array element type) for one metadata value.

    int -> UINT32 (INT32 if negative; UINT64/INT64 outside 32 bits), float -> FLOAT32,
    bool, str, list/tuple/ndarray -> ARRAY. `(value, GGUFValueType.X)` forces the type;
    with a list value, X is the element type (or ARRAY to infer it)."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], V):
        value, vtype = value
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if isinstance(value, (list, tuple)):
            items = [_plain(x) for x in value]
            sub = _elem_type(key, items) if vtype == V.ARRAY and items else vtype
            return items, V.ARRAY, (V.INT32 if sub == V.ARRAY else sub)
        if vtype == V.ARRAY:
            raise TypeError(f"metadata '{key}': ARRAY needs a list value")
        return _plain(value), vtype, None
    value = _plain(value)
    if isinstance(value, bool):
        return value, V.BOOL, None
    if isinstance(value, int):
        if 0 <= value < 2**32:
            return value, V.UINT32, None
        if -(2**31) <= value < 0:
            return value, V.INT32, None
        if 0 <= value < 2**64:
            return value, V.UINT64, None
        if -(2**63) <= value < 2**63:
            return value, V.INT64, None
        raise OverflowError(f"metadata '{key}': {value} does not fit in 64 bits")
    if isinstance(value, float):
        return value, V.FLOAT32, None
    if isinstance(value, str):
        return value, V.STRING, None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        items = [_plain(x) for x in value]
        return items, V.ARRAY, (_elem_type(key, items) if items else V.INT32)
    raise TypeError(f"metadata '{key}': cannot store a {type(value).__name__}")


class _Writer(gguf.GGUFWriter):
    """GGUFWriter that also writes empty arrays (the package refuses them)."""

    def _pack_val(self, val: Any, vtype: V, add_vtype: bool, sub_type: V | None = None) -> bytes:
        if vtype == V.ARRAY and len(val) == 0:
            head = self._pack("I", vtype) if add_vtype else b""
            return head + self._pack("I", sub_type or V.INT32) + self._pack("Q", 0)
        return super()._pack_val(val, vtype, add_vtype, sub_type)

    def write_tensor_chunks(self, chunks: Iterable[np.ndarray], nbytes: int) -> None:
        """write_tensor_data for a tensor that arrives in pieces (a single output file)."""
        fout = self.fout[0]
        name = next(iter(self.tensors[0]))
        ti = self.tensors[0].pop(name)
        if ti.nbytes != nbytes:
            raise ValueError(f"tensor '{name}': {nbytes} bytes declared, {ti.nbytes} expected")
        self.write_padding(fout, fout.tell())
        n = 0
        for c in chunks:
            c = np.ascontiguousarray(c)
            c.tofile(fout)
            n += c.nbytes
        if n != nbytes:
            raise ValueError(f"tensor '{name}': wrote {n} bytes, expected {nbytes}")
        self.write_padding(fout, nbytes)
        self.state = gguf.gguf_writer.WriterState.WEIGHTS


def write_gguf(
    path: str | Path,
    arch: str,
    meta: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray | Lazy],
    qtype: str = "F32",
    keep_f32: KeepF32 | None = None,
    progress: Callable[[str], None] | None = None,
    on_tensor: Callable[[int, int, int, int], None] | None = None,
) -> None:
    """Write a GGUF file.

    meta: key -> value (int -> uint32, float -> float32, bool, str, lists of str/int
    (int32)/float (float32); or (value, GGUFValueType) to force a type).
    tensors: GGUF name -> float32 array (numpy order) or Lazy.
    qtype: F32, F16, BF16 or a file type of numoe.gguf.mix.FTYPES (any case);
    1-D tensors and rows not a multiple of the block stay F32, as does any tensor
    keep_f32(name, array_or_lazy) chooses (routers, as llama.cpp does). The types but Q8_0
    choose each tensor's type by llama.cpp's mix (numoe.gguf.mix.plan). Raw values keep
    their own type. progress(line), if given, is called after each tensor is written, and
    on_tensor(tensors written, tensors, bytes written, bytes) too.
    A missing output directory is a FileNotFoundError naming it; the temporary file is
    removed whatever ends the writing (an error, Ctrl-C)."""
    q = qtype.upper()
    if q not in WRITE_TYPES:
        raise ValueError(f"cannot write tensor type '{qtype}': use one of {', '.join(WRITE_TYPES)}")
    path = Path(path)
    check_output_dir(path)
    meta = dict(meta)
    meta.pop("general.architecture", None)  # from `arch`
    meta.setdefault("general.name", "numoe-synth")
    meta.setdefault("general.file_type", int(FILE_TYPES[q]))
    meta.setdefault("general.quantization_version", gguf.GGML_QUANT_VERSION)
    kvs = {key: _kv(key, value) for key, value in meta.items()}  # type errors before writing
    if "general.alignment" in kvs and kvs["general.alignment"][1:] != (V.UINT32, None):
        raise TypeError("metadata 'general.alignment' must be a uint32")

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    w = None
    try:
        w = _Writer(str(tmp), arch)
        for key, (value, vtype, sub) in kvs.items():
            w.add_key_value(key, value, vtype, sub_type=sub)
        if "general.alignment" in kvs:
            w.data_alignment = kvs["general.alignment"][0]

        mix = None
        if q in MIXES:
            shapes = {n: tuple(int(s) for s in v.shape) for n, v in tensors.items()}
            mix = mix_plan(arch, meta, shapes, q)
        plan = []  # (name, value, stored type)
        for name, value in tensors.items():
            shape = tuple(int(s) for s in value.shape)
            if not 1 <= len(shape) <= 4 or min(shape) < 1:
                raise ValueError(f"tensor '{name}': shape {shape} (need 1..4 dims, all > 0)")
            if isinstance(value, Raw):
                t = Q(value.qtype)
            elif mix is not None:
                keep = len(shape) < 2 or (keep_f32 is not None and keep_f32(name, value))
                t = Q.F32 if keep or mix[name] is None else mix[name]
            else:
                t = tensor_type(name, value, WRITE_TYPES[q], keep_f32)
            block, type_size = gguf.GGML_QUANT_SIZES[t]
            nbytes = int(np.prod(shape, dtype=np.int64)) // block * type_size
            dtype = {Q.F32: np.float32, Q.F16: np.float16}.get(t)
            if dtype is not None:
                w.add_tensor_info(name, shape, np.dtype(dtype), nbytes)
            else:  # element shape with raw_dtype: the writer stores it as given
                w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, t)
            plan.append((name, value, t))

        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        total = 0
        all_bytes = sum(
            int(np.prod(v.shape, dtype=np.int64))
            // gguf.GGML_QUANT_SIZES[t][0]
            * gguf.GGML_QUANT_SIZES[t][1]
            for _, v, t in plan
        )
        for i, (name, value, t) in enumerate(plan):
            block, type_size = gguf.GGML_QUANT_SIZES[t]
            nbytes = int(np.prod(value.shape, dtype=np.int64)) // block * type_size
            if isinstance(value, Raw):
                data = value.data
                w.write_tensor_chunks(data() if callable(data) else [data], nbytes)
            else:
                arr = value.make() if isinstance(value, Lazy) else value
                if tuple(arr.shape) != tuple(value.shape):
                    raise ValueError(
                        f"tensor '{name}': made shape {arr.shape}, declared {value.shape}"
                    )
                w.write_tensor_data(_encode(arr, t))
                del arr
            total += nbytes
            if progress is not None:
                progress(
                    f"[{i + 1}/{len(plan)}] {name} {list(value.shape)} -> {t.name}, "
                    f"{nbytes / 2**20:.2f} MiB (total {total / 2**20:.1f} MiB)"
                )
            if on_tensor is not None:
                on_tensor(i + 1, len(plan), total, all_bytes)
        w.close()
        os.replace(tmp, path)
    finally:
        try:
            if w is not None:
                w.close()
        finally:  # a second Ctrl-C in close() still removes it
            tmp.unlink(missing_ok=True)
