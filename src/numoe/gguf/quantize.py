"""Quantize GGUF files (`numoe quantize`) and the per-tensor type mix of llama.cpp's file types.

The block quantizers are C++ (`numoe._cpu.quantize`, csrc/quantize/) with ggml's reference
algorithms, so a tensor quantized here has the bytes llama-quantize writes without an
importance matrix.

File types (`ftype`) and the mix, as llama.cpp's `llama_tensor_get_type` (src/llama-quant.cpp):

- Base type: Q4_K_M -> Q4_K, Q5_K_M -> Q5_K, Q6_K -> Q6_K, Q8_0 -> Q8_0, Q4_0 -> Q4_0.
- Not quantized, copied as stored (F32 in files numoe or llama.cpp write): 1-D tensors, names
  not ending in "weight" (e.g. exp_probs_b.bias), "*_norm.weight", routers
  ("ffn_gate_inp.weight").
- output.weight (and token_embd.weight when there is no output.weight, i.e. tied
  embeddings): Q6_K, unless the base is Q8_0 (stays Q8_0) or the row length is not a
  multiple of the base block (Q8_0).
- token_embd.weight (untied): the base type (Q4_K for Q4_K_M).
- attn_v.weight, attn_qkv.weight, attn_kv_b.weight (the "attn_v" group): Q6_K for Q4_K_M and
  Q5_K_M in the "use_more_bits" layers (i < n/8, i >= 7n/8, or (i - n/8) % 3 == 2, i the
  tensor's rank among the group, n the group's size); Q8_0 for every ftype when the model
  has exactly 8 experts (Mixtral). attn_k.weight: Q8_0 when 8 experts.
- ffn_down (ffn_down, ffn_down_exps, ffn_down_shexp): Q6_K for Q4_K_M and Q5_K_M in the
  use_more_bits layers (layer from the name, n = block_count).
- attn_output.weight: Q5_K for Q4_K_M when the model has 8 experts.
- Everything else: the base type.
- Fallback when the row length is not a multiple of the chosen type's block: llama.cpp uses
  Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0; numoe reads none of Q5_0/Q5_1, so it uses Q8_0
  for all three (bigger, never less precise). Rows not a multiple of 32 either stay as
  stored (llama.cpp: F16).
- DeepSeek's MLA split tensors follow from these rules, as in llama.cpp: attn_k_b
  (rows of qk_nope_head_dim = 128) falls back to Q8_0; attn_v_b (rows of kv_lora_rank = 512)
  takes the base type; the older combined attn_kv_b is in the attn_v group.
- A tensor whose chosen type equals its stored type is copied as is (no requantization).

`quantize_file` streams: one tensor at a time, in row chunks (dequantize with numoe's C++
kernels -> quantize), so memory stays ~ one chunk whatever the model size.
"""

from __future__ import annotations

import re
import struct
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType
V = gguf.GGUFValueType
FT = gguf.LlamaFileType

# ftype name -> (base tensor type, general.file_type)
FTYPES: dict[str, tuple[Q, int]] = {
    "Q4_K_M": (Q.Q4_K, int(FT.MOSTLY_Q4_K_M)),
    "Q5_K_M": (Q.Q5_K, int(FT.MOSTLY_Q5_K_M)),
    "Q6_K": (Q.Q6_K, int(FT.MOSTLY_Q6_K)),
    "Q8_0": (Q.Q8_0, int(FT.MOSTLY_Q8_0)),
    "Q4_0": (Q.Q4_0, int(FT.MOSTLY_Q4_0)),
}
# tensor types the C++ quantizers write
QUANTIZERS = frozenset({Q.Q4_0, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K})
# llama.cpp's fallbacks are Q5_0 / Q5_1 / Q8_0; numoe reads Q8_0 only of those
_FALLBACK = {Q.Q4_K: Q.Q8_0, Q.Q5_K: Q.Q8_0, Q.Q6_K: Q.Q8_0}
_CHUNK_ELEMENTS = 1 << 24  # rows per streamed chunk: ~64 MB of float32


def check_ftype(ftype: str) -> str:
    f = ftype.upper()
    if f not in FTYPES:
        raise ValueError(f"unknown quantization type '{ftype}': use one of {', '.join(FTYPES)}")
    return f


def quantize_array(x: np.ndarray, qtype: Q, n_threads: int = 0) -> np.ndarray:
    """float32 array [..., cols] -> uint8 blocks [..., row bytes] of `qtype` (C++ quantizer)."""
    from . import _cpu

    if qtype not in QUANTIZERS:
        raise ValueError(f"numoe cannot quantize to {Q(qtype).name}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 0:
        raise ValueError("cannot quantize a scalar")
    rows = x.reshape(-1, x.shape[-1])
    out = _cpu.quantize(int(qtype), rows, n_threads)
    return out.reshape(x.shape[:-1] + (out.shape[-1],))


# ---- the mix ----


@dataclass(frozen=True)
class MixInfo:
    n_layer: int
    n_expert: int
    attn_v_rank: dict[str, int]  # attn_v-group tensor -> its rank in layer order
    tied: bool  # no output.weight: token_embd is also the output head


_ATTN_V = ("attn_qkv.weight", "attn_kv_b.weight", "attn_v.weight")
_LAYER = re.compile(r"blk\.(\d+)\.")


def _layer(name: str) -> int:
    m = _LAYER.match(name)
    return int(m.group(1)) if m else -1


def mix_info(arch: str, meta: Mapping[str, Any], names: list[str]) -> MixInfo:
    def plain(v: Any) -> Any:  # metadata values may be (value, type) pairs
        return v[0] if isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], V) else v

    n_layer = int(plain(meta.get(f"{arch}.block_count", 0)) or 0)
    if not n_layer:
        n_layer = 1 + max((_layer(n) for n in names), default=-1)
    n_expert = int(plain(meta.get(f"{arch}.expert_count", 0)) or 0)
    group = sorted((n for n in names if any(k in n for k in _ATTN_V)), key=lambda n: (_layer(n), n))
    return MixInfo(
        n_layer=max(n_layer, 1),
        n_expert=n_expert,
        attn_v_rank={n: i for i, n in enumerate(group)},
        tied="output.weight" not in names,
    )


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's layers that get more bits: the first and last eighth, every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """Whether llama.cpp quantizes this tensor at all (else it is copied as stored)."""
    return (
        len(shape) >= 2
        and name.endswith("weight")
        and "_norm.weight" not in name
        and "ffn_gate_inp.weight" not in name
    )


