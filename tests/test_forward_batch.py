"""The batched step (DecoderModel.forward_batch over DecodeBlock.step_batch) and batch
invariance: a token's logits are bit for bit the same whether it runs alone or beside any
other tokens, for any batch size, composition and order.

Oracles: the same tokens run one at a time (forward_batch with N = 1, and the model's own
one-token C++ decode, forward(path="cpp"), which test_decode_block holds to the torch path);
the torch path (forward(path="torch"): torch attention, the reference of every C++ op) within
float tolerance; and at the kernel level, each output row of the linear and MoE ops computed
with T = 1 against the same row among T - 1 random neighbours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from hf_oracle import numoe_model
from isa_params import ISA_PARAMS

from numoe import _cpu, synth
from numoe.gguf.mix import QUANTIZERS, quantize_array
from numoe.kernels import quant_type, using_isa

# (preset, type): GQA + MoE (Qwen3-MoE: q/k norms, neox rope), MLA + shared experts + a dense
# layer (DeepSeek-V2), V3's sigmoid group routing, Qwen2-MoE's gated shared expert. The F32
# files matter most: in quantized ones a last-bit difference in attention mostly vanishes when
# the next projection quantizes its input, so they would hide a broken invariance. The KV
# caches: F16 (the default) everywhere, and F32 and mixed (K float32, V F16) caches on the F32
# files (the attention reads either row type; a token's kernels follow its own caches' types).
MODELS = [
    ("tiny-qwen3moe", "Q4_K_M", ("f16", "f16")),
    ("tiny-qwen3moe", "Q8_0", ("f16", "f16")),
    ("tiny-qwen3moe", "F32", ("f16", "f16")),
    ("tiny-qwen3moe", "F32", ("f32", "f32")),
    ("tiny-qwen3moe", "F32", ("f32", "f16")),
    ("tiny-v2", "Q4_K_M", ("f16", "f16")),
    ("tiny-v2", "Q4_0", ("f16", "f16")),
    ("tiny-v2", "F32", ("f16", "f16")),
    ("tiny-v2", "F32", ("f32", "f32")),
    ("tiny-v3", "Q5_K_M", ("f16", "f16")),
    ("tiny-qwen2moe", "Q4_K_M", ("f16", "f16")),
]
N_CTX = 512


@pytest.fixture(scope="module", params=MODELS, ids=lambda m: f"{m[0]}-{m[1]}-{'-'.join(m[2])}")
def model(request, tmp_path_factory):
    preset, qtype, types = request.param
    path = tmp_path_factory.mktemp("fb") / f"{preset}-{qtype}.gguf"
    synth.synth(preset, path, qtype)
    m = numoe_model(path)
    assert len(m.cpp_blocks()) == m.cfg.n_layer
    m.test_cache_types = types  # what new_cache gives this module's caches
    return m


def new_cache(model, n_ctx: int):
    return model.new_cache(n_ctx, *model.test_cache_types)


def prefill(model, prompt: list[int]):
    """A fresh cache holding prompt (one torch-path forward: the same in every run)."""
    cache = new_cache(model, N_CTX)
    model.forward(torch.tensor(prompt), cache, 0, n_logits=0, path="torch")
    return cache


def tokens_of(rng, model, n: int) -> list[int]:
    return rng.integers(0, model.cfg.n_vocab, n).tolist()


def run_alone(model, prompt, toks, start) -> list[torch.Tensor]:
    """Logits [V] of toks at positions start.. after prompt, each token alone (N = 1)."""
    cache = prefill(model, prompt)
    return [model.forward_batch([t], [cache], [start + i], [0])[0] for i, t in enumerate(toks)]


def test_mixed_batch_equals_each_token_alone(model):
    """Two sequences decoding (positions 5 and 300: its attention split in position chunks)
    and a prompt chunk of 7 (positions 3..9 after a cached prefix of 3) in one step: every token's logits equal, bit for bit, those
    of the same token run alone (forward_batch, N = 1), which equal the model's one-token C++
    decode (forward path="cpp"), and the torch path's within float tolerance."""
    rng = np.random.default_rng(0)
    prompts = [tokens_of(rng, model, n) for n in (5, 300, 3)]
    news = [tokens_of(rng, model, 1), tokens_of(rng, model, 1), tokens_of(rng, model, 7)]
    starts = [len(p) for p in prompts]
    caches = [prefill(model, p) for p in prompts]
    # batch order: A's decode token, C's chunk, B's decode token
    order = [(0, 0)] + [(2, i) for i in range(7)] + [(1, 0)]
    before = model.cpp_steps
    got = model.forward_batch(
        [news[s][i] for s, i in order],
        [caches[s] for s, _ in order],
        [starts[s] + i for s, i in order],
        list(range(len(order))),
    )  # [9, V]
    assert model.cpp_steps == before + 1  # one step through the C++ blocks
    assert got.shape == (len(order), model.cfg.n_vocab)
    for s in range(3):
        alone = run_alone(model, prompts[s], news[s], starts[s])
        cache = prefill(model, prompts[s])
        cpp = [
            model.forward(torch.tensor([t]), cache, starts[s] + i, 1, path="cpp")[0]
            for i, t in enumerate(news[s])
        ]
        cache = prefill(model, prompts[s])
        ref = model.forward(torch.tensor(news[s]), cache, starts[s], path="torch")  # [n, V]
        for i in range(len(news[s])):
            row = got[order.index((s, i))]
            assert torch.equal(row, alone[i]), f"sequence {s} token {i}: batch != alone"
            assert torch.equal(alone[i], cpp[i]), f"sequence {s} token {i}: N = 1 != decode"
            torch.testing.assert_close(row, ref[i], rtol=1e-4, atol=1e-4)


