import math

import pytest
import torch

from numoe.sampling import Sampler, SamplingParams


def _logits(probs):
    return torch.log(torch.tensor(probs, dtype=torch.float32))


def _draws(params, logits, n=200, history=()):
    s = Sampler(params)
    return [s.sample(logits, list(history)) for _ in range(n)]


def test_defaults_are_llama_cpp():
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.min_p) == (0.8, 40, 0.95, 0.05)
    assert (p.repeat_penalty, p.repeat_last_n, p.seed) == (1.0, 64, None)


@pytest.mark.parametrize("temp", [0.0, -1.0])
def test_greedy_is_argmax(temp):
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.randn(1000, generator=g)
        assert Sampler(SamplingParams(temperature=temp)).sample(x, []) == int(x.argmax())


def test_top_k_1_is_greedy():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, generator=g)
    p = SamplingParams(temperature=1.5, top_k=1, top_p=1.0, min_p=0.0, seed=3)
    assert set(_draws(p, x, 50)) == {int(x.argmax())}


def test_same_seed_same_sequence_different_seed_differs():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, generator=g)
    p = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1234)
    a, b = _draws(p, x, 100), _draws(p, x, 100)
    assert a == b
    c = _draws(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=99), x, 100)
    assert a != c
    assert len(set(a)) > 5  # it really samples


def test_top_p_hand_case():
    # probs [0.5, 0.3, 0.2], top_p=0.6: 0.5 < 0.6 <= 0.8 -> keep the first two only
    x = _logits([0.5, 0.3, 0.2])
    p = SamplingParams(temperature=1.0, top_k=0, top_p=0.6, min_p=0.0, seed=0)
    d = _draws(p, x, 200)
    assert 2 not in d and set(d) == {0, 1}
    # top_p=0.5 reaches exactly 0.5 with the first -> greedy
    p = SamplingParams(temperature=1.0, top_k=0, top_p=0.5, min_p=0.0, seed=0)
    assert set(_draws(p, x, 50)) == {0}
    # top_p=1 keeps all three
    p = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=0)
    assert set(_draws(p, x, 300)) == {0, 1, 2}


def test_top_p_renormalises_after_top_k():
    # top_k=2 leaves [0.4, 0.35] -> renormalised [0.533, 0.467]; top_p=0.5 keeps just one
    x = _logits([0.4, 0.35, 0.25])
    p = SamplingParams(temperature=1.0, top_k=2, top_p=0.5, min_p=0.0, seed=0)
    assert set(_draws(p, x, 50)) == {0}


def test_min_p_hand_case():
    # p_max = 0.5; min_p = 0.3 -> threshold 0.15: keeps 0.5 and 0.3, drops 0.12 and 0.08
    x = _logits([0.5, 0.3, 0.12, 0.08])
    p = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.3, seed=0)
    assert set(_draws(p, x, 300)) == {0, 1}
    p = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.2, seed=0)  # thr 0.1
    assert set(_draws(p, x, 300)) == {0, 1, 2}


def test_sampling_frequencies_follow_temperature():
    x = _logits([0.6, 0.4])
    d = _draws(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=5), x, 2000)
    assert abs(d.count(0) / 2000 - 0.6) < 0.05
    # temperature 0.5 squares the odds: 0.36/(0.36+0.16) = 0.692
    d = _draws(SamplingParams(temperature=0.5, top_k=0, top_p=1.0, min_p=0.0, seed=5), x, 2000)
    assert abs(d.count(0) / 2000 - 0.36 / 0.52) < 0.05


def test_repeat_penalty_hand_case():
    s = Sampler(SamplingParams(repeat_penalty=2.0, repeat_last_n=64))
    x = torch.tensor([2.0, -2.0, 1.5, 0.0])
    y = s.apply_penalty(x, [0, 1, 1, 3])
    assert y.tolist() == [1.0, -4.0, 1.5, 0.0]
    assert x.tolist() == [2.0, -2.0, 1.5, 0.0]  # input untouched
    # the penalty changes the greedy choice: 2.0 -> 1.0 < 1.5
    g = Sampler(SamplingParams(temperature=0, repeat_penalty=2.0))
    assert g.sample(x, []) == 0
    assert g.sample(x, [0]) == 2


def test_repeat_last_n_window():
    x = torch.tensor([2.0, 1.5])
    hist = [0] + [1] * 5  # token 0 is 6 tokens back
    assert (
        Sampler(SamplingParams(temperature=0, repeat_penalty=2.0, repeat_last_n=3)).sample(x, hist)
        == 0
    )  # 0 outside the window; 1 penalised
    assert (
        Sampler(SamplingParams(temperature=0, repeat_penalty=2.0, repeat_last_n=-1)).sample(x, [0])
        == 1
    )  # whole history: 0 penalised to 1.0 < 1.5
    assert (
        Sampler(SamplingParams(temperature=0, repeat_penalty=2.0, repeat_last_n=0)).sample(x, [0])
        == 0
    )  # disabled


def test_accepts_other_dtypes_and_shapes():
    x = torch.tensor([[0.1, 3.0, 0.2]], dtype=torch.bfloat16)
    assert Sampler(SamplingParams(seed=0)).sample(x, []) == 1


@pytest.mark.parametrize(
    "kw",
    [
        {"top_p": -0.1},
        {"top_p": 1.5},
        {"min_p": -0.01},
        {"min_p": 2.0},
        {"top_k": -5},
        {"top_k": 2.5},
        {"repeat_penalty": 0.0},
        {"repeat_penalty": -1.0},
        {"repeat_last_n": -2},
        {"temperature": math.nan},
        {"temperature": "hot"},
        {"seed": 1.5},
    ],
)
def test_bad_params(kw):
    name = next(iter(kw))
    with pytest.raises(ValueError, match=name):
        Sampler(SamplingParams(**kw))
