"""Random-weight models of any supported architecture at real shapes (`numoe synth`).

Weights are drawn so that activations stay O(1) through the layers (std 1/sqrt(fan_in));
the output is a standard GGUF file (standard tensor names and metadata keys) with a
working synthetic tokenizer, readable by other GGUF readers.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import numpy as np

from .convert import keep_f32
from .gguf.write import Lazy, write_gguf
from .models import ARCHITECTURES
from .models import get as get_arch
from .text import synth_vocab_metadata

DEFAULT_PRESET = "tiny-qwen3moe"


def presets() -> dict[str, tuple[str, object]]:
    """preset name -> (architecture module name, Config), over every architecture."""
    out = {}
    for modname in sorted(set(ARCHITECTURES.values())):
        mod = importlib.import_module(f".models.{modname}", __package__)
        for name, cfg in mod.PRESETS.items():
            out[name] = (modname, cfg)
    return out


def preset_config(preset: str, layers: int | None = None):
    table = presets()
    if preset not in table:
        raise ValueError(f"unknown preset '{preset}': choose one of {', '.join(table)}")
    cfg = dataclasses.replace(table[preset][1])
    if layers is not None:
        if layers < 1:
            raise ValueError(f"--layers must be >= 1, got {layers}")
        cfg.n_layer = layers
        if hasattr(cfg, "n_layer_dense"):  # keep leading dense layers within the count
            cfg.n_layer_dense = min(cfg.n_layer_dense, layers)
    return cfg


def random_tensor(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name.endswith("norm.weight"):
        return (1.0 + 0.05 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    if len(shape) == 1 or name.endswith(".bias"):
        return (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    fan_in = shape[-1]
    if name.startswith("token_embd"):
        fan_in = 1  # embeddings feed a norm: unit scale
    std = np.float32(1.0 / np.sqrt(fan_in))
    a = rng.standard_normal(shape, dtype=np.float32)
    a *= std
    return a


def _maker(seed: np.random.SeedSequence, name: str, shape: tuple[int, ...]):
    return lambda: random_tensor(np.random.default_rng(seed), name, shape)


def synth(
    preset: str,
    path: str | Path,
    qtype: str = "Q8_0",
    layers: int | None = None,
    seed: int = 0,
    on_tensor=None,
):
    """Write a random-weight GGUF at `preset` shapes to `path`; returns its Config.
    on_tensor(tensors written, tensors, bytes written, bytes): progress (write_gguf)."""
    cfg = preset_config(preset, layers)
    arch = get_arch(cfg.arch)
    specs = arch.tensor_specs(cfg)
    # one generator per tensor: same seed, same tensor, whatever the order of writing
    seeds = np.random.SeedSequence(seed).spawn(len(specs))
    tensors = {
        name: Lazy(shape, _maker(s, name, shape)) for (name, shape), s in zip(specs.items(), seeds)
    }
    meta = dict(arch.gguf_metadata(cfg))
    meta["general.name"] = f"numoe-synth-{preset}"
    meta |= synth_vocab_metadata(cfg.n_vocab, getattr(arch, "TOKENIZER_KIND", "gpt2"))
    write_gguf(path, cfg.arch, meta, tensors, qtype, keep_f32=keep_f32, on_tensor=on_tensor)
    return cfg
