"""KV caches that grow with their tokens (numoe.cache): memory in GROW steps by doubling up
to n_ctx, contents kept across growth, ContextFull past n_ctx, numpy views made again after
growth; and a model decoding across the growth points gives the logits of a cache that never
had to grow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_oracle import numoe_model

from numoe import synth
from numoe.cache import GROW, ContextFull, KVCache, MLACache
from numoe.engine import Session


def test_capacity_grows_by_doubling_up_to_n_ctx():
    c = KVCache(2, 3000, 2, 8, 8, "cpu")
    assert c.capacity == GROW and c.k.shape == (2, GROW, 2, 8)
    c.reserve(GROW)  # fits: nothing moves
    assert c.capacity == GROW
    caps = []
    for n in (GROW + 1, 2 * GROW + 1, 700, 1500, 2999, 3000):
        c.reserve(n)
        caps.append(c.capacity)
    assert caps == [2 * GROW, 4 * GROW, 4 * GROW, 8 * GROW, 3000, 3000]
    with pytest.raises(ContextFull, match="3001 tokens needed, 3000"):
        c.reserve(3001)
    small = MLACache(1, 100, 16, 4, "cpu")
    assert small.capacity == 100 and small.latent.shape == (1, 100, 16)


def test_growth_keeps_contents_and_remakes_views():
    c = MLACache(3, 4096, 16, 4, "cpu", "f32", "f32")
    lat = torch.randn(3, 200, 16)
    for layer in range(3):
        c.update(layer, 0, lat[layer], lat[layer, :, :4])
    view = c.numpy_layer(1)[0]
    assert view.shape == (GROW, 16)
    c.update(2, 200, torch.ones(400, 16), torch.ones(400, 4))  # 600 > 2 x 256: 768
    assert c.capacity == 768 and c.nbytes == 3 * 768 * 20 * 4
    assert torch.equal(c.latent[:, :200], lat) and torch.equal(c.k_rope[:, :200], lat[..., :4])
    new = c.numpy_layer(1)[0]
    assert new.shape == (768, 16) and np.shares_memory(new, c.latent.numpy())
    assert not np.shares_memory(view, c.latent.numpy())  # the old view is not used again


def test_truncate_gives_memory_back():
    c = KVCache(1, 8192, 1, 4, 4, "cpu")
    c.reserve(3000)
    assert c.capacity == 3072  # max(3000, 2 x 256) in whole 256 steps
    c.k[0, :3000] = torch.arange(3000.0)[:, None, None]
    c.truncate(300)
    assert c.capacity == 2 * GROW
    assert torch.equal(c.k[0, :300, 0, 0], torch.arange(300.0))
    c.truncate(10)
    assert c.capacity == GROW
    c.truncate(5000)  # never grows
    assert c.capacity == GROW


@pytest.mark.parametrize("preset", ["tiny-qwen3moe", "tiny-v2"])
def test_decoding_across_growth_equals_a_full_cache(tmp_path, preset, monkeypatch):
    """Prefill and decode past two growth points: logits equal, bit for bit, those of a cache
    allocated whole at the start (GROW patched to n_ctx), in the C++ and the torch path;
    Session's behaviour (prompt reuse, context full) is unchanged."""
    path = tmp_path / "m.gguf"
    synth.synth(preset, path, "Q4_K_M")
    model = numoe_model(path)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, model.cfg.n_vocab, 300).tolist()
    new = rng.integers(0, model.cfg.n_vocab, 4).tolist()

    def run(path_):
        cache = model.new_cache(600)
        model.forward(torch.tensor(prompt[:250]), cache, 0, n_logits=0)
        out = [model.forward(torch.tensor(prompt[250:]), cache, 250, n_logits=1)[0]]
        for i, t in enumerate(new):  # 300.. : the cache grew at 256, then at 512 below
            out.append(model.forward(torch.tensor([t]), cache, 300 + i, 1, path=path_)[0])
        big = model.forward_batch([1] * 212, [cache] * 212, list(range(304, 516)), [211])
        return torch.stack(out + [big[0]]), cache.capacity

    grown = {p: run(p) for p in ("cpp", "torch")}
    monkeypatch.setattr("numoe.cache.GROW", 600)
    whole = {p: run(p) for p in ("cpp", "torch")}
    for p in ("cpp", "torch"):
        assert grown[p][1] == 600 and whole[p][1] == 600
        assert torch.equal(grown[p][0], whole[p][0]), p

    s = Session(model, n_ctx=40)
    assert s.cache.capacity == 40
    s.prefill(prompt[:30])
    with pytest.raises(ContextFull):
        s.prefill(prompt[:41])
