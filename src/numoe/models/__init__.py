"""Architectures, one module each, looked up by GGUF `general.architecture`."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..gguf import GGUFError, GGUFFile
from ..placement import Placement

# GGUF general.architecture -> module in this package
ARCHITECTURES = {
    "deepseek2": "deepseek2",
    "qwen3moe": "qwen3_moe",
    "qwen2moe": "qwen3_moe",
    "llama": "llama",
}


def get(arch: str) -> ModuleType:
    """The module implementing a GGUF architecture name; GGUFError for unknown ones."""
    if arch not in ARCHITECTURES:
        raise GGUFError(
            f"unknown architecture '{arch}': numoe runs {', '.join(sorted(ARCHITECTURES))}"
        )
    return importlib.import_module(f".{ARCHITECTURES[arch]}", __name__)


def load(g: GGUFFile, placement: Placement):
    """(config, model) for an opened GGUF file."""
    mod = get(g.arch)
    cfg = mod.config_from_gguf(g)
    return cfg, mod.Model(cfg, g, placement)
