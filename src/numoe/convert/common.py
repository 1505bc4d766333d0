"""HF tensor names shared by the architectures -> GGUF names (llama.cpp's)."""

from __future__ import annotations

import re

import torch

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate.weight": "ffn_gate_inp.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "mlp.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
    "mlp.shared_experts.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_experts.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_experts.down_proj.weight": "ffn_down_shexp.weight",
    "mlp.shared_expert_gate.weight": "ffn_gate_inp_shexp.weight",
    "mlp.gate.e_score_correction_bias": "exp_probs_b.bias",
}

Pairs = list[tuple[str, torch.Tensor]]


def split_layer(name: str) -> tuple[int, str] | None:
    """'model.layers.3.self_attn.q_proj.weight' -> (3, 'self_attn.q_proj.weight')."""
    m = _LAYER.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


def convert_common(name: str, t: torch.Tensor) -> Pairs:
    """Names every architecture shares; experts in both the fused layout of transformers
    5 (experts.gate_up_proj [E, 2F, D], experts.down_proj [E, D, F]) and the per-expert
    layout (experts.N.gate_proj.weight). Unknown names raise."""
    if name in GLOBAL:
        return [(GLOBAL[name], t)]
    sl = split_layer(name)
    if sl is None:
        raise ValueError(f"unexpected tensor '{name}'")
    i, rest = sl
    p = f"blk.{i}."
    if rest in LAYER:
        return [(p + LAYER[rest], t)]
    if rest.endswith("experts.gate_up_proj"):
        gate, up = t.chunk(2, dim=1)  # [E, F, D] each
        return [(p + "ffn_gate_exps.weight", gate), (p + "ffn_up_exps.weight", up)]
    if rest.endswith("experts.down_proj"):
        return [(p + "ffn_down_exps.weight", t)]  # [E, D, F]
    raise ValueError(f"unexpected tensor '{name}'")
