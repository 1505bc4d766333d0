"""The per-tensor type mix of llama.cpp's file types, and the block quantizers that write it.

The block quantizers are C++ (`numoe._cpu.quantize`, csrc/quantize/) with ggml's reference
algorithms, so a tensor quantized here has the bytes llama-quantize writes without an
importance matrix.

File types (`ftype`) and the mix, as llama.cpp's `llama_tensor_get_type_impl` and
`tensor_type_fallback` (src/llama-quant.cpp), without an importance matrix:

- Base type (llama_ftype_get_default_type): Q2_K -> Q2_K; Q3_K_S/M/L -> Q3_K; Q4_0, Q4_1,
  Q5_0, Q5_1, Q6_K, Q8_0 -> themselves; Q4_K_S/M -> Q4_K; Q5_K_S/M -> Q5_K.
  general.file_type is llama.cpp's LlamaFileType of the ftype.
- Not quantized, copied as stored (F32 in files numoe or llama.cpp write): 1-D tensors, names
  not ending in "weight" (e.g. exp_probs_b.bias), "*_norm.weight", routers
  ("ffn_gate_inp.weight").
- output.weight (and token_embd.weight when there is no output.weight, i.e. tied
  embeddings): Q6_K, unless the base is Q8_0 (stays Q8_0) or the row length is not a
  multiple of the base block (Q8_0).
- token_embd.weight (untied): the base type.
- The "attn_v" group (attn_v, attn_qkv, attn_kv_b; one counter i over the group in
  llama.cpp's tensor order, layer then name; n the group's size):
  Q2_K: Q4_K if n_gqa >= 4 else Q3_K (n_gqa = head_count // head_count_kv of layer 0);
  Q3_K_M: Q5_K for i < 2, else Q4_K; Q3_K_L: Q5_K; Q4_K_M, Q5_K_M: Q6_K where
  use_more_bits(i, n) (i < n/8, i >= 7n/8, or (i - n/8) % 3 == 2); Q4_K_S: Q5_K for i < 4.
  Then, every ftype: Q8_0 when the model has exactly 8 experts (Mixtral).
- attn_k.weight: Q8_0 when 8 experts. attn_q, ffn_gate*, ffn_up*: the base type (llama.cpp's
  rules for them are for IQ3 ftypes only).
- attn_output.weight: with 8 experts, Q5_K for Q2_K, Q3_K_S, Q3_K_M, Q4_K_S, Q4_K_M (Q3_K_L
  keeps Q3_K, as in llama.cpp); otherwise Q3_K for Q2_K, Q4_K for Q3_K_M, Q5_K for Q3_K_L.
- ffn_down (ffn_down, ffn_down_exps, ffn_down_shexp; i the layer from the name, n =
  block_count): Q2_K: Q3_K; Q3_K_M: Q5_K for i < n/16, else Q4_K; Q3_K_L: Q5_K; Q4_K_M,
  Q5_K_M: Q6_K where use_more_bits(i, n); Q4_K_S: Q5_K for i < n/8.
- Everything else: the base type.
- Fallback when the row length is not a multiple of the chosen type's block (256 for the
  K types), as tensor_type_fallback: Q2_K, Q3_K -> Q4_0; Q4_K -> Q5_0; Q5_K -> Q5_1;
  Q6_K -> Q8_0 (32-element blocks). Differences from llama.cpp, all for rows that are not a
  multiple of 32 (no model numoe runs has them): such a fallback stays as stored (llama.cpp:
  F16), and a Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 tensor stays as stored (llama.cpp: an error).
- Not ported (no architecture numoe runs reaches them): the Falcon rules, the LLM_TYPE_70B
  bump of attn_v, and the Q4_0/Q5_0 ffn_down rule that applies only with an imatrix.
- DeepSeek's MLA split tensors follow from these rules, as in llama.cpp: attn_k_b
  (rows of qk_nope_head_dim = 128) falls back (Q5_0 for Q4_K_M, Q5_1 for Q5_K_M, Q8_0 for
  Q6_K, Q4_0 for Q2_K/Q3_K); attn_v_b (rows of kv_lora_rank = 512) takes the base type;
  neither is in the attn_v group (new files have none); the older combined attn_kv_b is.
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

# ftype name -> (base tensor type, general.file_type): llama_ftype_get_default_type
FTYPES: dict[str, tuple[Q, int]] = {
    "Q2_K": (Q.Q2_K, int(FT.MOSTLY_Q2_K)),
    "Q3_K_S": (Q.Q3_K, int(FT.MOSTLY_Q3_K_S)),
    "Q3_K_M": (Q.Q3_K, int(FT.MOSTLY_Q3_K_M)),
    "Q3_K_L": (Q.Q3_K, int(FT.MOSTLY_Q3_K_L)),
    "Q4_0": (Q.Q4_0, int(FT.MOSTLY_Q4_0)),
    "Q4_1": (Q.Q4_1, int(FT.MOSTLY_Q4_1)),
    "Q5_0": (Q.Q5_0, int(FT.MOSTLY_Q5_0)),
    "Q5_1": (Q.Q5_1, int(FT.MOSTLY_Q5_1)),
    "Q4_K_S": (Q.Q4_K, int(FT.MOSTLY_Q4_K_S)),
    "Q4_K_M": (Q.Q4_K, int(FT.MOSTLY_Q4_K_M)),
    "Q5_K_S": (Q.Q5_K, int(FT.MOSTLY_Q5_K_S)),
    "Q5_K_M": (Q.Q5_K, int(FT.MOSTLY_Q5_K_M)),
    "Q6_K": (Q.Q6_K, int(FT.MOSTLY_Q6_K)),
    "Q8_0": (Q.Q8_0, int(FT.MOSTLY_Q8_0)),
}
# tensor types the C++ quantizers write
QUANTIZERS = frozenset(
    {Q.Q2_K, Q.Q3_K, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q8_0}
)
# llama.cpp's fallbacks for rows that are not a multiple of 256 (tensor_type_fallback)
_FALLBACK = {Q.Q2_K: Q.Q4_0, Q.Q3_K: Q.Q4_0, Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}


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
    n_gqa: int = 1  # head_count // head_count_kv (layer 0), 0 when head_count_kv is 0


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

    def heads(key: str, default: int) -> int:  # llama.cpp's n_gqa() reads layer 0's value
        v = plain(meta.get(key, default))
        if isinstance(v, (list, tuple, np.ndarray)) and len(v):
            v = plain(v[0])
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{key} is {describe(v)}; it must be an integer >= 0")
        return v

    n_head = heads(f"{arch}.attention.head_count", 0)
    n_head_kv = heads(f"{arch}.attention.head_count_kv", n_head)
    group = sorted((n for n in names if any(k in n for k in _ATTN_V)), key=lambda n: (_layer(n), n))
    return MixInfo(
        n_layer=max(n_layer, 1),
        n_expert=n_expert,
        attn_v_rank={n: i for i, n in enumerate(group)},
        tied="output.weight" not in names,
        n_gqa=n_head // n_head_kv if n_head_kv else 0,
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
    """The type `ftype` gives tensor `name` (numpy shape), or None: keep it as stored.

    llama.cpp's llama_tensor_get_type_impl for the ftypes of FTYPES, without an importance
    matrix, then tensor_type_fallback."""
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
        pass  # no rule for these ftypes: the base type
    elif any(k in name for k in _ATTN_V):  # attn_qkv, attn_kv_b, attn_v: one counter
        i, n = info.attn_v_rank.get(name, 0), len(info.attn_v_rank)
        if ftype == "Q2_K":
            t = Q.Q4_K if info.n_gqa >= 4 else Q.Q3_K
        elif ftype == "Q3_K_M":
            t = Q.Q5_K if i < 2 else Q.Q4_K
        elif ftype == "Q3_K_L":
            t = Q.Q5_K
        elif ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
            t = Q.Q6_K
        elif ftype == "Q4_K_S" and i < 4:
            t = Q.Q5_K
        if eight:
            t = Q.Q8_0
    elif "attn_k.weight" in name:
        if eight:
            t = Q.Q8_0
    elif "attn_q.weight" in name:
        pass  # rules only for IQ3 ftypes
    elif "attn_output.weight" in name:
        if eight:
            if ftype in ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M"):
                t = Q.Q5_K
        else:
            t = {"Q2_K": Q.Q3_K, "Q3_K_M": Q.Q4_K, "Q3_K_L": Q.Q5_K}.get(ftype, t)
    elif "ffn_up" in name or "ffn_gate" in name:
        pass  # rules only for IQ3_XS
    elif "ffn_down" in name:
        i, n = max(_layer(name), 0), info.n_layer
        if ftype == "Q2_K":
            t = Q.Q3_K
        elif ftype == "Q3_K_M":
            t = Q.Q5_K if i < n // 16 else Q.Q4_K  # (Falcon: Q3_K outside use_more_bits)
        elif ftype == "Q3_K_L":
            t = Q.Q5_K
        elif ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
            t = Q.Q6_K
        elif ftype == "Q4_K_S" and i < n // 8:
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
