"""Architectures, one module each, looked up by GGUF `general.architecture`."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..gguf import GGUFError, GGUFFile
from ..quote import quote
from ..runtime.memory import prefault as prefault_file
from ..runtime.settings import Runtime

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
            f"unknown architecture {quote(arch)}: numoe runs {', '.join(sorted(ARCHITECTURES))}"
        )
    return importlib.import_module(f".{ARCHITECTURES[arch]}", __name__)


def load(g: GGUFFile, runtime: Runtime | None = None, prefault: bool = True):
    """(config, model) for an opened GGUF file, to run as `runtime` says (None: the default,
    ``Runtime.create()``: every allowed physical core, --numa auto, the CPU).

    prefault: map the whole file into the process first (``runtime.memory.prefault``: what
    llama.cpp's MAP_POPULATE does) when it fits in the available memory and the routed
    experts are read from the map (policy off), so no decode step pays page faults on an
    expert's first use."""
    mod = get(g.arch)
    cfg = mod.config_from_gguf(g)
    runtime = runtime if runtime is not None else Runtime.create()
    runtime.activate()  # the pool as planned: node buffers are first-touched by its workers
    if prefault and runtime.policy.name == "off":
        prefault_file(g)
    return cfg, mod.Model(cfg, g, runtime)
