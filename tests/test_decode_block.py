"""One decode step of a block in one C++ call (numoe._cpu.DecodeBlock, csrc/decode.*).

The oracle is the torch path (models/base.py Block.__call__, itself checked against
transformers in the architecture tests): the C++ block runs the same linear and MoE ops in
the same order, but its norms, rope, attention and routing are numoe's C++ ops where the
torch path has torch's, which round differently. So the logits agree to ATOL (F32 files:
~1e-6 apart; in the quantized ones those differences vanish when the activations are
quantized for the next projection, and the logits come out equal)."""

import gc
from dataclasses import replace

import numpy as np
import pytest
import torch
from hf_oracle import numoe_model

from numoe import _cpu, synth
from numoe.models import deepseek2, llama

PRESETS = ["tiny-qwen3moe", "tiny-qwen2moe", "tiny-mixtral", "tiny-v2", "tiny-v3"]
PROMPT, NEXT = [5, 17, 99, 3], [7, 8, 9, 200, 11, 42]
ATOL = 1e-5


def decode_logits(
    model, path: str, prompt_path: str | None = None, types=("f16", "f16")
) -> torch.Tensor:
    """Logits [len(NEXT), V] of NEXT decoded one token at a time after PROMPT, the decode
    steps through `path` ("cpp": the C++ blocks, which must have run them all; "torch": the
    Python blocks; "auto"), the prompt through prompt_path (default: path), on a cache of
    types (type_k, type_v)."""
    cache = model.new_cache(32, *types)
    model.forward(torch.tensor(PROMPT), cache, 0, path=prompt_path or path)  # one chunk
    before = model.cpp_steps
    steps = [
        model.forward(torch.tensor([t]), cache, len(PROMPT) + i, 1, path=path)
        for i, t in enumerate(NEXT)
    ]
    if path == "cpp":
        assert model.cpp_steps == before + len(NEXT)
    elif path == "torch":
        assert model.cpp_steps == before
    return torch.cat(steps)


@pytest.mark.parametrize("types", [("f16", "f16"), ("f32", "f32")], ids="-".join)
@pytest.mark.parametrize("qtype", ["F32", "Q4_K_M"])
@pytest.mark.parametrize("preset", PRESETS)
def test_cpp_blocks_equal_python_blocks(tmp_path, preset, qtype, types):
    """On F16 caches (the default) both paths store the same rounded K/V (the C++ store and
    torch's copy into a half tensor both round to nearest even) and attend over their exact
    float32 values, so they agree as closely as on float32 caches."""
    path = tmp_path / "m.gguf"
    synth.synth(preset, path, qtype)
    model = numoe_model(path)
    assert len(model.cpp_blocks()) == model.cfg.n_layer  # every block runs in C++
    got, want = decode_logits(model, "cpp", types=types), decode_logits(model, "torch", types=types)
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL)


def synth_with(monkeypatch, path, cfg, qtype="F32"):
    """A synthetic file at cfg (a preset's Config with fields replaced)."""
    monkeypatch.setattr(synth, "preset_config", lambda preset, layers=None: cfg)
    synth.synth("any", path, qtype)
    return numoe_model(path)


def test_dense_llama_runs_in_cpp(tmp_path, monkeypatch):
    """A dense GQA model (llama without experts): GQA + dense SwiGLU blocks."""
    cfg = replace(llama.PRESETS["tiny-mixtral"], n_expert=0, n_expert_used=0)
    model = synth_with(monkeypatch, tmp_path / "m.gguf", cfg, "Q4_K_M")
    assert len(model.cpp_blocks()) == cfg.n_layer
    torch.testing.assert_close(
        decode_logits(model, "cpp"), decode_logits(model, "torch"), rtol=0, atol=ATOL
    )