def test_random_batches_are_invariant(model):
    """Seeded random schedules: 4 sequences with cached prompts of random lengths advance in
    random steps (each a sequence's decode token or a chunk of 2-6 tokens, sequences in a
    random order, only some of them per step, logits for a random subset); every token's
    logits equal its logits alone."""
    rng = np.random.default_rng(1)
    n_seq = 4
    lengths = [int(rng.integers(1, 9)) for _ in range(n_seq - 1)] + [200]  # one over 128
    prompts = [tokens_of(rng, model, n) for n in lengths]
    news = [tokens_of(rng, model, 12) for _ in range(n_seq)]
    want = {
        (s, i): row
        for s in range(n_seq)
        for i, row in enumerate(run_alone(model, prompts[s], news[s], len(prompts[s])))
    }
    caches = [prefill(model, p) for p in prompts]
    done = [0] * n_seq
    seen = 0
    while any(d < 12 for d in done):
        live = [s for s in range(n_seq) if done[s] < 12]
        picked = rng.permutation(live)[: int(rng.integers(1, len(live) + 1))]
        toks, cs, poss, keys = [], [], [], []
        for s in picked:
            n = 1 if rng.random() < 0.6 else int(rng.integers(2, 7))
            for i in range(done[s], min(12, done[s] + n)):
                toks.append(news[s][i])
                cs.append(caches[s])
                poss.append(len(prompts[s]) + i)
                keys.append((s, i))
            done[s] = keys[-1][1] + 1
        rows = sorted(rng.permutation(len(toks))[: int(rng.integers(1, len(toks) + 1))].tolist())
        got = model.forward_batch(toks, cs, poss, rows)
        for r, row in zip(rows, got):
            assert torch.equal(row, want[keys[r]]), f"token {keys[r]} in a batch of {len(toks)}"
            seen += 1
    assert seen > 12


def test_forward_batch_checks(model):
    cache, other = new_cache(model, 8), new_cache(model, 8)
    with pytest.raises(ValueError, match="differ in length"):
        model.forward_batch([1, 2], [cache], [0, 1], [0])
    with pytest.raises(ValueError, match="consecutive"):
        model.forward_batch([1, 2], [cache, cache], [0, 2], [0])
    with pytest.raises(ValueError, match="consecutive"):
        model.forward_batch([1, 2, 3], [cache, other, cache], [1, 0, 1], [0])
    with pytest.raises(ValueError, match="names no token"):
        model.forward_batch([1], [cache], [0], [1])
    from numoe.cache import ContextFull

    with pytest.raises(ContextFull):
        model.forward_batch([1, 2], [cache, cache], [7, 8], [0])
    assert model.forward_batch([], [], [], []).shape == (0, model.cfg.n_vocab)
    assert model.forward_batch([1], [cache], [0], []).shape == (0, model.cfg.n_vocab)


