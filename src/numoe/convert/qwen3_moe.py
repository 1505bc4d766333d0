"""transformers Qwen3Moe / Qwen2Moe -> numoe qwen3moe / qwen2moe."""

from __future__ import annotations

from ..models.qwen3_moe import Config
from .common import Pairs, convert_common


def config_from_hf(hf) -> Config:
    qwen2 = hf.model_type == "qwen2_moe"
    if getattr(hf, "mlp_only_layers", None) or getattr(hf, "decoder_sparse_step", 1) != 1:
        raise ValueError("dense layers inside a Qwen MoE model are not supported (GGUF has none)")
    return Config(
        arch="qwen2moe" if qwen2 else "qwen3moe",
        n_vocab=hf.vocab_size,
        n_ctx_train=hf.max_position_embeddings,
        n_embd=hf.hidden_size,
        n_layer=hf.num_hidden_layers,
        n_head=hf.num_attention_heads,
        n_head_kv=hf.num_key_value_heads,
        head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
        n_expert=hf.num_experts,
        n_expert_used=hf.num_experts_per_tok,
        n_ff_exp=hf.moe_intermediate_size,
        n_ff_shexp=hf.shared_expert_intermediate_size if qwen2 else 0,
        norm_topk=bool(hf.norm_topk_prob),
        rope_base=float(_rope_theta(hf)),
        rms_eps=hf.rms_norm_eps,
    )


def _rope_theta(hf) -> float:
    rp = getattr(hf, "rope_parameters", None) or {}
    return rp.get("rope_theta") or getattr(hf, "rope_theta", 10000.0)


def convert_tensor(name: str, t, cfg: Config) -> Pairs:
    return convert_common(name, t)