def test_block_the_cpp_path_cannot_take_falls_back(tmp_path):
    """A bias the C++ block does not add (here on a router): no C++ blocks at all, and the
    Python blocks add it."""
    path = tmp_path / "m.gguf"
    synth.synth("tiny-qwen3moe", path, "F32")
    model = numoe_model(path)
    plain = decode_logits(model, "torch")  # the C++ blocks are not made yet
    router = model.blocks[1].ffn.router
    router.bias = torch.arange(router.n_out, dtype=torch.float32)  # favours the last experts
    assert model.blocks[1].decode_block() is None and model.cpp_blocks() == []
    assert model.blocks[0].decode_block() is not None
    assert not model.can_decode_cpp(model.new_cache(8))
    for tokens in ([1], [1, 2]):
        with pytest.raises(ValueError, match="a block or the cache of this model is not so"):
            model.forward(torch.tensor(tokens), model.new_cache(8), 0, path="cpp")
    with pytest.raises(ValueError, match="path must be"):
        model.forward(torch.tensor([1]), model.new_cache(8), 0, path="python")
    biased = decode_logits(model, "auto")
    assert model.cpp_steps == 0  # "auto" took the Python blocks
    router.bias = torch.zeros(router.n_out)  # a zero bias gives the plain logits back
    assert not torch.equal(biased, plain) and torch.equal(decode_logits(model, "torch"), plain)


def test_block_keeps_what_it_points_into(tmp_path):
    """A block built from temporary arrays (norm copies) keeps them alive: after they are
    dropped and collected, its steps equal the model's own block's."""
    path = tmp_path / "m.gguf"
    synth.synth("tiny-qwen3moe", path, "F32")
    model = numoe_model(path)
    blk, c = model.blocks[0], model.cfg
    a = blk.attn
    db = _cpu.DecodeBlock(blk.attn_norm.numpy().copy(), blk.ffn_norm.numpy().copy(), blk.eps)
    norms = [n.numpy().copy() for n in (a.q_norm, a.k_norm)]
    db.set_gqa(
        q=a.q.op, k=a.k.op, v=a.v.op, o=a.o.op, H=a.H, Hkv=a.Hkv, Dh=a.Dh, rope_dim=a.rope.dim,
        neox=a.rope.neox, scale=a.Dh**-0.5, q_norm=norms[0], k_norm=norms[1],
    )  # fmt: skip
    assert blk.ffn.set_step(db)
    del norms
    gc.collect()
    [np.full(4096, 7.0, np.float32) for _ in range(64)]  # reuse freed memory, if any was
    ref = model.cpp_blocks()[0]
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((1, c.n_embd)).astype(np.float32)
    cos, sin = (t[3].contiguous().numpy() for t in model.rope.cos_sin(0, 8, torch.device("cpu")))
    out = []
    for step in (db, ref):
        x, f = x0.copy(), np.zeros_like(x0)
        kv = [np.zeros((8, c.n_head_kv, c.head_dim), np.float32) for _ in range(2)]
        step.step(x, f, False, *kv, 3, cos, sin)
        out.append((x, f, *kv))
    for got, want in zip(*out):
        assert np.array_equal(got, want)


def test_combined_kv_b_runs_in_cpp(tmp_path, monkeypatch):
    """Older DeepSeek files (attn_kv_b, no k_b/v_b): the halves become F32 ops on load."""
    cfg = replace(deepseek2.PRESETS["tiny-v2"], split_kv_b=False)
    model = synth_with(monkeypatch, tmp_path / "m.gguf", cfg)
    assert model.blocks[0].attn.k_b.op.type_id == 0  # F32, groups = heads
    assert len(model.cpp_blocks()) == cfg.n_layer
    torch.testing.assert_close(
        decode_logits(model, "cpp"), decode_logits(model, "torch"), rtol=0, atol=ATOL
    )


@pytest.fixture(scope="module")
def qwen3_block(tmp_path_factory):
    path = tmp_path_factory.mktemp("blk") / "m.gguf"
    synth.synth("tiny-qwen3moe", path, "F32")
    model = numoe_model(path)
    return model, model.cpp_blocks()[0]


