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


def load(g: GGUFFile, placement: Placement, prefault: bool = True):
    """(config, model) for an opened GGUF file.

    prefault: map the whole file into the process first (numa_mem.prefault: what llama.cpp's
    MAP_POPULATE does) when it fits in the available memory and the routed experts are read
    from the map (policy off), so no decode step pays page faults on an expert's first use."""
    mod = get(g.arch)
    cfg = mod.config_from_gguf(g)
    if prefault:
        from .. import numa, numa_mem

        active = numa.active()
        if active is None or active[1].name == "off":
            numa_mem.prefault(g)
    return cfg, mod.Model(cfg, g, placement)
