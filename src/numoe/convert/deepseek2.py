"""transformers DeepseekV2 / DeepseekV3 -> numoe deepseek2, with llama.cpp's names.

MLA layout: by default kv_b_proj is split as llama.cpp's converter does it now
(attn_k_b [H, kv_lora, nope] = kv_b.view(H, nope + v, kv_lora)[:, :nope]^T per head,
attn_v_b [H, v, kv_lora]), with MQA-form metadata; `split_kv_b=False` writes the older
combined attn_kv_b [H*(nope+v), kv_lora] with MHA-form metadata instead.

Routing as transformers computes it: V2 softmax, top-k "greedy" (no group limit) or
"group_limited_greedy" (groups scored by their best expert); V3 sigmoid plus the
e_score_correction_bias for the choice, groups scored by their two best experts.
Renormalisation follows `norm_topk_prob` as llama.cpp's converter writes it (the V2
checkpoints all have it false; transformers' V2 ignores the flag).
"""

from __future__ import annotations

from ..layers.rope import yarn_mscale
from ..models.deepseek2 import NO_YARN, Config
from .common import Pairs, convert_common, split_layer

# The layout config_from_hf writes when not told: llama.cpp's current split k_b/v_b.
SPLIT_KV_B = True

ATTN = {
    "self_attn.q_a_proj.weight": "attn_q_a.weight",
    "self_attn.q_a_layernorm.weight": "attn_q_a_norm.weight",
    "self_attn.q_b_proj.weight": "attn_q_b.weight",
    "self_attn.kv_a_proj_with_mqa.weight": "attn_kv_a_mqa.weight",
    "self_attn.kv_a_layernorm.weight": "attn_kv_a_norm.weight",
}


def _rope(hf) -> dict:
    """numoe Config rope fields from hf.rope_parameters (or the older rope_scaling)."""
    rp = dict(getattr(hf, "rope_parameters", None) or {})
    rp |= {k: v for k, v in (getattr(hf, "rope_scaling", None) or {}).items() if k not in rp}
    base = float(rp.get("rope_theta") or getattr(hf, "rope_theta", 10000.0))
    kind = rp.get("rope_type", rp.get("type", "default"))
    if kind == "default":
        return {"rope_base": base, **NO_YARN}
    if kind != "yarn":
        raise ValueError(f"DeepSeek rope type '{kind}' not supported (default or yarn)")
    factor = float(rp["factor"])
    mscale, mscale_all = rp.get("mscale"), rp.get("mscale_all_dim")
    attn_factor = rp.get("attention_factor")
    if attn_factor is None:  # as transformers' _compute_yarn_parameters
        if mscale and mscale_all:
            attn_factor = yarn_mscale(factor, 0.1 * mscale) / yarn_mscale(factor, 0.1 * mscale_all)
        else:
            attn_factor = yarn_mscale(factor)
    if abs(attn_factor - 1.0) > 1e-6 or rp.get("truncate", True) is False:
        raise ValueError(
            f"YaRN with attention factor {attn_factor} (mscale {mscale}, mscale_all_dim "
            f"{mscale_all}) or truncate=False cannot be expressed in GGUF deepseek2 "
            "metadata (llama.cpp assumes mscale == mscale_all_dim)"
        )
    return {
        "rope_base": base,
        "rope_scaling": "yarn",
        "rope_factor": factor,
        "rope_orig_ctx": int(rp["original_max_position_embeddings"]),
        "yarn_log_mul": 0.1 * float(mscale_all or 0.0),
        "yarn_beta_fast": float(rp.get("beta_fast") or 32.0),
        "yarn_beta_slow": float(rp.get("beta_slow") or 1.0),
    }


def config_from_hf(hf, split_kv_b: bool | None = None) -> Config:
    v3 = hf.model_type == "deepseek_v3"
    if getattr(hf, "hidden_act", "silu") != "silu":
        raise ValueError(f"DeepSeek hidden_act '{hf.hidden_act}' not supported (silu)")
    if getattr(hf, "attention_bias", False) or getattr(hf, "mlp_bias", False):
        raise ValueError("DeepSeek attention/MLP biases have no place in GGUF deepseek2")
    if v3 and getattr(hf, "rope_interleave", True) is False:
        raise ValueError("DeepSeek-V3 with rope_interleave=False is not supported")
    if v3:
        gating, n_group, topk_group = "sigmoid", hf.n_group or 1, hf.topk_group or 1
    else:
        gating, n_group, topk_group = "softmax", 1, 1
        if hf.topk_method == "group_limited_greedy":
            n_group, topk_group = hf.n_group, hf.topk_group
        elif hf.topk_method != "greedy":
            raise ValueError(f"DeepSeek-V2 topk_method '{hf.topk_method}' not supported")
    return Config(
        n_vocab=hf.vocab_size,
        n_ctx_train=hf.max_position_embeddings,
        n_embd=hf.hidden_size,
        n_layer=hf.num_hidden_layers,
        n_head=hf.num_attention_heads,
        q_lora_rank=hf.q_lora_rank or 0,
        kv_lora_rank=hf.kv_lora_rank,
        d_nope=hf.qk_nope_head_dim,
        d_rope=hf.qk_rope_head_dim,
        d_v=hf.v_head_dim,
        n_ff=hf.intermediate_size,
        n_layer_dense=hf.first_k_dense_replace or 0,
        n_expert=hf.n_routed_experts,
        n_expert_used=hf.num_experts_per_tok,
        n_ff_exp=hf.moe_intermediate_size,
        n_expert_shared=hf.n_shared_experts or 0,
        gating=gating,
        expert_bias=v3,
        norm_topk=bool(hf.norm_topk_prob),
        expert_scale=float(hf.routed_scaling_factor),
        n_group=n_group,
        n_group_used=topk_group,
        rms_eps=hf.rms_norm_eps,
        split_kv_b=SPLIT_KV_B if split_kv_b is None else split_kv_b,
        **_rope(hf),
    )


def convert_tensor(name: str, t, cfg: Config) -> Pairs:
    sl = split_layer(name)
    if sl is not None:
        i, rest = sl
        p = f"blk.{i}."
        if rest in ATTN:
            return [(p + ATTN[rest], t)]
        if rest == "self_attn.kv_b_proj.weight":
            if not cfg.split_kv_b:
                return [(p + "attn_kv_b.weight", t)]
            H, dn, dv = cfg.n_head, cfg.d_nope, cfg.d_v
            kv_b = t.view(H, dn + dv, cfg.kv_lora_rank)  # per head: dn K rows, dv V rows
            k_b = kv_b[:, :dn].transpose(1, 2).contiguous()  # [H, kv_lora, dn]
            v_b = kv_b[:, dn:].contiguous()  # [H, dv, kv_lora]
            return [(p + "attn_k_b.weight", k_b), (p + "attn_v_b.weight", v_b)]
    return convert_common(name, t)
