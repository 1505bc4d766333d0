"""Hugging Face (`transformers`) model -> GGUF, with llama.cpp's tensor names and layouts.

Used by the tests to run the same random model in numoe and in transformers, and by
users who have a safetensors checkpoint loaded in transformers. One module per
architecture maps the config; the tensor names shared by all live in `common`.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from ..gguf.write import write_gguf
from ..models import get as get_arch
from ..text import synth_vocab_metadata

# transformers model_type -> converter module in this package
CONVERTERS = {
    "deepseek_v2": "deepseek2",
    "deepseek_v3": "deepseek2",
    "qwen3_moe": "qwen3_moe",
    "qwen2_moe": "qwen3_moe",
    "mixtral": "llama",
    "llama": "llama",
}


def convert_hf(model, path: str | Path, qtype: str = "F32", tokenizer_meta=None):
    """Write a transformers causal-LM `model` to GGUF at `path`; returns the numoe Config.

    tokenizer_meta: GGUF tokenizer keys; default a synthetic vocabulary of the model's size.
    """
    model_type = model.config.model_type
    if model_type not in CONVERTERS:
        raise ValueError(f"no converter for transformers model_type '{model_type}'")
    conv = importlib.import_module(f".{CONVERTERS[model_type]}", __name__)
    cfg = conv.config_from_hf(model.config)
    arch = get_arch(cfg.arch)
    tensors: dict[str, np.ndarray] = {}
    for name, t in model.state_dict().items():
        for gname, arr in conv.convert_tensor(name, t.detach().float(), cfg):
            tensors[gname] = np.ascontiguousarray(arr.numpy(), dtype=np.float32)
    specs = arch.tensor_specs(cfg)
    if "output.weight" not in tensors:  # tied embeddings: no output tensor, as llama.cpp
        specs.pop("output.weight", None)
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != specs:
        bad = sorted(set(got.items()) ^ set(specs.items()))[:6]
        raise ValueError(f"converted tensors do not match the {cfg.arch} layout: {bad}")
    meta = dict(arch.gguf_metadata(cfg))
    meta |= tokenizer_meta or synth_vocab_metadata(
        cfg.n_vocab, getattr(arch, "TOKENIZER_KIND", "gpt2")
    )
    write_gguf(path, cfg.arch, meta, tensors, qtype, keep_f32=keep_f32)
    return cfg


def keep_f32(name: str, shape: tuple[int, ...]) -> bool:
    """Tensors llama.cpp keeps at full precision whatever the file type: the routers."""
    return "ffn_gate_inp" in name or "exp_probs_b" in name
