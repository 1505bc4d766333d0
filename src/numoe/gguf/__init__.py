"""The GGUF file: reading it in place (`read`), writing it (`write`) and re-quantizing one
file into another with llama.cpp's per-tensor type mix (`quantize`)."""

from .read import (
    SUPPORTED_TYPES,
    GGUFError,
    GGUFFile,
    GGUFShard,
    TensorInfo,
    dequantize,
    open_gguf,
)

__all__ = [
    "SUPPORTED_TYPES",
    "GGUFError",
    "GGUFFile",
    "GGUFShard",
    "TensorInfo",
    "dequantize",
    "open_gguf",
]
