"""End to end on files of the type mixes people run large MoE models from, against
transformers (quant_oracle.QuantReference: the file's weights as the `gguf` package
dequantizes them, each activation rounded as numoe rounds it for that weight's type).

The files: a tiny converted model (test_quantized_e2e.MODELS; experts of 512 rows for
qwen3moe and deepseek-v3, so that --numa shard splits them in two) whose weight tensors are
replaced by random valid blocks (tests/random_quant.py; root mean square 0.05, the converted
model's own) of the types a mix gives each tensor; norms, routers and biases stay as
converted. Since the reference takes the file's own dequantized weights, random blocks are
as good a model as any. The mixes:

- IQ_MIX (qwen3moe), like llama.cpp's IQ2_XXS "dynamic" files: expert gate/up IQ2_XXS
  (blk.0) and IQ1_S (blk.1), down IQ3_XXS and IQ4_XS, attention Q4_K / Q5_0 / IQ4_NL,
  output Q6_K, token_embd IQ4_XS.
- Q2K_MIX (deepseek-v3), like llama.cpp's Q2_K: gate/up Q2_K, down Q3_K (the routed
  experts, the dense layer and the shared expert), attn_v_b (the value) Q4_K, rows that do
  not fit 256 (attn_k_b: 32, attn_output: 128) at llama.cpp's fallback IQ4_NL / Q5_1.
- IQ_MIX_2 (mixtral), the other i-quants: gate/up IQ2_XS / IQ1_M, down IQ3_S / IQ2_S,
  attention Q4_1 / Q5_1 / Q3_K / IQ3_S, token_embd IQ2_S.

Checks: quant_oracle.logit_mismatch as test_quantized_e2e makes it (B independent short
sequences, at least half the positions within TIGHT = 1e-5 of the largest |logit|), for a
prefill of each sequence and for decode steps one token at a time through the C++ decode
blocks (path="cpp", model.cpp_steps counted). The same check fails on a file whose experts'
down projections in one layer are scaled by 0.9 through their block scales.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V
from hf_oracle import numoe_model, randomize
from quant_oracle import QuantReference, logit_mismatch, rel_error, scale_experts, tensor_types
from random_quant import block_size, random_blocks
from test_quantized_e2e import DSV3, MODELS, QWEN3, B, P, T, decode_logits, prefill_logits

from numoe.convert import convert_hf
from numoe.gguf import open_gguf
from numoe.gguf.quantize import _kv_types
from numoe.gguf.write import Raw, write_gguf
from numoe.models import load
from numoe.runtime import numa, pool
from numoe.runtime.settings import Runtime
from numoe.runtime.topology import Topology

TIGHT = 1e-5
RMS = 0.05

# tensor kind (the name's part after blk.N.) -> type, or a tuple: one type per layer
IQ_MIX = {
    "token_embd": Q.IQ4_XS,
    "output": Q.Q6_K,
    "attn_q": Q.Q4_K,
    "attn_k": Q.Q5_0,
    "attn_v": Q.IQ4_NL,
    "attn_output": Q.Q4_K,
    "ffn_gate_exps": (Q.IQ2_XXS, Q.IQ1_S),
    "ffn_up_exps": (Q.IQ2_XXS, Q.IQ1_S),
    "ffn_down_exps": (Q.IQ3_XXS, Q.IQ4_XS),
}
Q2K_MIX = {
    "token_embd": Q.Q2_K,
    "output": Q.Q6_K,
    "attn_q_a": Q.Q3_K,
    "attn_q_b": Q.Q2_K,
    "attn_kv_a_mqa": Q.Q3_K,
    "attn_k_b": Q.IQ4_NL,  # rows of 32: llama.cpp's fallback for Q2_K / Q3_K
    "attn_v_b": Q.Q4_K,
    "attn_output": Q.Q5_1,  # rows of 128
    "ffn_gate": Q.Q2_K,  # blk.0, dense
    "ffn_up": Q.Q2_K,
    "ffn_down": Q.Q3_K,
    "ffn_gate_exps": Q.Q2_K,
    "ffn_up_exps": Q.Q2_K,
    "ffn_down_exps": Q.Q3_K,
    "ffn_gate_shexp": Q.Q2_K,
    "ffn_up_shexp": Q.Q2_K,
    "ffn_down_shexp": Q.Q3_K,
}
IQ_MIX_2 = {
    "token_embd": Q.IQ2_S,
    "output": Q.Q6_K,
    "attn_q": Q.Q4_1,
    "attn_k": Q.Q3_K,
    "attn_v": Q.Q5_1,
    "attn_output": Q.IQ3_S,
    "ffn_gate_exps": (Q.IQ2_XS, Q.IQ1_M),
    "ffn_up_exps": (Q.IQ2_XS, Q.IQ1_M),
    "ffn_down_exps": (Q.IQ3_S, Q.IQ2_S),
}
# test_quantized_e2e's models with experts of 512 rows, so that --numa shard splits them
# (at the down type's 256-blocks) into two slices
FAMILIES = {
    **MODELS,
    "qwen3moe-f512": lambda: randomize(
        tf.Qwen3MoeForCausalLM(tf.Qwen3MoeConfig(**{**QWEN3, "moe_intermediate_size": 512})),
        std=0.05,
    ),
    "deepseek-v3-f512": lambda: randomize(
        tf.DeepseekV3ForCausalLM(tf.DeepseekV3Config(**{**DSV3, "moe_intermediate_size": 512})),
        std=0.05,
    ),
}
CASES = {  # name -> (family, mix, the MoE layers)
    "iq2_xxs-qwen3moe": ("qwen3moe-f512", IQ_MIX, [0, 1]),
    "q2_k-deepseek-v3": ("deepseek-v3-f512", Q2K_MIX, [1]),
    "iq-mixtral": ("mixtral", IQ_MIX_2, [0, 1]),
}


def mix_type(mix, name: str) -> Q | None:
    """The type `mix` gives tensor `name` (None: keep the converted tensor)."""
    parts = name.split(".")
    if parts[0] == "blk":
        q = mix.get(parts[2])
        return q[int(parts[1])] if isinstance(q, tuple) else q
    return mix.get(parts[0])


def write_mixed(src: Path, dst: Path, mix, rng) -> dict[str, Q]:
    """`src` (a converted GGUF) at `dst` with the tensors `mix` names replaced by random
    valid blocks of their types; metadata copied with its stored types."""
    g = open_gguf(src)
    kv = _kv_types(g.path)
    meta = {
        k: (v, kv[k][1] if kv[k][0] == V.ARRAY else kv[k][0])
        for k, v in g.meta.items()
        if k != "general.architecture"
    }
    tensors, written = {}, {}
    for name, t in g.tensors.items():
        q = mix_type(mix, name)
        if q is None:
            tensors[name] = Raw(t.shape, t.qtype, t.data)
            written[name] = t.qtype
            continue
        cols = t.shape[-1]
        assert cols % block_size(q) == 0, f"{name}: rows of {cols} for {q.name}"
        raw, _ = random_blocks(q, t.n_elements // cols, cols, rng, rms=RMS)
        tensors[name] = Raw(t.shape, q, raw.reshape(-1))
        written[name] = q
    write_gguf(dst, g.arch, meta, tensors)
    return written


@dataclass
class Built:
    path: Path
    tokens: np.ndarray  # [B, T]
    ref: object  # QuantReference logits [B, T, V]
    written: dict[str, Q]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    done: dict[str, Built] = {}

    def get(case: str) -> Built:
        if case not in done:
            family, mix, _ = CASES[case]
            hf = FAMILIES[family]()
            d = tmp_path_factory.mktemp(case)
            cfg = convert_hf(hf, d / "f32.gguf", qtype="F32")
            written = write_mixed(d / "f32.gguf", d / "model.gguf", mix, np.random.default_rng(7))
            tokens = np.random.default_rng(3).integers(0, cfg.n_vocab, size=(B, T))
            ref = QuantReference(hf, d / "model.gguf")(tokens)
            done[case] = Built(d / "model.gguf", tokens, ref, written)
        return done[case]

    return get


def mismatch(ours, ref) -> str | None:
    return logit_mismatch(ours, ref, tol=TIGHT, quantile=0.5)


@pytest.mark.parametrize("case", CASES)
def test_mixed_file_prefill_matches_reference(built, case):
    b = built(case)
    _, mix, _ = CASES[case]
    stored = tensor_types(b.path)
    assert stored == b.written
    want = {q for v in mix.values() for q in (v if isinstance(v, tuple) else (v,))}
    assert want <= set(stored.values()), want - set(stored.values())
    problem = mismatch(prefill_logits(numoe_model(b.path), b.tokens), b.ref)
    assert problem is None, f"{case}: {problem}"


@pytest.mark.parametrize("case", CASES)
def test_mixed_file_decode_steps_match_reference(built, case):
    """The first P tokens as a prompt, then one token per forward through the C++ decode
    blocks."""
    b = built(case)
    model = numoe_model(b.path)
    steps = model.cpp_steps
    cpp = decode_logits(model, b.tokens, "cpp")
    assert model.cpp_steps - steps == B * (T - P)
    problem = mismatch(cpp[:, P:], b.ref[:, P:])
    assert problem is None, f"{case} decode: {problem}"


@pytest.mark.parametrize("case", CASES)
def test_check_catches_scaled_experts(built, tmp_path, case):
    """The check fails when one MoE layer's experts' down projections (IQ3_XXS, Q3_K,
    IQ3_S) read their block scales x0.9; the reference computes with the original file."""
    b = built(case)
    layer = CASES[case][2][:1]
    changed = scale_experts(b.path, tmp_path / "scaled.gguf", 0.9, layer)
    assert changed == [f"blk.{layer[0]}.ffn_down_exps.weight"]
    ours = prefill_logits(numoe_model(tmp_path / "scaled.gguf"), b.tokens)
    assert mismatch(ours, b.ref) is not None, f"x0.9 on {changed} passed the check"
    assert rel_error(ours, b.ref).min() > 100 * TIGHT


@pytest.mark.parametrize("case", ["iq2_xxs-qwen3moe", "q2_k-deepseek-v3"])
def test_mixed_file_numa_shard_and_replicate(built, case):
    """--numa-nodes N,N with shard / replicate (2 logical nodes on this machine's first node)
    on the mixed file: the experts' F = 512 split at their down type's blocks; prefill and C++
    decode logits equal off's within 1e-3 of the largest |logit| (test_numa_shard's bound:
    shard only changes the order of the down products' sum), replicate equals shard."""
    topo = Topology.read()
    n0 = numa.plan_threads(topo).nodes[0].node
    if len(topo.cores_by_node()[n0]) < 2:
        pytest.skip("needs two cores on one node for two logical nodes")
    b = built(case)
    logits = {}
    try:
        pool.set_plan(numa.plan_threads(topo, numa_nodes=[n0, n0]))
        for name in ("off", "shard", "replicate"):
            rt = Runtime.create(numa_nodes=[n0, n0], numa=name)
            rt.activate()
            _, model = load(open_gguf(b.path), rt)
            experts = [blk.ffn.experts for blk in model.blocks if hasattr(blk.ffn, "experts")]
            assert experts and all(
                ex.policy == name and ex.op.n_slices == (1 if name == "off" else 2)
                for ex in experts
            )
            steps = model.cpp_steps
            logits[name] = decode_logits(model, b.tokens[:2], "cpp")
            assert model.cpp_steps - steps == 2 * (T - P)
            del model
    finally:
        pool.set_threads(None)
    scale = logits["off"].abs().max().item()
    err = (logits["shard"] - logits["off"]).abs().max().item() / scale
    assert err < 1e-3, err
    assert torch.equal(logits["replicate"], logits["shard"])
    problem = mismatch(logits["shard"], b.ref[:2])
    assert problem is None, f"{case} shard: {problem}"
