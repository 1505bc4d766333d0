"""Qwen3-MoE and Qwen2-MoE against transformers on tiny random models."""

import pytest
import transformers as tf
from hf_oracle import check_against_hf, randomize

SMALL = {
    "vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "num_experts": 8, "num_experts_per_tok": 2,
    "moe_intermediate_size": 32, "max_position_embeddings": 256, "attn_implementation": "eager",
}  # fmt: skip


@pytest.mark.parametrize("norm_topk", [True, False])
def test_qwen3_moe_matches_transformers(tmp_path, norm_topk):
    cfg = tf.Qwen3MoeConfig(**SMALL, head_dim=24, norm_topk_prob=norm_topk)
    check_against_hf(randomize(tf.Qwen3MoeForCausalLM(cfg)), tmp_path)


def test_qwen2_moe_matches_transformers(tmp_path):
    cfg = tf.Qwen2MoeConfig(**SMALL, intermediate_size=96, shared_expert_intermediate_size=48)
    check_against_hf(randomize(tf.Qwen2MoeForCausalLM(cfg)), tmp_path)
