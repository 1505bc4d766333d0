"""Write GGUF files (synth, the HF converter) with llama.cpp's conventions.

Tensors stream: each value may be an array or a `Lazy(shape, make)` that produces the
float32 array only when its turn to be written comes, so a model larger than RAM can be
written one tensor at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType
WRITE_TYPES = {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16, "Q8_0": Q.Q8_0}
FILE_TYPES = {  # general.file_type, as llama.cpp's LlamaFileType
    "F32": gguf.LlamaFileType.ALL_F32,
    "F16": gguf.LlamaFileType.MOSTLY_F16,
    "BF16": gguf.LlamaFileType.MOSTLY_BF16,
    "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}


@dataclass(frozen=True)
class Lazy:
    """A tensor made on demand: shape (numpy order) and a function returning float32."""

    shape: tuple[int, ...]
    make: Callable[[], np.ndarray]


def tensor_type(name: str, shape: tuple[int, ...], qtype: Q, keep_f32=None) -> Q:
    """The stored type: 1-D tensors and rows that don't split into blocks stay F32."""
    if qtype == Q.F32 or len(shape) < 2 or (keep_f32 is not None and keep_f32(name, shape)):
        return Q.F32
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    return qtype if shape[-1] % block == 0 else Q.F32


def _encode(arr: np.ndarray, t: Q) -> np.ndarray:
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if t == Q.F32:
        return arr
    if t == Q.F16:
        return arr.astype(np.float16)
    return gguf.quants.quantize(arr, t)  # uint8 bytes [.., row bytes]


def _add_kv(w: gguf.GGUFWriter, key: str, value: Any) -> None:
    V = gguf.GGUFValueType
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], V):
        value, vtype = value
        if vtype == V.ARRAY:
            w.add_array(key, value)
        else:
            w.add_key_value(key, value, vtype)
    elif isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value) if 0 <= value < 2**32 else w.add_int64(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, str):
        w.add_string(key, value)
    elif isinstance(value, (list, tuple, np.ndarray)):
        w.add_array(key, list(value))
    else:
        raise TypeError(f"metadata '{key}': cannot store a {type(value).__name__}")


def write_gguf(
    path: str | Path,
    arch: str,
    meta: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray | Lazy],
    qtype: str = "F32",
    keep_f32: Callable[[str, tuple[int, ...]], bool] | None = None,
) -> None:
    """Write a GGUF file. meta: key -> value (int -> uint32, float -> float32, bool, str,
    lists; or (value, GGUFValueType) to force a type). tensors: GGUF name -> float32 array
    (numpy order) or Lazy. qtype: F32, F16, BF16 or Q8_0 for the matrices; keep_f32(name,
    shape) keeps chosen tensors at F32 (routers, as llama.cpp does)."""
    q = qtype.upper()
    if q not in WRITE_TYPES:
        raise ValueError(f"cannot write tensor type '{qtype}': use one of {', '.join(WRITE_TYPES)}")
    w = gguf.GGUFWriter(str(path), arch)
    meta = dict(meta)
    meta.setdefault("general.name", "numoe-synth")
    meta.setdefault("general.file_type", int(FILE_TYPES[q]))
    meta.setdefault("general.quantization_version", gguf.GGML_QUANT_VERSION)
    for key, value in meta.items():
        if key != "general.architecture":
            _add_kv(w, key, value)

    plan = []  # (name, value, stored type)
    for name, value in tensors.items():
        shape = tuple(value.shape)
        t = tensor_type(name, shape, WRITE_TYPES[q], keep_f32)
        if t in (Q.F32, Q.F16):
            dtype = np.float32 if t == Q.F32 else np.float16
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            w.add_tensor_info(name, shape, np.dtype(dtype), nbytes)
        else:
            bshape = gguf.quant_shape_to_byte_shape(shape, t)
            w.add_tensor_info(name, bshape, np.dtype(np.uint8), int(np.prod(bshape)), t)
        plan.append((name, value, t))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, value, t in plan:
        arr = value.make() if isinstance(value, Lazy) else value
        if tuple(arr.shape) != tuple(value.shape):
            raise ValueError(f"tensor '{name}': made shape {arr.shape}, declared {value.shape}")
        w.write_tensor_data(_encode(arr, t))
    w.close()
