"""End to end through the C++ kernels on stored types other than F32, against transformers.

F16 / BF16: the transformers model's weights are rounded to that type first, so the file
holds them exactly; the C++ ops (f32 activations) must then give the same logits as
transformers in float32 (LOGIT_ATOL) and identical greedy tokens.

Q8_0 / Q4_K_M / Q6_K: transformers runs with the weights the file holds, dequantized by the
`gguf` package (hf_oracle.dequantized_copy); numoe also quantizes the activations (to Q8_0
or Q8_K, as llama.cpp), so logits are compared at a looser relative tolerance, per prompt
position: max |numoe - hf| / max |hf| has a median <= MEDIAN_TOL, and at most a quarter of
the positions exceed 2 * MEDIAN_TOL (measured: 0.01-0.04 per position; a routing flip, where
the quantized router scores cross a near tie, gives the odd 0.1-0.7). The shapes are multiples of 256
so the K mixes really use Q4_K / Q6_K (rows that are not fall back to Q8_0, as llama.cpp).
"""

import numpy as np
import pytest
import torch
import transformers as tf
from hf_oracle import check_against_hf, dequantized_copy, numoe_model, randomize

from numoe.convert import convert_hf
from numoe.gguf import open_gguf

QWEN3 = {
    "vocab_size": 512, "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 64, "num_experts": 8, "num_experts_per_tok": 2,
    "moe_intermediate_size": 256, "max_position_embeddings": 256, "attn_implementation": "eager",
}  # fmt: skip
DSV3 = {
    "vocab_size": 512, "hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 256,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "kv_lora_rank": 256,
    "q_lora_rank": 256, "qk_nope_head_dim": 32, "qk_rope_head_dim": 32, "v_head_dim": 32,
    "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1, "n_group": 4,
    "topk_group": 2, "norm_topk_prob": True, "routed_scaling_factor": 2.5, "first_k_dense_replace": 1,
    "max_position_embeddings": 256, "attn_implementation": "eager",
}  # fmt: skip
MIXTRAL = {
    "vocab_size": 512, "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 256, "num_local_experts": 8,
    "num_experts_per_tok": 2, "max_position_embeddings": 256, "attn_implementation": "eager",
}  # fmt: skip

# std 0.05: with 256-wide layers the activations stay O(1), as in a trained model.
MODELS = {
    "qwen3moe": lambda: randomize(tf.Qwen3MoeForCausalLM(tf.Qwen3MoeConfig(**QWEN3)), std=0.05),
    "deepseek-v3": lambda: randomize(
        tf.DeepseekV3ForCausalLM(tf.DeepseekV3Config(**DSV3)), std=0.05
    ),
    "mixtral": lambda: randomize(tf.MixtralForCausalLM(tf.MixtralConfig(**MIXTRAL)), std=0.05),
}
MEDIAN_TOL = 0.05
QTYPES = ["Q8_0", "Q4_K_M", "Q6_K"]


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("qtype,dtype", [("F16", torch.float16), ("BF16", torch.bfloat16)])
def test_float_types_match_transformers(tmp_path, family, qtype, dtype):
    hf = MODELS[family]()
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(p.to(dtype).float())
    check_against_hf(hf, tmp_path, qtype=qtype)


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("qtype", QTYPES)
def test_quantized_types_close_to_transformers(tmp_path, family, qtype):
    hf = MODELS[family]()
    path = tmp_path / "model.gguf"
    cfg = convert_hf(hf, path, qtype=qtype)
    types = {t.qtype.name for t in open_gguf(path).tensors.values()}
    if qtype == "Q4_K_M":
        assert {"Q4_K", "Q6_K"} <= types, types  # the K kernels are what runs
    prompt = np.random.default_rng(3).integers(0, cfg.n_vocab, size=16).tolist()
    with torch.no_grad():
        ref = dequantized_copy(hf, path)(torch.tensor([prompt])).logits[0].float()  # [T, V]
    model = numoe_model(path)
    ours = model.forward(torch.tensor(prompt), model.new_cache(32), 0)  # [T, V]
    rel = (ours - ref).abs().amax(1) / ref.abs().amax(1)  # [T]
    assert rel.median() <= MEDIAN_TOL, f"{qtype}: relative logit error per position {rel}"
    assert (rel > 2 * MEDIAN_TOL).sum() <= len(prompt) // 4, f"{qtype}: per position {rel}"
