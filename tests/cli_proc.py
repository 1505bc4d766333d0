"""The `numoe` console script run as a user runs it: a subprocess with real pipes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def numoe_cmd() -> list[str]:
    """The installed console script beside this Python (the venv's), else `python -m numoe`."""
    exe = Path(sys.executable).parent / "numoe"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("numoe")
    return [found] if found else [sys.executable, "-m", "numoe"]


def env(**extra: str) -> dict[str, str]:
    """The environment the conftest sets (no user config, no NUMOE_* settings) plus `extra`."""
    e = dict(os.environ)
    e.update(extra)
    return e


@contextlib.contextmanager
def sigint_inherited():
    """Children started inside get SIGINT at its default (Python then installs its own
    handler), even where the test runner itself runs with SIGINT ignored (a background job):
    an ignored signal is the one disposition exec keeps."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def numoe(*argv: str, input: str | None = None, timeout: float = 120, **extra_env: str):
    """Run `numoe ARGV...` to completion: CompletedProcess with text stdout/stderr."""
    with sigint_inherited():
        return subprocess.run(
            numoe_cmd() + [str(a) for a in argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env(**extra_env),
            stdin=None if input is not None else subprocess.DEVNULL,
            check=False,
        )


def one_line_error(p, *words: str, rc: int | None = None) -> str:
    """The one 'numoe: error: ...' line of a failed run (no traceback), holding `words`."""
    assert p.returncode != 0 if rc is None else p.returncode == rc, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1, p.stderr
    for w in words:
        assert w in errors[0], (w, errors[0])
    return errors[0]


@pytest.fixture(scope="session")
def qwen_tiny(tmp_path_factory) -> str:
    """tiny-qwen3moe at Q8_0 (trained context 4096 tokens)."""
    from numoe.synth import synth

    path = tmp_path_factory.mktemp("cli") / "tiny-qwen3moe-q8_0.gguf"
    synth("tiny-qwen3moe", path, "Q8_0")
    return str(path)