def test_torch_caches_take_the_reference_path(model, monkeypatch):
    """Caches the C++ blocks cannot take (here: said so) go through the per-sequence
    forward calls, and give what the torch path gives."""
    rng = np.random.default_rng(2)
    prompt, new = tokens_of(rng, model, 4), tokens_of(rng, model, 3)
    monkeypatch.setattr(type(model), "can_decode_cpp", lambda self, cache: False)
    cache = prefill(model, prompt)
    before = model.cpp_steps
    got = model.forward_batch(new, [cache] * 3, [4, 5, 6], [0, 2])
    assert model.cpp_steps == before
    ref = model.forward(torch.tensor(new), prefill(model, prompt), 4, path="torch")
    assert torch.equal(got, ref[[0, 2]])


# ---- kernel level: a row's outputs do not depend on T or its neighbours ----

HALF_OFFSETS = {  # fp16 scale fields of a block, written finite (random bytes elsewhere)
    "Q4_0": (0,),
    "Q8_0": (0,),
    "Q4_1": (0, 2),
    "Q5_0": (0,),
    "Q5_1": (0, 2),
    "IQ4_NL": (0,),
    "Q2_K": (80, 82),
    "Q3_K": (108,),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208,),
    "IQ4_XS": (0,),
    "IQ2_XXS": (0,),
    "IQ2_XS": (0,),
    "IQ2_S": (0,),
    "IQ3_XXS": (0,),
    "IQ3_S": (0,),
    "IQ1_S": (0,),
}


def weight_bytes(qtype: int, rows: int, n: int, rng) -> np.ndarray:
    """A random [rows, n] weight of qtype as raw bytes [rows * row_bytes]: quantized by
    numoe's quantizers where it has one, else random blocks with finite small scales."""
    qt = quant_type(qtype)
    w = rng.standard_normal((rows, n)).astype(np.float32) * 0.1
    if qt.name in ("F32", "F16"):
        return w.astype(np.float32 if qt.name == "F32" else np.float16).reshape(-1).view(np.uint8)
    if qt.name == "BF16":
        return (w.view(np.uint32) >> 16).astype(np.uint16).reshape(-1).view(np.uint8)
    if qtype in QUANTIZERS:
        return np.ascontiguousarray(quantize_array(w, qtype)).reshape(-1)
    nb = rows * n // qt.block_size
    raw = rng.integers(0, 256, (nb, qt.type_size), dtype=np.uint8)
    d = (rng.uniform(0.5, 1, nb) * 2.0 ** rng.integers(-10, -5, nb)).astype(np.float16)
    if qt.name == "IQ1_M":  # the fp16 scale sits in the top nibbles of the 4 scale words
        bits, sc = d.view(np.uint16), raw[:, 48:56].copy().view("<u2")
        for w in range(4):
            sc[:, w] = (sc[:, w] & 0x0FFF) | (((bits >> (4 * w)) & 0xF) << 12).astype(np.uint16)
        raw[:, 48:56] = sc.view(np.uint8)
    else:
        for off in HALF_OFFSETS[qt.name]:
            raw[:, off : off + 2] = d.view(np.uint8).reshape(-1, 2)
    return raw.reshape(-1)


T_SIZES = (1, 3, 8, 33, 64)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("qtype", _cpu.weight_types(), ids=lambda t: quant_type(t).name)
def test_linear_row_does_not_depend_on_T(qtype, isa):
    """A row of x through the linear op alone equals, bit for bit, row i of a T-row input
    (i anywhere, the other rows random), for T in 1, 3, 8, 33, 64; plain and forward_many;
    on every SIMD level (vec_dot for one row, vec_dot_n tiles for several)."""
    with using_isa(isa):
        linear_rows_invariant(qtype)


def linear_rows_invariant(qtype):
    rng = np.random.default_rng([qtype, 3])
    n_out, n_in = 96, 512
    op = _cpu.Linear(weight_bytes(qtype, n_out, n_in, rng), qtype, n_out, n_in)
    other = _cpu.Linear(weight_bytes(qtype, 40, n_in, rng), qtype, 40, n_in)
    x0 = rng.standard_normal((1, n_in)).astype(np.float32)
    alone = op.forward(x0)[0]
    alone_other = other.forward(x0)[0]
    assert np.isfinite(alone).all()
    for T in T_SIZES:
        x = rng.standard_normal((T, n_in)).astype(np.float32) * rng.uniform(0.1, 10)
        i = int(rng.integers(0, T))
        x[i] = x0[0]
        np.testing.assert_array_equal(op.forward(x)[i], alone, err_msg=f"T = {T}")
        y, z = _cpu.Linear.forward_many([op, other], x)
        np.testing.assert_array_equal(y[i], alone, err_msg=f"forward_many T = {T}")
        np.testing.assert_array_equal(z[i], alone_other, err_msg=f"forward_many T = {T}")


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize(
    "types", [("Q4_K", "Q4_K", "Q6_K"), ("Q8_0",) * 3, ("IQ2_XS",) * 3, ("BF16", "F16", "Q5_0")]
)
def test_moe_row_does_not_depend_on_T(types, isa):
    """A token's MoE output alone equals, bit for bit, its row among T - 1 random neighbours
    routed anywhere (sharing its experts or not), for T in 1, 3, 8, 33, 64."""
    with using_isa(isa):
        moe_rows_invariant(types)


