"""DeepSeek-V2/V3 (`deepseek2`) against transformers on tiny random models, both MLA
tensor layouts, routing variants, YaRN; GGUF metadata round trip and errors."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import transformers as tf
from hf_oracle import check_against_hf, numoe_model, randomize

from numoe.convert import deepseek2 as conv
from numoe.gguf import GGUFError, open_gguf
from numoe.gguf.write import write_gguf
from numoe.models import deepseek2 as ds2
from numoe.synth import synth
from numoe.text import synth_vocab_metadata

SMALL = {
    "vocab_size": 512, "hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 32,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "kv_lora_rank": 32, "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8, "v_head_dim": 16, "n_routed_experts": 8, "num_experts_per_tok": 2,
    "first_k_dense_replace": 1, "max_position_embeddings": 256, "attn_implementation": "eager",
}  # fmt: skip


def v2(**kw):
    args = SMALL | {"q_lora_rank": None, "n_shared_experts": 2} | kw
    return randomize(tf.DeepseekV2ForCausalLM(tf.DeepseekV2Config(**args)))


def v3(**kw):
    args = SMALL | {
        "q_lora_rank": 24, "n_shared_experts": 1, "n_group": 4, "topk_group": 2, "norm_topk_prob": True,
        "routed_scaling_factor": 2.5,
    } | kw  # fmt: skip
    return randomize(tf.DeepseekV3ForCausalLM(tf.DeepseekV3Config(**args)))


def test_v2_no_q_lora_combined_kv_b(tmp_path, monkeypatch):
    monkeypatch.setattr(conv, "SPLIT_KV_B", False)
    cfg = check_against_hf(v2(), tmp_path)
    assert not cfg.split_kv_b and cfg.q_lora_rank == 0 and cfg.gating == "softmax"
    g = open_gguf(tmp_path / "model.gguf")
    assert g.has("blk.0.attn_kv_b.weight") and not g.has("blk.0.attn_k_b.weight")
    assert g.has("blk.0.attn_q.weight") and g.has("blk.1.ffn_gate_shexp.weight")
    assert g.arch_get("attention.head_count_kv") == 4
    assert g.arch_get("attention.key_length") == 24
    assert g.arch_get("attention.key_length_mla", None) is None


def test_v2_split_k_b_v_b(tmp_path):
    cfg = check_against_hf(v2(), tmp_path)
    assert cfg.split_kv_b
    g = open_gguf(tmp_path / "model.gguf")
    assert g.tensor("blk.1.attn_k_b.weight").shape == (4, 32, 16)  # [H, kv_lora, nope]
    assert g.tensor("blk.1.attn_v_b.weight").shape == (4, 16, 32)  # [H, v, kv_lora]
    assert not g.has("blk.1.attn_kv_b.weight")
    a = g.arch_get
    assert (a("attention.head_count_kv"), a("attention.key_length")) == (1, 40)
    assert (a("attention.value_length"), a("attention.key_length_mla")) == (32, 24)
    assert a("attention.value_length_mla") == 16


def test_v2_group_limited_greedy(tmp_path):
    # 4 of 16 experts from the best 2 of 4 groups (groups scored by their best expert):
    # with top-2 of 8 the limit could never change the choice
    m = v2(
        topk_method="group_limited_greedy", n_group=4, topk_group=2, n_routed_experts=16,
        num_experts_per_tok=4,
    )  # fmt: skip
    cfg = check_against_hf(m, tmp_path)
    assert (cfg.n_group, cfg.n_group_used, cfg.expert_bias) == (4, 2, False)


def test_v3_q_lora_sigmoid_bias_groups(tmp_path):
    cfg = check_against_hf(v3(num_hidden_layers=3), tmp_path)
    assert cfg.gating == "sigmoid" and cfg.expert_bias and cfg.norm_topk
    assert (cfg.n_group, cfg.n_group_used, cfg.expert_scale) == (4, 2, 2.5)
    g = open_gguf(tmp_path / "model.gguf")
    assert g.has("blk.2.exp_probs_b.bias") and not g.has("blk.0.exp_probs_b.bias")
    assert g.has("blk.1.attn_q_a.weight") and not g.has("blk.1.attn_q.weight")
    assert g.arch_get("expert_gating_func") == 2


@pytest.mark.parametrize("mscale", [1.0, 0.707])
def test_v3_yarn(tmp_path, mscale):
    # original context 16: the prompt and the 32 generated tokens run well past it
    rope = {
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
        "original_max_position_embeddings": 16, "mscale": mscale, "mscale_all_dim": mscale,
    }  # fmt: skip
    cfg = check_against_hf(v3(rope_parameters=rope, max_position_embeddings=64), tmp_path)
    assert cfg.rope_scaling == "yarn" and cfg.rope_orig_ctx == 16
    assert cfg.yarn_log_mul == pytest.approx(0.1 * mscale)
    m = 1 + 0.1 * mscale * math.log(4.0)
    assert cfg.softmax_scale == pytest.approx(m * m / math.sqrt(24))


def test_yarn_attention_factor_not_one_is_refused():
    hf = tf.DeepseekV3Config(**SMALL, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
        "original_max_position_embeddings": 16, "mscale": 1.0, "mscale_all_dim": 0.5,
    })  # fmt: skip
    with pytest.raises(ValueError, match="mscale"):
        conv.config_from_hf(hf)


def random_tensors(cfg, drop=()):
    rng = np.random.default_rng(0)
    specs = ds2.tensor_specs(cfg)
    return {
        n: (0.1 * rng.standard_normal(s)).astype(np.float32)
        for n, s in specs.items()
        if n not in drop
    }


def write(path, cfg, meta_edit=None, drop=(), tensors=None):
    meta = ds2.gguf_metadata(cfg) | synth_vocab_metadata(cfg.n_vocab, "gpt2")
    for k, v in (meta_edit or {}).items():
        if v is None:
            meta.pop(k)
        else:
            meta[k] = v
    tensors = random_tensors(cfg, drop) if tensors is None else tensors
    write_gguf(path, cfg.arch, meta, tensors, "F32")
    return path


@pytest.mark.parametrize("preset", ["tiny-v2", "tiny-v3"])
@pytest.mark.parametrize("split", [True, False])
def test_metadata_round_trip(tmp_path, preset, split):
    cfg = replace(ds2.PRESETS[preset], split_kv_b=split)
    got = ds2.config_from_gguf(open_gguf(write(tmp_path / "m.gguf", cfg)))
    f32 = {k: float(np.float32(v)) for k, v in vars(cfg).items() if isinstance(v, float)}
    assert got == replace(cfg, **f32)  # floats are stored as float32


def test_layouts_compute_the_same(tmp_path):
    """The same weights stored as attn_kv_b and as attn_k_b/attn_v_b give equal logits."""
    comb = replace(ds2.PRESETS["tiny-v3"], split_kv_b=False)
    split = replace(comb, split_kv_b=True)
    tensors = random_tensors(comb)
    split_tensors = {}
    for n, arr in tensors.items():
        if n.endswith("attn_kv_b.weight"):
            hf = f"model.layers.{n.split('.')[1]}.self_attn.kv_b_proj.weight"
            pairs = conv.convert_tensor(hf, torch.from_numpy(arr), split)
            split_tensors |= {gn: t.numpy() for gn, t in pairs}
        else:
            split_tensors[n] = arr
    a = numoe_model(write(tmp_path / "comb.gguf", comb, tensors=tensors))
    b = numoe_model(write(tmp_path / "split.gguf", split, tensors=split_tensors))
    toks = torch.arange(7)
    la = a.forward(toks, a.new_cache(16), 0)
    lb = b.forward(toks, b.new_cache(16), 0)
    assert (la - lb).abs().max().item() < 1e-4


def test_inconsistent_mla_metadata(tmp_path):
    cfg = ds2.PRESETS["tiny-v2"]
    p = write(tmp_path / "m.gguf", cfg, {"deepseek2.attention.key_length": 24})
    with pytest.raises(GGUFError, match="key_length"):
        ds2.config_from_gguf(open_gguf(p))
    p = write(tmp_path / "n.gguf", cfg, {"deepseek2.attention.value_length_mla": None})
    with pytest.raises(GGUFError, match="value_length_mla"):
        ds2.config_from_gguf(open_gguf(p))


def test_missing_key_and_tensor(tmp_path):
    cfg = ds2.PRESETS["tiny-v2"]
    p = write(tmp_path / "m.gguf", cfg, {"deepseek2.attention.kv_lora_rank": None})
    with pytest.raises(GGUFError, match="kv_lora_rank"):
        ds2.config_from_gguf(open_gguf(p))
    p = write(tmp_path / "n.gguf", cfg, drop=("blk.1.attn_v_b.weight",))
    with pytest.raises(GGUFError, match="attn_v_b"):
        numoe_model(p)


def test_real_shapes():
    def n_params(cfg):
        return sum(math.prod(s) for s in ds2.tensor_specs(cfg).values())

    assert n_params(ds2.PRESETS["deepseek-v2-lite"]) / 1e9 == pytest.approx(15.7, abs=0.1)
    assert n_params(ds2.PRESETS["deepseek-v3"]) / 1e9 == pytest.approx(671, abs=1)


@pytest.mark.parametrize("preset", ["tiny-v2", "tiny-v3"])
def test_synth_preset_decodes_like_one_pass(tmp_path, preset):
    """A synthetic model at the preset runs; token-by-token decoding over the latent
    cache gives the logits of one pass over the whole sequence."""
    synth(preset, tmp_path / "s.gguf", qtype="F32")
    model = numoe_model(tmp_path / "s.gguf")
    toks = torch.arange(3, 15)
    full = model.forward(toks, model.new_cache(16), 0)  # [12, V]
    cache = model.new_cache(16)
    model.forward(toks[:5], cache, 0)
    step = [model.forward(toks[i : i + 1], cache, i)[0] for i in range(5, 12)]
    assert (torch.stack(step) - full[5:]).abs().max().item() < 1e-4