def test_step_rejects_bad_arguments(qwen3_block):
    model, blk = qwen3_block
    c = model.cfg
    D, W = c.n_embd, c.n_head_kv * c.head_dim
    x, f = np.zeros((1, D), np.float32), np.zeros((1, D), np.float32)
    k, v = np.zeros((8, c.n_head_kv, c.head_dim), np.float32), np.zeros((8, W), np.float32)
    cs = np.ones(c.head_dim // 2, np.float32)
    blk.step(x, f, False, k, v, 7, cs, cs)  # fine: the last row of an 8-row cache
    bad = {
        "position outside the cache": lambda: blk.step(x, f, False, k, v, 8, cs, cs),
        "x and f must hold": lambda: blk.step(x[:, :-1], f, False, k, v, 0, cs, cs),
        "cache 1 must be": lambda: blk.step(x, f, False, k, v[:, 1:].copy(), 0, cs, cs),
        "differ in n_ctx": lambda: blk.step(x, f, False, k, v[:4], 0, cs, cs),
        "cos and sin must hold": lambda: blk.step(x, f, False, k, v, 0, cs[:-1], cs[:-1]),
    }
    for msg, call in bad.items():
        with pytest.raises(ValueError, match=msg):
            call()
    with pytest.raises(TypeError):  # float64 is never silently converted
        blk.step(x.astype(np.float64), f, False, k, v, 0, cs, cs)


def test_blocks_check_shapes_when_set(qwen3_block):
    model, _ = qwen3_block
    attn, moe = model.blocks[0].attn, model.blocks[0].ffn
    w = np.ones(model.cfg.n_embd, np.float32)
    db = _cpu.DecodeBlock(w, w, 1e-6)
    with pytest.raises(ValueError, match="set an attention and an FFN first"):
        db.step(w, w.copy(), False, w[None], w[None], 0, w, w)
    dims = {
        "H": attn.H,
        "Hkv": attn.Hkv,
        "Dh": attn.Dh,
        "rope_dim": attn.Dh,
        "neox": True,
        "scale": 1.0,
    }
    ops = {"q": attn.q.op, "k": attn.k.op, "v": attn.v.op, "o": attn.o.op}
    with pytest.raises(ValueError, match="q must be"):  # k given as q
        db.set_gqa(**{**ops, "q": attn.k.op}, **dims)
    with pytest.raises(ValueError, match="q must be a numoe._cpu.Linear"):  # not the layer
        db.set_gqa(**{**ops, "q": attn.q}, **dims)
    with pytest.raises(ValueError, match="bq must be a contiguous float32 array"):
        db.set_gqa(**ops, **dims, bq=np.zeros(3, np.float32))
    with pytest.raises(TypeError):  # keyword arguments only
        db.set_gqa(*ops.values(), *dims.values())
    moe_args = {"router": moe.router.op, "experts": moe.experts.op, "k": 2, "gating": "softmax"}
    with pytest.raises(ValueError, match="router must be"):
        db.set_moe(**{**moe_args, "router": attn.q.op})
    with pytest.raises(ValueError, match="unknown expert gating"):
        db.set_moe(**{**moe_args, "gating": "relu"})
    with pytest.raises(ValueError, match="experts must be a numoe._cpu.MoE"):
        db.set_moe(**{**moe_args, "experts": moe.router.op})
    with pytest.raises(ValueError, match="n_group must divide E"):  # checked now, not mid-step
        db.set_moe(**moe_args, n_group=3, topk_group=2)
    with pytest.raises(ValueError, match="must be \\[D\\]"):
        _cpu.DecodeBlock(w, w[:-1], 1e-6)


def test_profile_counts_every_stage(tmp_path):
    """decode_profiling: per stage, the calls of every block and the weight bytes they read."""
    path = tmp_path / "m.gguf"
    synth.synth("tiny-v2", path, "Q4_K_M")  # MLA; layer 0 dense, layer 1 MoE + shared expert
    model = numoe_model(path)
    _cpu.decode_profiling(True)
    try:
        decode_logits(model, "cpp", prompt_path="torch")  # the decode steps only
        prof = {name: (sec, calls, nbytes) for name, sec, calls, nbytes in _cpu.decode_profile()}
    finally:
        _cpu.decode_profiling(False)
    n, L = len(NEXT), model.cfg.n_layer
    assert prof["norms"][1] == 2 * n * L
    assert prof["MLA q_b"][1] == 0  # tiny-v2 has no q LoRA
    attn = [b.attn for b in model.blocks]
    for name, lins in [
        ("attn in (q, k, v / q, kv_a)", [[a.q, a.kv_a] for a in attn]),
        ("MLA k_b", [[a.k_b] for a in attn]),
        ("attn output", [[a.o] for a in attn]),
    ]:
        assert prof[name][1] == n * L
        assert prof[name][2] == n * sum(lin.op.nbytes for ls in lins for lin in ls)
    moe = model.blocks[1].ffn
    assert prof["MoE op (k experts)"][1] == n
    k = moe.route_args["k"]
    assert prof["MoE op (k experts)"][2] == n * k * moe.experts.op.expert_nbytes
    assert all(sec > 0 for sec, calls, _ in prof.values() if calls)
    _cpu.decode_profiling(False)
    decode_logits(model, "cpp")  # off: nothing counted
    assert all(calls == 0 for _, _, calls, _ in _cpu.decode_profile())
