"""Peak memory of a run with the model's whole trained context (-c 0): the KV cache grows with
the tokens used, so it holds no more than a run with a small context, not a cache for every
position of the trained context up front."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace

from cli_proc import env, numoe_cmd

from numoe import synth
from numoe.models import qwen3_moe

N_CTX_TRAIN = 1 << 20  # 1M positions: an F16 cache for all of them would be 256 MiB here


def peak_rss_mib(args: list[str]) -> float:
    """Peak resident memory (MiB) of `numoe args` in a subprocess of its own (wait4's rusage
    covers that child only)."""
    p = subprocess.Popen(numoe_cmd() + args, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=env())  # fmt: skip
    _, status, usage = os.wait4(p.pid, 0)
    err = p.stderr.read().decode()
    p.stderr.close()
    assert os.waitstatus_to_exitcode(status) == 0, err
    return usage.ru_maxrss / 1024  # KiB on Linux


def test_whole_trained_context_costs_only_the_tokens_used(tmp_path, monkeypatch):
    cfg = replace(qwen3_moe.PRESETS["tiny-qwen3moe"], n_ctx_train=N_CTX_TRAIN)
    monkeypatch.setattr(synth, "preset_config", lambda preset, layers=None: cfg)
    path = tmp_path / "long.gguf"
    synth.synth("tiny-qwen3moe", path, "Q8_0")
    per_token = 2 * cfg.n_layer * cfg.n_head_kv * cfg.head_dim * 2  # K and V, F16
    upfront_mib = per_token * N_CTX_TRAIN / 2**20
    assert upfront_mib >= 128
    run = ["run", "-m", str(path), "-p", "The experts", "-n", "16", "--temp", "0", "-t", "1"]
    small = peak_rss_mib([*run, "-c", "64"])
    full = peak_rss_mib([*run, "-c", "0"])
    # the same file and the same 20-odd tokens: within noise (allocator, torch), far below
    # the cache a whole trained context would take up front
    assert full - small < upfront_mib / 8, (small, full, upfront_mib)
