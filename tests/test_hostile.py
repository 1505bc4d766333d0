"""Hostile files fail cleanly (the focused tests; tests/test_quant.py holds the quantizers'
NaN / inf cases).

- NaN or inf logits are a one-line error naming the position, never text sampled from them.
"""

from __future__ import annotations

import math

import pytest
import torch

from numoe.engine import NonFiniteLogits, Session, check_logits

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