def moe_rows_invariant(types):
    tids = [int(GGMLQuantizationType[t]) for t in types]
    rng = np.random.default_rng(4)
    E, Fd, D, k = 16, 256, 512, 4
    gate = [weight_bytes(tids[0], Fd, D, rng) for _ in range(E)]
    up = [weight_bytes(tids[1], Fd, D, rng) for _ in range(E)]
    down = [weight_bytes(tids[2], D, Fd, rng) for _ in range(E)]
    op = _cpu.MoE(gate, up, down, *tids, E, Fd, D)
    x0 = rng.standard_normal((1, D)).astype(np.float32)
    ids0 = rng.permutation(E)[:k][None].astype(np.int64)  # [1, k]
    w0 = rng.uniform(0.1, 1, (1, k)).astype(np.float32)
    alone = op.forward(x0, ids0, w0)[0]
    assert np.isfinite(alone).all()
    for T in T_SIZES:
        x = rng.standard_normal((T, D)).astype(np.float32)
        ids = np.stack([rng.permutation(E)[:k] for _ in range(T)]).astype(np.int64)
        w = rng.uniform(0.1, 1, (T, k)).astype(np.float32)
        i = int(rng.integers(0, T))
        x[i], ids[i], w[i] = x0[0], ids0[0], w0[0]
        np.testing.assert_array_equal(op.forward(x, ids, w)[i], alone, err_msg=f"T = {T}")


def test_step_batch_checks(model):
    """Bad shapes, lengths and indices are ValueErrors naming the problem, before anything is
    touched."""
    blk = model.cpp_blocks()[0]
    D = model.cfg.n_embd
    cache = new_cache(model, 8)
    c0, c1 = cache.numpy_layer(0)
    pairs = model.rope.dim // 2
    x, f = np.zeros((2, D), np.float32), np.zeros((2, D), np.float32)
    seq, pos = np.zeros(2, np.int32), np.array([0, 1], np.int64)
    cs = np.zeros((2, pairs), np.float32)

    def call(**kw):
        args = {
            "x": x,
            "f": f,
            "add": False,
            "cache0": [c0],
            "cache1": [c1],
            "seq": seq,
            "pos": pos,
            "cos": cs,
            "sin": cs,
        }
        args.update(kw)
        blk.step_batch(**args)

    call()  # the good call runs
    for kw, msg in [
        ({"x": np.zeros((2, D + 1), np.float32)}, "x must be"),
        ({"x": np.zeros((0, D), np.float32), "f": np.zeros((0, D), np.float32)}, "x must be"),
        ({"f": np.zeros((3, D), np.float32)}, "f must be"),
        ({"f": x}, "overlap"),
        ({"cache0": []}, "same number"),
        ({"cache1": [c1, c1]}, "same number"),
        ({"cache0": [c0.reshape(len(c0), -1)[:, 1:].copy()]}, "sequence 0: cache 0 must be"),
        ({"cache1": [c1[:4]]}, "differ in n_ctx"),
        ({"seq": np.zeros(3, np.int32)}, "seq must be"),
        ({"seq": np.array([0, 1], np.int32)}, "names no sequence"),
        ({"seq": np.array([0, -1], np.int32)}, "names no sequence"),
        ({"pos": np.array([0], np.int64)}, "pos must be"),
        ({"pos": np.array([0, c0.shape[0]], np.int64)}, "outside its cache"),
        ({"pos": np.array([-1, 0], np.int64)}, "outside its cache"),
        ({"cos": np.zeros((2, pairs + 1), np.float32)}, "cos and sin"),
        ({"sin": np.zeros((1, pairs), np.float32)}, "cos and sin"),
    ]:
        with pytest.raises(ValueError, match=msg):
            call(**kw)
    with pytest.raises(TypeError):  # a float64 cache is refused, never copied and lost
        call(cache0=[c0.astype(np.float64)])
    with pytest.raises(TypeError):
        call(seq=seq.astype(np.int64))
