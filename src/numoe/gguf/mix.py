"""The per-tensor type mix of llama.cpp's file types, and the block quantizers that write it.

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
- Fallback when the row length is not a multiple of the chosen type's block (256 for the
  K types), as llama.cpp's tensor_type_fallback: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0
  (32-element blocks). Rows not a multiple of 32 either stay as stored (llama.cpp: F16).
- DeepSeek's MLA split tensors follow from these rules, as in llama.cpp: attn_k_b
  (rows of qk_nope_head_dim = 128) falls back (Q5_0 for Q4_K_M, Q5_1 for Q5_K_M, Q8_0 for
  Q6_K); attn_v_b (rows of kv_lora_rank = 512) takes the base type; the older combined
  attn_kv_b is in the attn_v group.
- A tensor whose chosen type equals its stored type is copied as is (no requantization).

"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np

from .. import _cpu
from .checks import describe

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
QUANTIZERS = frozenset({Q.Q4_0, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q4_1, Q.Q5_0, Q.Q5_1})
# llama.cpp's fallbacks for rows that are not a multiple of 256 (tensor_type_fallback)
_FALLBACK = {Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}


def check_ftype(ftype: str) -> str:
    f = ftype.upper()
    if f not in FTYPES:
        raise ValueError(f"unknown quantization type '{ftype}': use one of {', '.join(FTYPES)}")
    return f


def quantize_array(x: np.ndarray, qtype: Q, n_threads: int = 0) -> np.ndarray:
    """float32 array [..., cols] -> uint8 blocks [..., row bytes] of `qtype` (C++ quantizer)."""
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

    def count(key: str) -> int:  # from the file: an integer >= 0, or a one-line error
        v = plain(meta.get(key, 0))
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{key} is {describe(v)}; it must be an integer >= 0")
        return v

    n_layer = count(f"{arch}.block_count")
    if not n_layer:
        n_layer = 1 + max((_layer(n) for n in names), default=-1)
    n_expert = count(f"{arch}.expert_count")
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
