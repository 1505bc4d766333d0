"""llama.cpp's per-tensor type mix for every file type `numoe quantize` writes.

The expected tables are written by hand from llama.cpp's src/llama-quant.cpp
(llama_tensor_get_type_impl, tensor_type_fallback, llama_ftype_get_default_type), not from
numoe's code: one row per tensor, one column per file type (COLS), for models of real shape
(DeepSeek-V2-Lite, Qwen3-30B-A3B, Qwen1.5-MoE-A2.7B, Mixtral-8x7B presets). Then each new
file type quantizes a small model end to end and numoe loads and runs the result.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from numoe.cli import main as cli_main
from numoe.gguf import open_gguf
from numoe.gguf.mix import FTYPES, plan

Q = gguf.GGMLQuantizationType

COLS = "Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_0 Q4_1 Q5_0 Q5_1 Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K Q8_0"
BASE = "Q2_K Q3_K Q3_K Q3_K Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q4_K Q5_K Q5_K Q6_K Q8_0"
HEAD = "Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K Q8_0"
KEEP = " ".join(["-"] * 14)  # not quantized: copied as stored

# DeepSeek-V2-Lite: 27 layers (use_more_bits: 0-2, 5, 8, ..., 20, 23-26; n/16 = 1), 64
# experts, MLA split (no attn_v group). Rows: attn_k_b 128 and ffn_down_exps 1408 and the
# dense ffn_down 10944 are not multiples of 256 -> fallbacks; ffn_down_shexp 2816 is.
DEEPSEEK = {
    "output.weight": HEAD,
    "token_embd.weight": BASE,
    "output_norm.weight": KEEP,
    "blk.1.ffn_gate_inp.weight": KEEP,
    "blk.1.attn_q.weight": BASE,
    "blk.1.attn_kv_a_mqa.weight": BASE,
    "blk.1.attn_v_b.weight": BASE,
    "blk.1.ffn_gate_exps.weight": BASE,
    "blk.1.ffn_up_shexp.weight": BASE,
    "blk.1.attn_output.weight": "Q3_K Q3_K Q4_K Q5_K Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q4_K Q5_K Q5_K Q6_K Q8_0",
    "blk.1.attn_k_b.weight": "Q4_0 Q4_0 Q4_0 Q4_0 Q4_0 Q4_1 Q5_0 Q5_1 Q5_0 Q5_0 Q5_1 Q5_1 Q8_0 Q8_0",
    "blk.0.ffn_down.weight": "Q4_0 Q4_0 Q5_1 Q5_1 Q4_0 Q4_1 Q5_0 Q5_1 Q5_1 Q8_0 Q5_1 Q8_0 Q8_0 Q8_0",
    "blk.1.ffn_down_exps.weight": "Q4_0 Q4_0 Q5_0 Q5_1 Q4_0 Q4_1 Q5_0 Q5_1 Q5_1 Q8_0 Q5_1 Q8_0 Q8_0 Q8_0",
    "blk.4.ffn_down_exps.weight": "Q4_0 Q4_0 Q5_0 Q5_1 Q4_0 Q4_1 Q5_0 Q5_1 Q5_0 Q5_0 Q5_1 Q5_1 Q8_0 Q8_0",
    "blk.4.ffn_down_shexp.weight": "Q3_K Q3_K Q4_K Q5_K Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q4_K Q5_K Q5_K Q6_K Q8_0",
    "blk.5.ffn_down_shexp.weight": "Q3_K Q3_K Q4_K Q5_K Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q6_K Q5_K Q6_K Q6_K Q8_0",
}  # fmt: skip

# Qwen3-30B-A3B: 48 layers (use_more_bits: 0-5, 8, 11, ..., 41, 42-47; n/8 = 6, n/16 = 3),
# 128 experts, n_gqa 32/4 = 8; attn_v's counter is its layer. All rows multiples of 256.
QWEN3 = {
    "output.weight": HEAD,
    "token_embd.weight": BASE,
    "blk.0.attn_q.weight": BASE,
    "blk.0.attn_k.weight": BASE,
    "blk.1.ffn_up_exps.weight": BASE,
    "blk.1.ffn_gate_exps.weight": BASE,
    "blk.0.attn_q_norm.weight": KEEP,
    "blk.0.attn_v.weight": "Q4_K Q3_K Q5_K Q5_K Q4_0 Q4_1 Q5_0 Q5_1 Q5_K Q6_K Q5_K Q6_K Q6_K Q8_0",
    "blk.2.attn_v.weight": "Q4_K Q3_K Q4_K Q5_K Q4_0 Q4_1 Q5_0 Q5_1 Q5_K Q6_K Q5_K Q6_K Q6_K Q8_0",
    "blk.7.attn_v.weight": "Q4_K Q3_K Q4_K Q5_K Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q4_K Q5_K Q5_K Q6_K Q8_0",
    "blk.8.attn_v.weight": "Q4_K Q3_K Q4_K Q5_K Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q6_K Q5_K Q6_K Q6_K Q8_0",
    "blk.0.attn_output.weight": "Q3_K Q3_K Q4_K Q5_K Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q4_K Q5_K Q5_K Q6_K Q8_0",
    "blk.0.ffn_down_exps.weight": "Q3_K Q3_K Q5_K Q5_K Q4_0 Q4_1 Q5_0 Q5_1 Q5_K Q6_K Q5_K Q6_K Q6_K Q8_0",
    "blk.3.ffn_down_exps.weight": "Q3_K Q3_K Q4_K Q5_K Q4_0 Q4_1 Q5_0 Q5_1 Q5_K Q6_K Q5_K Q6_K Q6_K Q8_0",
    "blk.20.ffn_down_exps.weight": "Q3_K Q3_K Q4_K Q5_K Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q6_K Q5_K Q6_K Q6_K Q8_0",
    "blk.21.ffn_down_exps.weight": "Q3_K Q3_K Q4_K Q5_K Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q4_K Q5_K Q5_K Q6_K Q8_0",
}  # fmt: skip

# Qwen1.5-MoE-A2.7B: n_gqa 16/16 = 1 < 4 -> Q2_K's attn_v is Q3_K; 24 layers, 60 experts
QWEN2 = {
    "blk.0.attn_v.weight": "Q3_K Q3_K Q5_K Q5_K Q4_0 Q4_1 Q5_0 Q5_1 Q5_K Q6_K Q5_K Q6_K Q6_K Q8_0",
    "blk.0.attn_v.bias": KEEP,
}  # fmt: skip

# Mixtral-8x7B: exactly 8 experts -> attn_v and attn_k Q8_0, attn_output Q5_K for the
# low types (not Q3_K_L); 32 layers (use_more_bits: 0-3, 6, 9, ..., 27, 28-31; n/16 = 2)
MIXTRAL = {
    "output.weight": HEAD,
    "token_embd.weight": BASE,
    "blk.0.attn_q.weight": BASE,
    "blk.1.ffn_gate_exps.weight": BASE,
    "blk.0.attn_v.weight": " ".join(["Q8_0"] * 14),
    "blk.17.attn_v.weight": " ".join(["Q8_0"] * 14),
    "blk.3.attn_k.weight": " ".join(["Q8_0"] * 14),
    "blk.0.attn_output.weight": "Q5_K Q5_K Q5_K Q3_K Q4_0 Q4_1 Q5_0 Q5_1 Q5_K Q5_K Q5_K Q5_K Q6_K Q8_0",
    "blk.0.ffn_down_exps.weight": "Q3_K Q3_K Q5_K Q5_K Q4_0 Q4_1 Q5_0 Q5_1 Q5_K Q6_K Q5_K Q6_K Q6_K Q8_0",
    "blk.5.ffn_down_exps.weight": "Q3_K Q3_K Q4_K Q5_K Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q4_K Q5_K Q5_K Q6_K Q8_0",
    "blk.6.ffn_down_exps.weight": "Q3_K Q3_K Q4_K Q5_K Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q6_K Q5_K Q6_K Q6_K Q8_0",
}  # fmt: skip

MODELS = {
    "deepseek-v2-lite": DEEPSEEK,
    "qwen3-30b-a3b": QWEN3,
    "qwen1.5-moe-a2.7b": QWEN2,
    "mixtral-8x7b": MIXTRAL,
}


def test_columns_are_the_file_types():
    assert COLS.split() == list(FTYPES)


def _model(preset):
    from numoe.models import get as get_arch
    from numoe.synth import preset_config

    cfg = preset_config(preset)
    arch = get_arch(cfg.arch)
    return cfg.arch, dict(arch.gguf_metadata(cfg)), arch.tensor_specs(cfg)


@pytest.mark.parametrize("preset", list(MODELS))
def test_mix_matches_llama_cpp_tables(preset):
    arch, meta, shapes = _model(preset)
    for ftype, col in zip(COLS.split(), range(14)):
        got = plan(arch, meta, shapes, ftype)
        for name, row in MODELS[preset].items():
            want = row.split()[col]
            want_t = None if want == "-" else Q[want]
            assert got[name] == want_t, f"{preset} {ftype} {name}: {got[name]!r} != {want}"


NEW = ["Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_1", "Q5_0", "Q5_1", "Q4_K_S", "Q5_K_S"]
# relative L2 error of the last-position logits vs the F32 model (the 4-layer random model
# of test_quantize), measured: Q2_K 0.599, Q3_K_S 0.389, Q3_K_M 0.313, Q3_K_L 0.262, Q4_1
# 0.214, Q5_0 0.193, Q5_1 0.093, Q4_K_S 0.186, Q5_K_S 0.184 (router flips dominate, see
# test_quantize); bounds ~1.7x measured
LOGIT_BOUND = {"Q2_K": 1.0, "Q3_K_S": 0.7, "Q3_K_M": 0.55, "Q3_K_L": 0.45, "Q4_1": 0.4,
               "Q5_0": 0.35, "Q5_1": 0.2, "Q4_K_S": 0.35, "Q5_K_S": 0.35}  # fmt: skip


@pytest.fixture(scope="module")
def f32_model(tmp_path_factory):
    from test_quantize import _qwen_cfg, _write_f32

    path = tmp_path_factory.mktemp("qm") / "f32.gguf"
    _write_f32(path, _qwen_cfg())
    return path


@pytest.mark.parametrize("ftype", NEW)
def test_quantize_new_ftypes_end_to_end(tmp_path, capsys, f32_model, ftype):
    from test_quantize import _logits

    out = tmp_path / f"{ftype}.gguf"
    assert cli_main(["quantize", str(f32_model), str(out), "--type", ftype]) == 0
    capsys.readouterr()
    r = gguf.GGUFReader(out)
    assert r.fields["general.file_type"].contents() == FTYPES[ftype][1]
    types = {t.name: Q(t.tensor_type) for t in r.tensors}
    # 4 layers, 4 experts, n_gqa 2, rows of 256: no fallback; llama.cpp's rules by hand
    base = FTYPES[ftype][0]
    assert types["output.weight"] == Q.Q6_K and types["token_embd.weight"] == base
    assert types["blk.1.attn_q.weight"] == base and types["blk.1.ffn_up_exps.weight"] == base
    assert types["blk.1.ffn_gate_inp.weight"] == Q.F32
    down = {"Q2_K": Q.Q3_K, "Q3_K_M": Q.Q4_K, "Q3_K_L": Q.Q5_K}.get(ftype, base)
    assert types["blk.1.ffn_down_exps.weight"] == down  # Q3_K_M: layer 1 >= 4/16; Q4_K_S: >= 4/8
    attn_v = {"Q2_K": Q.Q3_K, "Q3_K_M": Q.Q5_K, "Q3_K_L": Q.Q5_K, "Q4_K_S": Q.Q5_K}
    assert types["blk.1.attn_v.weight"] == attn_v.get(ftype, base)  # Q3_K_M: i < 2
    assert types["blk.2.attn_v.weight"] == {**attn_v, "Q3_K_M": Q.Q4_K}.get(ftype, base)
    out_t = {"Q2_K": Q.Q3_K, "Q3_K_M": Q.Q4_K, "Q3_K_L": Q.Q5_K}.get(ftype, base)
    assert types["blk.0.attn_output.weight"] == out_t
    ref, got = _logits(f32_model), _logits(out)
    assert torch.isfinite(got).all()
    rel = float(torch.linalg.norm(got - ref) / torch.linalg.norm(ref))
    print(f"REL {ftype} {rel:.3f}")
    assert rel < LOGIT_BOUND[ftype], f"{ftype}: logits rel err {rel:.3f}"
    # tensors dequantize close to the source
    src = {t.name: t for t in gguf.GGUFReader(f32_model).tensors}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1)
        b = np.asarray(src[t.name].data, np.float32).reshape(-1)
        assert np.sqrt(np.mean((a - b) ** 2) / np.mean(b**2)) < 0.4, t.name


@pytest.mark.parametrize("ftype", ["Q2_K", "Q3_K_M", "Q4_K_S", "Q5_1"])
def test_synth_deepseek_fallbacks_load_and_run(tmp_path, capsys, ftype):
    from test_quantize import _logits

    out = tmp_path / "ds.gguf"
    assert cli_main(["synth", "-o", str(out), "--preset", "tiny-v2", "--type", ftype]) == 0
    capsys.readouterr()
    types = {t.name: Q(t.tensor_type) for t in gguf.GGUFReader(out).tensors}
    # rows of 64/32/16: every K type falls back (Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K ->
    # Q5_1, Q6_K -> Q8_0); tiny-v2 has 8 experts, so attn_output of Q2_K..Q4_K_S is Q5_K
    fb = {"Q2_K": Q.Q4_0, "Q3_K_M": Q.Q4_0, "Q4_K_S": Q.Q5_0, "Q5_1": Q.Q5_1}[ftype]
    assert types["blk.1.attn_q.weight"] == fb
    assert types["blk.1.attn_output.weight"] == Q.Q5_1  # Q5_K (or Q5_1) -> Q5_1
    assert open_gguf(out).tensors  # loads
    assert torch.isfinite(_logits(out)).all()
