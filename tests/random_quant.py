"""Random valid blocks of every GGUF tensor type numoe reads, at a chosen magnitude.

Every byte pattern of a block is a valid block once its fp16 scale fields hold finite values
(a random fp16 can be inf / NaN or huge): raw random bytes, then the scale fields set to small
finite numbers of random sign, as benchmarks/kernels.py (HALF_FIELDS) and the per-format tests
(tests/test_quant_*.py) do. The values follow linearly from those fields (d, and dmin / m where
there is one), so one calibration pass scales them to the wanted root mean square: weights of
a model's magnitude (a random block is as good a weight as a trained one when the reference
takes the file's own dequantized values).

IQ1_M has no fp16 field of its own: its d is spread over the top nibbles of the 4 scale
words (bytes 48..55), word 0's nibble lowest (test_quant_iq3_iq1.set_d).
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize

FLOAT_TYPES = (Q.F32, Q.F16, Q.BF16)
# offsets of the fp16 scale fields in a block: d, then dmin / m where the format has one
HALF_FIELDS = {
    Q.Q8_0: (0,),
    Q.Q4_0: (0,),
    Q.Q4_1: (0, 2),
    Q.Q5_0: (0,),
    Q.Q5_1: (0, 2),
    Q.IQ4_NL: (0,),
    Q.Q2_K: (80, 82),
    Q.Q3_K: (108,),
    Q.Q4_K: (0, 2),
    Q.Q5_K: (0, 2),
    Q.Q6_K: (208,),
    Q.IQ4_XS: (0,),
    Q.IQ2_XXS: (0,),
    Q.IQ2_XS: (0,),
    Q.IQ2_S: (0,),
    Q.IQ3_XXS: (0,),
    Q.IQ3_S: (0,),
    Q.IQ1_S: (0,),
}
QUANT_TYPES = (*HALF_FIELDS, Q.IQ1_M)  # the 19 block types, Q8_K (activations only) aside
NEW_TYPES = (  # the 14 block types issue 13 added, beside Q8_0, Q4_0, Q4_K, Q5_K, Q6_K
    Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.IQ4_NL, Q.IQ4_XS,
    Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ3_XXS, Q.IQ3_S, Q.IQ1_S, Q.IQ1_M,
)  # fmt: skip


def block_size(qtype: Q) -> int:
    return GGML_QUANT_SIZES[qtype][0]


def get_scales(qtype: Q, raw: np.ndarray) -> np.ndarray:
    """The fp16 scale fields of raw blocks [B, size] as float32 [B, fields]."""
    if qtype == Q.IQ1_M:
        sc = raw[:, 48:56].copy().view("<u2").astype(np.uint16)
        bits = np.zeros(len(raw), np.uint16)
        for w in range(4):
            bits |= ((sc[:, w] >> 12) & 0xF) << (4 * w)
        return bits.view(np.float16).astype(np.float32)[:, None]
    return np.stack(
        [raw[:, o : o + 2].copy().view(np.float16)[:, 0] for o in HALF_FIELDS[qtype]], 1
    ).astype(np.float32)


def set_scales(qtype: Q, raw: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Write float scales [B, fields] (rounded to fp16) into raw blocks [B, size], in place."""
    halves = np.asarray(scales, np.float32).astype(np.float16)
    assert np.isfinite(halves).all()
    if qtype == Q.IQ1_M:
        bits = halves[:, 0].view(np.uint16)
        sc = raw[:, 48:56].copy().view("<u2")
        for w in range(4):
            sc[:, w] = (sc[:, w] & 0x0FFF) | (((bits >> (4 * w)) & 0xF) << 12).astype(np.uint16)
        raw[:, 48:56] = sc.view(np.uint8)
    else:
        for k, o in enumerate(HALF_FIELDS[qtype]):
            raw[:, o : o + 2] = halves[:, k].copy().view(np.uint8).reshape(-1, 2)
    return raw


def random_blocks(qtype: Q, rows: int, cols: int, rng, rms: float = 1.0):
    """(raw bytes uint8 [rows, row bytes], the `gguf` package's dequantize float32 [rows, cols])
    of a random matrix of type `qtype` whose values have about the root mean square `rms`.

    Block types: random bytes, each scale field a random sign times U(0.5, 1) times one
    per-type factor chosen so the values come out at `rms`. Float types: normal values."""
    qtype = Q(qtype)
    if qtype in FLOAT_TYPES:
        w = (rng.standard_normal((rows, cols)) * rms).astype(np.float32)
        if qtype == Q.F16:
            raw = w.astype(np.float16).view(np.uint8)
        elif qtype == Q.BF16:
            raw = (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        else:
            raw = w.view(np.uint8)
    else:
        bs, size = GGML_QUANT_SIZES[qtype]
        assert cols % bs == 0, f"{qtype.name}: rows of {cols} are not whole blocks of {bs}"
        nb = rows * cols // bs
        raw = rng.integers(0, 256, (nb, size), dtype=np.uint8)
        n_fields = 1 if qtype == Q.IQ1_M else len(HALF_FIELDS[qtype])
        scales = rng.uniform(0.5, 1.0, (nb, n_fields)) * rng.choice([-1.0, 1.0], (nb, n_fields))
        set_scales(qtype, raw, scales * 2.0**-6)
        sample = dequantize(raw[:256], qtype).astype(np.float64)  # 256 blocks tell the RMS
        probe = np.sqrt(np.mean(np.square(sample)))
        set_scales(qtype, raw, scales * 2.0**-6 * (rms / probe))
        raw = raw.reshape(rows, -1)
    raw = np.ascontiguousarray(raw).reshape(rows, -1)
    deq = np.asarray(dequantize(raw, qtype), np.float32).reshape(rows, cols)
    assert np.isfinite(deq).all()
    return raw, deq
