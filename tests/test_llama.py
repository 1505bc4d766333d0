"""Mixtral and dense Llama (GGUF `llama`) against transformers on tiny random models."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import transformers as tf
from hf_oracle import check_against_hf, randomize
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from numoe.convert.llama import llama3_freq_factors, permute_qk
from numoe.gguf import open_gguf
from numoe.gguf.write import write_gguf
from numoe.layers.rope import Rope
from numoe.models import llama

SMALL = {
    "vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 32, "max_position_embeddings": 256,
    "attn_implementation": "eager",
}  # fmt: skip


def mixtral(**kw):
    cfg = tf.MixtralConfig(**SMALL, num_local_experts=8, num_experts_per_tok=2, **kw)
    return randomize(tf.MixtralForCausalLM(cfg))


def test_mixtral_merged_experts(tmp_path):
    cfg = check_against_hf(mixtral(), tmp_path)
    assert (cfg.n_expert, cfg.split_experts, cfg.tie_embd) == (8, False, False)


def test_mixtral_per_expert_tensors(tmp_path):
    m = mixtral()
    m.config.gguf_split_experts = True  # old Mixtral files: blk.N.ffn_gate.E.weight
    cfg = check_against_hf(m, tmp_path)
    g = open_gguf(tmp_path / "model.gguf")
    assert cfg.split_experts and g.has("blk.1.ffn_down.7.weight")
    assert not g.has("blk.0.ffn_gate_exps.weight")


def test_mixtral_tied_embeddings(tmp_path):
    cfg = check_against_hf(mixtral(tie_word_embeddings=True), tmp_path)
    assert cfg.tie_embd and not open_gguf(tmp_path / "model.gguf").has("output.weight")


def test_dense_llama(tmp_path):
    cfg = tf.LlamaConfig(
        **SMALL,
        head_dim=24,
        rope_parameters={"rope_type": "default", "rope_theta": 5e5},
    )
    check_against_hf(randomize(tf.LlamaForCausalLM(cfg)), tmp_path)


def test_dense_llama3_rope_freqs(tmp_path):
    rp = {
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 256,
    }  # fmt: skip
    hf = randomize(tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL, rope_parameters=rp)))
    f = llama3_freq_factors(16, 10000.0, rp)
    assert f[0] == 1.0 and f[-1] == 8.0 and 1.0 < f[3] < 8.0  # all three regimes
    cfg = check_against_hf(hf, tmp_path)
    assert cfg.rope_freq_factors == pytest.approx(f)


@pytest.mark.parametrize("n_head", [1, 3])
def test_qk_permutation_with_interleaved_rope_equals_hf_half_split(n_head):
    """Independent of the converter test path: HF's half-split rope on the HF weights
    equals numoe's interleaved rope on llama.cpp-permuted weights, up to the same row
    permutation (so q.k attention scores are identical)."""
    g = torch.Generator().manual_seed(0)
    Dh, D, T, base = 8, 5, 6, 10000.0
    wq = torch.randn(n_head * Dh, D, generator=g, dtype=torch.float64)
    wk = torch.randn(n_head * Dh, D, generator=g, dtype=torch.float64)
    x = torch.randn(T, D, generator=g, dtype=torch.float64)
    pos = torch.arange(7, 7 + T, dtype=torch.float64)
    # HF: half-split pairs (i, i + Dh/2), cos/sin duplicated over the two halves
    inv = 1.0 / base ** (torch.arange(0, Dh, 2, dtype=torch.float64) / Dh)
    ang = torch.outer(pos, inv)  # [T, Dh/2]
    emb = torch.cat([ang, ang], -1)  # [T, Dh]
    q_hf = (x @ wq.T).view(T, n_head, Dh).transpose(0, 1)[None]  # [1, H, T, Dh]
    k_hf = (x @ wk.T).view(T, n_head, Dh).transpose(0, 1)[None]
    q_hf, k_hf = apply_rotary_pos_emb(q_hf, k_hf, emb.cos()[None], emb.sin()[None])
    # numoe: permuted weights, interleaved rope
    rope = Rope.plain(Dh, base, neox=False)
    c, s = ang.cos(), ang.sin()
    q = rope.apply((x @ permute_qk(wq, n_head).T).view(T, n_head, Dh), c, s)  # [T, H, Dh]
    k = rope.apply((x @ permute_qk(wk, n_head).T).view(T, n_head, Dh), c, s)
    # row 2i of a numoe head is row i of the HF head, row 2i+1 is row i + Dh/2
    order = torch.tensor([i + h * Dh // 2 for i in range(Dh // 2) for h in (0, 1)])
    torch.testing.assert_close(q, q_hf[0].transpose(0, 1)[..., order])
    torch.testing.assert_close(k, k_hf[0].transpose(0, 1)[..., order])
    scores_hf = q_hf[0] @ k_hf[0].transpose(-1, -2)  # [H, T, T]
    scores = q.transpose(0, 1) @ k.transpose(0, 1).transpose(-1, -2)
    torch.testing.assert_close(scores, scores_hf)


@pytest.mark.parametrize("split", [False, True])
def test_preset_metadata_round_trip(tmp_path, split):
    """gguf_metadata + tensor_specs written to a file read back as the same Config."""
    cfg = replace(llama.PRESETS["tiny-mixtral"], rms_eps=2.0**-16, split_experts=split)
    rng = np.random.default_rng(0)
    specs = llama.tensor_specs(cfg)
    tensors = {n: rng.standard_normal(s).astype(np.float32) for n, s in specs.items()}
    write_gguf(tmp_path / "m.gguf", "llama", llama.gguf_metadata(cfg), tensors, "F32")
    assert llama.config_from_gguf(open_gguf(tmp_path / "m.gguf")) == cfg
    assert ("blk.0.ffn_up.3.weight" in specs) == split