def _block(t: Q) -> int:
    return gguf.GGML_QUANT_SIZES[t][0]


def tensor_type(name: str, shape: tuple[int, ...], ftype: str, info: MixInfo) -> Q | None:
    """The type `ftype` gives tensor `name` (numpy shape), or None: keep it as stored."""
    if not quantizable(name, shape):
        return None
    base = FTYPES[ftype][0]
    t = base
    cols = shape[-1]
    eight = info.n_expert == 8
    if name == "output.weight" or (info.tied and name == "token_embd.weight"):
        if cols % _block(base):
            t = Q.Q8_0
        elif base != Q.Q8_0:
            t = Q.Q6_K
    elif name == "token_embd.weight":
        pass
    elif any(k in name for k in _ATTN_V):
        i = info.attn_v_rank.get(name, 0)
        if ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, len(info.attn_v_rank)):
            t = Q.Q6_K
        if eight:
            t = Q.Q8_0
    elif "attn_k.weight" in name:
        if eight:
            t = Q.Q8_0
    elif "ffn_down" in name:
        i = max(_layer(name), 0)
        if ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, info.n_layer):
            t = Q.Q6_K
    elif "attn_output.weight" in name and eight and ftype == "Q4_K_M":
        t = Q.Q5_K
    if cols % _block(t):
        t = _FALLBACK.get(t)
        if t is None or cols % _block(t):
            return None
    return t


def plan(
    arch: str, meta: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], ftype: str
) -> dict[str, Q | None]:
    """tensor name -> type (None: keep as stored) for a whole model."""
    ftype = check_ftype(ftype)
    info = mix_info(arch, meta, list(shapes))
    return {n: tensor_type(n, tuple(s), ftype, info) for n, s in shapes.items()}


# ---- quantize_file ----


def _kv_types(path: Path) -> dict[str, tuple[V, V | None]]:
    """Value type (and array element type) of every metadata key, as stored in the file."""
    from .gguf import _Parser

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
    from . import _cpu

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
    src: str | Path,
    dst: str | Path,
    ftype: str,
    n_threads: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Q]:
    """Re-quantize GGUF `src` to `dst` at file type `ftype` (Q4_K_M, Q5_K_M, Q6_K, Q8_0, Q4_0).

    All metadata (tokenizer included) is copied with its stored types; general.file_type and
    general.quantization_version are set; split.* keys are dropped. Returns name -> the type
    written. `progress(line)` is called once per tensor."""
    from .gguf import GGUFError, open_gguf
    from .gguf_write import Raw, write_gguf

    ftype = check_ftype(ftype)
    src, dst = Path(src), Path(dst)
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"output {dst} is the input file: choose another output path")
    g = open_gguf(src)
    g.check_supported()
    types = _kv_types(src)
    meta: dict[str, Any] = {}
    for key, value in g.meta.items():
        if key.startswith("split.") or key in ("general.architecture", "general.file_type"):
            continue
        vt, sub = types[key]
        meta[key] = (value, sub if vt == V.ARRAY else vt)
    meta["general.file_type"] = (FTYPES[ftype][1], V.UINT32)
    meta["general.quantization_version"] = (gguf.GGML_QUANT_VERSION, V.UINT32)
    if g.get("split.count", 1) not in (0, 1):
        raise GGUFError(f"{src}: a split GGUF; merge it first with llama-gguf-split --merge")

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
    """`numoe quantize`: quantize_file with progress and a summary on stderr."""
    src_p, dst_p = Path(src), Path(dst)
    ftype = check_ftype(ftype)
    if not src_p.exists():
        raise ValueError(f"{src}: no such file")
    if src_p.resolve() == dst_p.resolve():
        raise ValueError(f"output {dst} is the input file: choose another output path")
    if dst_p.parent and not dst_p.parent.exists():
        raise ValueError(f"{dst}: directory {dst_p.parent} does not exist")
    t0 = time.perf_counter()
    written = quantize_file(
        src_p, dst_p, ftype, n_threads, progress=lambda s: print(s, file=sys.stderr)
    )
    dt = time.perf_counter() - t0
    counts: dict[str, int] = {}
    for q in written.values():
        counts[q.name] = counts.get(q.name, 0) + 1
    mix = ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    a, b = src_p.stat().st_size, dst_p.stat().st_size
    print(
        f"numoe: wrote {dst} ({ftype}): {len(written)} tensors ({mix}), "
        f"{a / 2**20:.1f} MiB -> {b / 2**20:.1f} MiB in {dt:.1f} s "
        f"({a / 2**20 / max(dt, 1e-9):.1f} MiB/s of input)",
        file=sys.stderr,
    )
