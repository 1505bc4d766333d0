"""Hostile files fail cleanly (the focused tests; tests/test_quant.py holds the quantizers'
NaN / inf cases).

- NaN or inf logits are a one-line error naming the position, never text sampled from them.
- Names from the file are escaped and cut short in every message.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from gguf_fuzz import BAD_NAME, STR, parse

from numoe.cli import main
from numoe.engine import NonFiniteLogits, Session, check_logits
from numoe.gguf import GGUFError, open_gguf
from numoe.quote import escape, one_line, quote
from numoe.synth import synth

# ---------------------------------------------------------------- NaN / inf logits


class _StubModel:
    """new_cache / forward with set logits: what Session needs."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits

    def new_cache(self, n_ctx):
        return None

    def forward(self, tokens, cache, pos, n_logits=None):
        return self.logits.expand(max(n_logits or tokens.shape[0], 1), -1).clone()


@pytest.mark.parametrize("value, kind", [(math.nan, "NaN"), (math.inf, "infinite"),
                                         (-math.inf, "infinite")])  # fmt: skip
def test_nonfinite_logits_are_an_error_naming_the_position(value, kind):
    logits = torch.zeros(8)
    logits[3] = value
    sess = Session(_StubModel(logits), n_ctx=16)
    with pytest.raises(NonFiniteLogits, match=f"{kind} logits at position 4 ") as e:
        list(sess.generate([1, 2, 3, 4, 5], 3, _greedy()))
    assert "\n" not in str(e.value) and isinstance(e.value, ValueError)
    assert check_logits(torch.ones(8), 0) is not None


def test_nonfinite_logits_in_decode(monkeypatch):
    sess = Session(_StubModel(torch.zeros(8)), n_ctx=16)
    gen = sess.generate([1, 2], 5, _greedy())
    assert next(gen) == 0
    sess.model.logits = torch.full((8,), math.nan)
    with pytest.raises(NonFiniteLogits, match="NaN logits at position 2 "):
        next(gen)


def _greedy():
    from numoe.sampling import Sampler, SamplingParams

    return Sampler(SamplingParams(temperature=0.0))


# ---------------------------------------------------------------- tiny files, mutated


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("hostile")
    out = {}
    for name, preset in (("q3", "tiny-qwen3moe"), ("ds", "tiny-v3"), ("mx", "tiny-mixtral")):
        synth(preset, d / f"{name}.gguf", "Q8_0")
        out[name] = (d / f"{name}.gguf").read_bytes()
    return out


def _mutated(tmp_path, blob: bytes, changes: dict, drop=()) -> Path:
    doc = parse(blob)
    arch = doc.arch
    for key, (vt, v) in changes.items():
        doc.set(key.replace("{a}", arch), vt, v)
    for key in drop:
        doc.drop(key.replace("{a}", arch))
    p = tmp_path / "m.gguf"
    p.write_bytes(doc.to_bytes())
    return p


# ---------------------------------------------------------------- names from the file


def test_quote_escapes_and_cuts():
    assert quote("blk.0.attn_q.weight") == "'blk.0.attn_q.weight'"
    q = quote(BAD_NAME)
    assert q.startswith(r"'\x1b[2J\x1b[31mevil\x07AAA") and q.endswith("...' (5014 chars)")
    assert q.isprintable() and len(q) < 120
    assert escape("a\nb\u202ec\u00e9\uff5c") == "a\\nb\\u202ec\u00e9\uff5c"  # printable stays
    assert one_line("x\n" * 1000, 50).startswith("x\\nx\\n") and len(one_line("x" * 5000)) < 1100


def test_file_names_in_error_messages_are_escaped(tmp_path, tiny_files, capsys):
    doc = parse(tiny_files["q3"])
    doc.tinfos[3].name, doc.tinfos[3].ttype = BAD_NAME, 200  # an unknown type: named at open
    p = tmp_path / "bad.gguf"
    p.write_bytes(doc.to_bytes())
    with pytest.raises(GGUFError) as e:
        open_gguf(p)
    msg = str(e.value)
    assert "\x1b" not in msg and r"\x1b[2J" in msg and "(5014 chars)" in msg and len(msg) < 400
    # and the command line: the architecture's name, one short printable line
    arch = _mutated(tmp_path, tiny_files["q3"], {"general.architecture": (STR, BAD_NAME)})
    assert main(["run", "-m", str(arch), "-n", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "\x1b" not in err and "unknown architecture '\\x1b[2J" in err and len(err) < 400
