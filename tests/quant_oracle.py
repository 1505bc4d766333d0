"""A transformers oracle for quantized files that computes what numoe computes, to ~1e-6.

numoe's quantized matrix products take the weights the file holds and an activation rounded
to an 8-bit block format first (as llama.cpp): Q8_0 (blocks of 32, fp16 scale) for the
32-element weights (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL), Q8_K (blocks of 256, float scale)
for the 256-element ones (the K-quants Q2_K..Q6_K and the i-quants IQ1_S..IQ4_XS); float
weights take the float32 activation. `QuantReference` runs
transformers with

- the weights stored in the file, dequantized by the `gguf` package
  (hf_oracle.dequantized_copy), and
- every activation that meets a quantized weight rounded to the block format that weight's
  type pairs with (a TorchFunctionMode around F.linear; torch re-implementations of ggml's
  quantize_row_q8_0 / quantize_row_q8_K below, checked against the `gguf` package's Q8_0
  and numoe's Q8_K blocks in test_quantized_e2e.py),

so the remaining difference is float32 summation order: logits agree to ~5e-7 of their
largest magnitude (rel_error), where the plain dequantized oracle is off by 1-2 % (and by
10-70 % where that error flips a routing choice). Except where the two sums put an
activation value on different sides of a rounding step: then that position, and through
attention the later ones of its sequence, differ by 1e-4 to a few %. logit_mismatch allows
a minority of such positions.

DeepSeek's attention runs in numoe's absorbed form (layers/mla.py: the query through W_uk,
the latent mix through W_uv, each a quantized product with its own activation rounding);
`absorbed_mla_forward` replaces transformers' attention for that, from the transformers
module's own weights and rope functions.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import types

import gguf
import numpy as np
import torch
from hf_oracle import dequantized_copy
from random_quant import HALF_FIELDS, get_scales, set_scales
from torch.overrides import TorchFunctionMode

from numoe.convert import CONVERTERS

Q = gguf.GGMLQuantizationType
K_TYPES = {Q.Q4_K, Q.Q5_K, Q.Q6_K}
FLOAT_TYPES = {Q.F32, Q.F16, Q.BF16}
Q8_0_ACT_TYPES = {Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.IQ4_NL}  # 32-element blocks
Q8_K_ACT_TYPES = K_TYPES | {  # 256-element blocks (Q4_K / Q5_K's Q8_K4: the same values)
    Q.Q2_K, Q.Q3_K, Q.IQ4_XS, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ3_XXS, Q.IQ3_S, Q.IQ1_S, Q.IQ1_M,
}  # fmt: skip
# offsets of the fp16 scale fields (d, and dmin / m where there is one) in a block; IQ1_M's
# d is packed in its scale words (random_quant.get_scales / set_scales)
SCALE_FIELDS = HALF_FIELDS

# A position whose float32 sums put no activation value on the other side of a rounding
# step agrees to <= 1e-6 (rel_error); one that does (or whose router then breaks a near tie
# the other way) moves by >= 1e-4, and so may the later positions of its sequence.
TIGHT = 1e-5


def q8_0(x: torch.Tensor) -> torch.Tensor:
    """x rounded as ggml's quantize_row_q8_0 (blocks of 32 along the last dim: d = amax/127
    stored as fp16, q = roundf(x / d) with the unrounded d), dequantized back to float32."""
    b = x.float().reshape(-1, 32)
    d = b.abs().amax(1, keepdim=True) / 127
    v = b * torch.where(d == 0, 0.0, 1.0 / d)
    q = torch.sign(v) * torch.floor(v.abs() + 0.5)  # roundf: ties away from zero
    return (d.half().float() * q).reshape(x.shape)


def q8_K(x: torch.Tensor) -> torch.Tensor:
    """x rounded as ggml's quantize_row_q8_K (blocks of 256: the value of largest magnitude,
    the first one on a tie, maps to -127; q = nearest_int(x * -127 / max), at most 127; d =
    1 / iscale), dequantized back to float32."""
    b = x.float().reshape(-1, 256)
    m = b.gather(1, b.abs().argmax(1, keepdim=True))
    iscale = torch.where(m == 0, 0.0, -127.0 / m)
    q = torch.clamp(torch.round(iscale * b), max=127)  # nearest_int: ties to even
    d = torch.where(m == 0, 0.0, 1.0 / iscale)
    return (d * q).reshape(x.shape)


def activation_rounding(qtype: Q):
    """The rounding numoe applies to an activation multiplied by a `qtype` weight (None: none)."""
    if qtype in FLOAT_TYPES:
        return None
    if qtype in Q8_K_ACT_TYPES:
        return q8_K
    if qtype in Q8_0_ACT_TYPES:
        return q8_0
    raise ValueError(f"no activation rounding known for {qtype.name}")


def tensor_types(path) -> dict[str, Q]:
    """GGUF tensor name -> stored type, read by the `gguf` package."""
    return {t.name: Q(t.tensor_type) for t in gguf.GGUFReader(path).tensors}


class _RoundLinearInputs(TorchFunctionMode):
    """F.linear(x, w) -> F.linear(round(x), w) for the weights in `rounding` (keyed by the
    address of the parameter's storage, which the experts' per-expert views share)."""

    def __init__(self, rounding: dict[int, object]):
        super().__init__()
        self.rounding = rounding
        self.calls = 0  # rounded products, so a test can tell the mode did something

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.linear:
            f = self.rounding.get(args[1].untyped_storage().data_ptr())
            if f is not None:
                self.calls += 1
                args = (f(args[0]), *args[1:])
        return func(*args, **kwargs)


def absorbed_mla_forward(self, hidden_states, position_embeddings, attention_mask=None, **kw):
    """DeepseekV2/V3 attention (transformers' module and weights) in the absorbed form numoe
    runs, for a batch of causal sequences (no padding, no cache): scores = (W_uk^T q_nope) . latent +
    q_rope . k_rope, out = W_uv (p @ latent), the two per-head products taking their
    activations rounded as `self._round_k` / `self._round_v` say."""
    mod = sys.modules[type(self).__module__]
    B, T, _ = hidden_states.shape
    H, dn, dr, dv, R = (
        self.num_heads, self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim,
        self.kv_lora_rank,
    )  # fmt: skip
    if self.q_lora_rank is None:
        q = self.q_proj(hidden_states)
    else:
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden_states)))
    q_nope, q_rot = q.view(B, T, H, dn + dr).transpose(1, 2).split([dn, dr], -1)  # [B, H, T, .]
    latent, k_rot = self.kv_a_proj_with_mqa(hidden_states).split([R, dr], -1)
    latent = self.kv_a_layernorm(latent)[:, None]  # [B, 1, T, R]
    k_rot = k_rot.view(B, 1, T, dr)
    cos, sin = position_embeddings
    if getattr(self.config, "rope_interleave", False):
        q_rot, k_rot = mod.apply_rotary_pos_emb_interleave(q_rot, k_rot, cos, sin)
    else:
        q_rot, k_rot = mod.apply_rotary_pos_emb(q_rot, k_rot, cos, sin)
    w = self.kv_b_proj.weight.view(H, dn + dv, R)
    w_uk, w_uv = w[:, :dn], w[:, dn:]  # [H, dn, R], [H, dv, R]
    rk = self._round_k or (lambda t: t)
    rv = self._round_v or (lambda t: t)
    q_lat = rk(q_nope) @ w_uk  # [B, H, T, R]
    scores = q_lat @ latent.transpose(-1, -2) + q_rot @ k_rot.transpose(-1, -2)  # [B, H, T, T]
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    p = torch.softmax((scores * self.scaling).masked_fill(future, float("-inf")), -1)
    out = rv(p @ latent) @ w_uv.transpose(1, 2)  # [B, H, T, dv]
    return self.o_proj(out.transpose(1, 2).reshape(B, T, H * dv)), None


class QuantReference:
    """transformers computing with the file's weights and numoe's activation rounding:
    `QuantReference(hf_model, path)(tokens [B, T])` -> float32 logits [B, T, V]."""

    def __init__(self, hf_model, path):
        self.model = dequantized_copy(hf_model, path)
        self.model.set_experts_implementation("eager")  # the per-expert F.linear loop
        conv = importlib.import_module(f"numoe.convert.{CONVERTERS[hf_model.config.model_type]}")
        cfg = conv.config_from_hf(hf_model.config)
        stored = tensor_types(path)
        self.rounding: dict[int, object] = {}
        self.types: dict[str, set[str]] = {}  # HF parameter -> the GGUF types it went to
        for name, p in self.model.named_parameters():
            gnames = [g for g, _ in conv.convert_tensor(name, p.detach(), cfg) if g in stored]
            self.types[name] = {stored[g].name for g in gnames}
            if name.endswith("self_attn.kv_b_proj.weight") and len(gnames) == 2:
                attn = self.model.get_submodule(name.rsplit(".", 2)[0])
                by_suffix = {g.split(".")[-2]: activation_rounding(stored[g]) for g in gnames}
                attn._round_k, attn._round_v = by_suffix["attn_k_b"], by_suffix["attn_v_b"]
                attn.forward = types.MethodType(absorbed_mla_forward, attn)
                continue
            kinds = {activation_rounding(stored[g]) for g in gnames}
            assert len(kinds) <= 1, f"{name}: parts stored as {self.types[name]}"
            if kinds and (f := kinds.pop()) is not None:
                self.rounding[p.untyped_storage().data_ptr()] = f

    @torch.no_grad()
    def __call__(self, tokens) -> torch.Tensor:
        """tokens [B, T] (B independent sequences) -> logits [B, T, V]."""
        mode = _RoundLinearInputs(self.rounding)
        with mode:
            out = self.model(torch.as_tensor(tokens), use_cache=False).logits.float()
        assert mode.calls > 0 or not self.rounding, "no quantized product was rounded"
        return out


def rel_error(ours: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per position ([..., V] -> [...]): max |ours - ref| / max |ref| over the vocabulary."""
    ours, ref = ours.float().reshape(ref.shape), ref.float()
    return (ours - ref).abs().amax(-1) / ref.abs().amax(-1)


def logit_mismatch(
    ours: torch.Tensor, ref: torch.Tensor, tol: float = TIGHT, quantile: float = 0.5
) -> str | None:
    """None when the logits [..., V] are finite and at least a `quantile` share of the
    positions agree within `tol` (rel_error); else a line saying what differs. quantile < 1
    leaves room for the rounding flips (module doc) but none for an error every position
    shares: a wrong scale, rope, norm or routing."""
    if ours.shape != ref.shape:
        return f"shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    rel = rel_error(ours, ref).flatten()
    if not torch.isfinite(rel).all():
        return f"{int((~torch.isfinite(rel)).sum())} positions are not finite"
    share = (rel <= tol).float().mean().item()
    if share < quantile:
        q = torch.quantile(rel.double(), torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
        return (
            f"{share:.0%} of {rel.numel()} positions agree within {tol:g} (want >= "
            f"{quantile:.0%}); relative error min {q[0]:.2g}, median {q[1]:.2g}, max {q[2]:.2g}"
        )
    return None


def scale_experts(src, dst, factor: float, layers=None) -> list[str]:
    """A copy of the GGUF file `src` at `dst` with the routed experts' down projections
    (blk.N.ffn_down_exps, so each expert's output) multiplied by `factor` through the fp16
    scale fields of their blocks (d, and dmin / m where there is one): what a kernel or loader
    that misread the scales would compute. layers: the block numbers (None: all).
    Returns the tensors changed."""
    shutil.copyfile(src, dst)
    reader = gguf.GGUFReader(dst, "r+")
    changed = []
    for t in reader.tensors:
        parts = t.name.split(".")
        if parts[-2:] != ["ffn_down_exps", "weight"]:
            continue
        if layers is not None and int(parts[1]) not in layers:
            continue
        qtype = Q(t.tensor_type)
        if qtype in (Q.F32, Q.F16):
            t.data[...] *= factor
        else:
            size = gguf.GGML_QUANT_SIZES[qtype][1]
            blocks = t.data.reshape(-1, size)
            set_scales(qtype, blocks, get_scales(qtype, blocks) * np.float32(factor))
        changed.append(t.name)
    reader.data.flush()
    del reader
    assert changed, "no ffn_down_exps tensor in the file"
    return changed
