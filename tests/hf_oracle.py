"""The transformers oracle: the same tiny random model run by transformers and by numoe.

`check_against_hf(hf_model, tmp_path)` converts the model to GGUF with numoe.convert,
loads it with numoe, and asserts that (1) last-position logits for a prompt agree and
(2) greedy generation with the KV cache gives the same tokens as transformers'.

Those run on float32 KV caches (-ctk/-ctv f32): LOGIT_ATOL is float32 against float32 in
another summation order, and F16 caches (numoe's default, as llama.cpp's) round every K and
V to 11 significant bits, which moves these random models' O(1) logits by up to ~1e-2 (more
than LOGIT_ATOL by design, not by error). (3) The F16 cache's logits over the prompt are
then held to F16_LOGIT_ATOL against transformers, and to within the same of the F32 run.
"""

from __future__ import annotations

import numpy as np
import torch

from numoe.convert import convert_hf
from numoe.engine import Session
from numoe.gguf import open_gguf
from numoe.models import load
from numoe.runtime.settings import Runtime
from numoe.sampling import Sampler, SamplingParams

LOGIT_ATOL = 1e-3  # float32 vs float32 with a different summation order; logits are O(1)
# F16 KV caches: each cached value's relative rounding error <= 2^-11 (~4.9e-4); through the
# attention and a few layers into O(1) logits that stays within this (observed: <= ~5e-3).
F16_LOGIT_ATOL = 2e-2


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.15) -> torch.nn.Module:
    """Re-draw every parameter so that logits are far from ties (the HF default init of
    std 0.02 gives near-uniform logits, where greedy picks would be decided by rounding)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * r)
            elif p.ndim == 1:
                p.copy_(0.1 * r)
            else:
                p.copy_(std * r)
        for name, b in model.named_buffers():
            if "e_score_correction_bias" in name:
                b.copy_(0.05 * torch.randn(b.shape, generator=g))
    return model.float().eval()


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            ids,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            use_cache=True,
        )
    return out[0, len(prompt) :].tolist()


def numoe_model(path, device: str = "cpu"):
    g = open_gguf(path)
    _, model = load(g, Runtime.create(device=device))
    return model


def check_against_hf(hf_model, tmp_path, qtype="F32", n_gen=32, atol=LOGIT_ATOL, seed=1):
    path = tmp_path / "model.gguf"
    cfg = convert_hf(hf_model, path, qtype=qtype)
    model = numoe_model(path)
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, cfg.n_vocab, size=11).tolist()

    with torch.no_grad():
        ref = hf_model(torch.tensor([prompt])).logits[0].float()  # [T, V]
    f32 = {"type_k": "f32", "type_v": "f32"}  # the tight oracle: float32 caches (module doc)
    sess = Session(model, n_ctx=64, chunk=4, **f32)  # chunked prefill: 3 chunks
    ours = sess.prefill(prompt)  # [V]
    err = (ours - ref[-1]).abs().max().item()
    assert err < atol, f"last-position logits differ by {err} (atol {atol})"
    full = model.forward(torch.tensor(prompt), model.new_cache(64, **f32), 0)  # [T, V]
    err_all = (full - ref).abs().max().item()
    assert err_all < atol, f"logits over the prompt differ by {err_all}"

    # F16 caches (the default): the prompt's logits in chunks, each chunk reading the
    # earlier chunks' rounded K/V (the torch path) and decode steps reading them (C++ path)
    cache16 = model.new_cache(64)
    assert cache16.types == ("f16", "f16")
    half = torch.cat(
        [model.forward(torch.tensor(prompt[:6]), cache16, 0)]
        + [model.forward(torch.tensor([t]), cache16, 6 + i) for i, t in enumerate(prompt[6:])]
    )  # [T, V]
    err16 = (half - ref).abs().max().item()
    assert err16 < F16_LOGIT_ATOL, f"F16 cache: logits differ from transformers' by {err16}"
    assert (half - full).abs().max().item() < F16_LOGIT_ATOL

    want = hf_greedy(hf_model, prompt, n_gen)
    sess = Session(model, n_ctx=64, **f32)
    got = list(sess.generate(prompt, n_gen, Sampler(SamplingParams(temperature=0))))
    assert got == want, f"greedy tokens differ:\n numoe {got}\n hf    {want}"
    return cfg


def dequantized_copy(hf_model, path):
    """A copy of `hf_model` whose weights are those stored in the GGUF file at `path`
    (dequantized by the `gguf` package), so that transformers computes with exactly the
    weights numoe reads: the remaining difference is numoe's activation quantization.

    The HF -> GGUF layout map comes from running the project's converter on tensors of
    element indices (float64, exact), so reshapes, splits, transposes and permutations all
    invert without a second hand-written mapping."""
    import copy
    import importlib

    import gguf

    from numoe.convert import CONVERTERS

    conv = importlib.import_module(f"numoe.convert.{CONVERTERS[hf_model.config.model_type]}")
    reader = gguf.GGUFReader(path)
    stored = {}
    for t in reader.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        stored[t.name] = np.asarray(a, dtype=np.float64).reshape(-1)
    cfg = conv.config_from_hf(hf_model.config)
    out = copy.deepcopy(hf_model)
    with torch.no_grad():
        for name, p in out.state_dict().items():
            idx = torch.arange(p.numel(), dtype=torch.float64).view(p.shape)
            flat = p.view(-1)
            for gname, a in conv.convert_tensor(name, idx, cfg):
                if a.dtype != torch.float64 or gname not in stored:
                    continue
                pos = a.reshape(-1).long()
                flat[pos] = torch.from_numpy(stored[gname]).to(p.dtype)
    return out
