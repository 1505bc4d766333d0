"""Hostile files fail cleanly (the focused tests; tests/test_fuzz_gguf.py fuzzes the lot,
tests/test_quant.py holds the quantizers' NaN / inf cases).

- NaN or inf logits are a one-line error naming the position, never text sampled from them.
- Metadata of the wrong type or range, token lists and ids that do not fit the vocabulary,
  `blk.N` tensors past block_count: a one-line GGUFError naming the key.
- Chat templates from the file: every error is one line (ChatTemplateError), and a render
  ends within a time and a size limit.
- Names from the file are escaped and cut short in every message.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest
import torch
from gguf_fuzz import ARR, BAD_NAME, F32, I32, STR, U32, parse

from numoe.cli import main
from numoe.engine import NonFiniteLogits, Session, check_logits
from numoe.gguf import GGUFError, open_gguf
from numoe.gguf.checks import check_blocks
from numoe.models import get as get_arch
from numoe.quote import escape, one_line, quote
from numoe.synth import synth
from numoe.text import Tokenizer
from numoe.text import chat_template as ct
from numoe.text.chat_template import ChatTemplateError

# ---------------------------------------------------------------- NaN / inf logits


class _StubModel:
    """new_cache / forward with set logits: what Session needs."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits

    def new_cache(self, n_ctx, type_k="f16", type_v="f16"):
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


def test_doctor_prints_the_files_architecture_escaped(tmp_path, tiny_files, capsys):
    arch = _mutated(tmp_path, tiny_files["q3"], {"general.architecture": (STR, BAD_NAME)})
    main(["doctor", "-m", str(arch)])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "(\\x1b[2J\\x1b[31mevil\\x07AAA" in out


# ---------------------------------------------------------------- metadata


def _config_error(path) -> str:
    g = open_gguf(path)
    with pytest.raises(GGUFError) as e:
        get_arch(g.arch).config_from_gguf(g)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


NAN, INF = math.nan, math.inf
BAD_METADATA = [
    # (file, {key: (value type, value)}, what the message must say)
    ("q3", {"{a}.block_count": (STR, "2")}, "block_count is the string '2'"),
    ("q3", {"{a}.block_count": (F32, 2.0)}, "block_count is 2.0"),
    ("q3", {"{a}.block_count": (ARR, (U32, [2, 2]))}, "block_count is an array of 2"),
    ("q3", {"{a}.block_count": (7, True)}, "block_count is the bool True"),
    ("q3", {"{a}.block_count": (I32, -1)}, "block_count is -1"),
    ("q3", {"{a}.block_count": (I32, 0)}, "block_count is 0"),
    ("q3", {"{a}.block_count": (I32, 1)}, "block_count is 1 but the file has tensors of block 1"),
    ("q3", {"{a}.expert_count": (STR, "8")}, "expert_count is the string"),
    ("q3", {"{a}.expert_count": (F32, 8.0)}, "expert_count is 8.0"),
    ("q3", {"{a}.expert_used_count": (ARR, (U32, [2]))}, "expert_used_count is an array"),
    ("q3", {"{a}.expert_used_count": (I32, 9)}, "expert_used_count is 9; it must be an integer in 1..8"),
    ("q3", {"{a}.embedding_length": (STR, "64")}, "embedding_length is the string '64'"),
    ("q3", {"{a}.attention.head_count": (I32, 0)}, "head_count is 0"),
    ("q3", {"{a}.attention.head_count": (I32, 3)}, "head_count 3 is not a multiple of"),
    ("q3", {"{a}.attention.layer_norm_rms_epsilon": (ARR, (F32, [1e-6]))}, "rms_epsilon is an array"),
    ("q3", {"{a}.attention.layer_norm_rms_epsilon": (F32, NAN)}, "rms_epsilon is nan; it must be a finite number > 0"),
    ("q3", {"{a}.attention.layer_norm_rms_epsilon": (F32, -1.0)}, "rms_epsilon is -1.0"),
    ("q3", {"{a}.rope.freq_base": (F32, -1.0)}, "freq_base is -1.0; it must be a finite number > 1"),
    ("q3", {"{a}.rope.freq_base": (F32, 0.0)}, "freq_base is 0.0"),
    ("q3", {"{a}.rope.freq_base": (F32, INF)}, "freq_base is inf"),
    ("q3", {"{a}.attention.key_length": (I32, 15)}, "key_length 15 must be even"),
    ("q3", {"{a}.vocab_size": (ARR, (U32, [512]))}, "vocab_size is an array"),
    ("q3", {"{a}.vocab_size": (I32, 600)}, "holds 512 tokens but qwen3moe.vocab_size is 600"),
    ("q3", {"tokenizer.ggml.tokens": (ARR, (STR, ["a"] * 500))}, "holds 500 tokens"),
    ("q3", {"tokenizer.ggml.tokens": (ARR, (I32, list(range(512))))}, "tokens is an array of 512; it must be an array of strings"),
    ("ds", {"{a}.rope.scaling.factor": (F32, NAN)}, "rope.scaling.factor is nan"),
    ("ds", {"{a}.rope.scaling.factor": (F32, -4.0)}, "rope.scaling.factor is -4.0"),
    ("ds", {"{a}.rope.scaling.yarn_log_multiplier": (F32, NAN)}, "yarn_log_multiplier is nan"),
    ("ds", {"{a}.rope.scaling.yarn_beta_fast": (F32, -1.0)}, "yarn_beta_fast is -1.0"),
    ("ds", {"{a}.rope.scaling.yarn_beta_slow": (F32, 0.0)}, "yarn_beta_slow is 0.0"),
    ("ds", {"{a}.rope.scaling.original_context_length": (I32, 0)}, "original_context_length is 0"),
    ("ds", {"{a}.rope.freq_base": (F32, 1.0)}, "freq_base is 1.0"),
    ("ds", {"{a}.rope.dimension_count": (I32, 7)}, "dimension_count 7 must be even"),
    ("ds", {"{a}.attention.kv_lora_rank": (I32, 0)}, "kv_lora_rank is 0"),
    ("ds", {"{a}.leading_dense_block_count": (I32, 3)}, "leading_dense_block_count is 3; it must be an integer in 0..2"),
    ("ds", {"{a}.expert_gating_func": (STR, "sigmoid")}, "expert_gating_func is the string"),
    ("ds", {"{a}.expert_weights_scale": (F32, NAN)}, "expert_weights_scale is nan"),
    ("ds", {"{a}.expert_weights_norm": (STR, "yes")}, "expert_weights_norm is the string 'yes'"),
    ("ds", {"{a}.feed_forward_length": (ARR, (STR, ["x"]))}, "feed_forward_length is an array of 1"),
    ("ds", {"{a}.rope.scaling.type": (STR, BAD_NAME)}, r"rope.scaling.type '\x1b[2J"),
    ("mx", {"{a}.attention.head_count_kv": (I32, 3)}, "head_count 4 is not a multiple of llama.attention.head_count_kv 3"),
    ("mx", {"{a}.rope.dimension_count": (ARR, (U32, [16]))}, "dimension_count is an array"),
    ("mx", {"{a}.feed_forward_length": (F32, INF)}, "feed_forward_length is inf"),
    ("mx", {"{a}.expert_used_count": (I32, 9)}, "expert_used_count is 9; it must be an integer in 0..8"),
]  # fmt: skip


@pytest.mark.parametrize("name, changes, says", BAD_METADATA,
                         ids=[f"{n}-{'+'.join(c)}-{i}" for i, (n, c, _) in enumerate(BAD_METADATA)])  # fmt: skip
def test_bad_metadata_is_one_line_naming_the_key(tmp_path, tiny_files, name, changes, says):
    msg = _config_error(_mutated(tmp_path, tiny_files[name], changes))
    assert says in msg, msg
    assert str(tmp_path) in msg


def test_good_files_still_load(tmp_path, tiny_files):
    for blob in tiny_files.values():
        g = open_gguf(_mutated(tmp_path, blob, {}))
        get_arch(g.arch).config_from_gguf(g)
    # the keys llama.cpp reads as "unset" when 0 stay so
    g = open_gguf(_mutated(tmp_path, tiny_files["ds"], {"{a}.expert_weights_scale": (F32, 0.0),
                                                        "{a}.rope.scaling.factor": (F32, 0.0)}))  # fmt: skip
    cfg = get_arch(g.arch).config_from_gguf(g)
    assert cfg.expert_scale == 1.0 and cfg.rope_factor == 1.0


def test_block_count_below_the_blocks_present(tmp_path, tiny_files):
    g = open_gguf(_mutated(tmp_path, tiny_files["q3"], {}))
    check_blocks(g, 2)
    with pytest.raises(GGUFError, match=r"block_count is 1 but the file has tensors of block 1 "):
        check_blocks(g, 1)


@pytest.mark.parametrize(
    "changes, says",
    [
        ({"tokenizer.ggml.eos_token_id": (I32, 10**6)}, "eos_token_id' = 1000000 is outside"),
        ({"tokenizer.ggml.bos_token_id": (F32, INF)}, "bos_token_id' must be an integer"),
        ({"tokenizer.ggml.bos_token_id": (7, True)}, "bos_token_id' must be an integer"),
        ({"tokenizer.ggml.add_bos_token": (STR, "yes")}, "add_bos_token' must be a bool"),
        ({"tokenizer.ggml.add_bos_token": (F32, 0.0)}, "add_bos_token' must be a bool"),
        ({"tokenizer.ggml.token_type": (ARR, (STR, ["1"] * 512))}, "token_type' must be an array of integers"),
        ({"tokenizer.ggml.model": (STR, BAD_NAME)}, r"model' = '\x1b[2J\x1b[31mevil\x07AAA"),
        ({"tokenizer.ggml.merges": (U32, 3)}, "merges' must be an array of strings"),
        ({"tokenizer.ggml.tokens": (ARR, (I32, [1, 2]))}, "tokens' holds a int value where a string"),
    ],
)  # fmt: skip
def test_bad_tokenizer_metadata_is_a_gguf_error(tmp_path, tiny_files, changes, says):
    g = open_gguf(_mutated(tmp_path, tiny_files["q3"], changes))
    with pytest.raises(GGUFError) as e:
        Tokenizer.from_gguf(g)
    msg = str(e.value)
    assert says in msg and str(tmp_path) in msg and "\n" not in msg and len(msg) < 400, msg


def test_unused_padding_id_outside_the_vocabulary_is_ignored(tmp_path, tiny_files):
    g = open_gguf(_mutated(tmp_path, tiny_files["q3"], {"tokenizer.ggml.padding_token_id": (I32, 10**6),
                                                         "tokenizer.ggml.eos_token_id": (I32, -1)}))  # fmt: skip
    tok = Tokenizer.from_gguf(g)
    assert tok.pad_id is None and tok.eos_id is None


@pytest.mark.parametrize("value", [(STR, "2"), (ARR, (U32, [2])), (I32, -1), (F32, 2.0)])
def test_quantize_refuses_a_bad_block_count(tmp_path, tiny_files, value):
    from numoe.gguf.quantize import quantize_file

    src = _mutated(tmp_path, tiny_files["q3"], {"{a}.block_count": value})
    with pytest.raises(ValueError, match=r"^qwen3moe\.block_count is .*; it must be an integer"):
        quantize_file(src, tmp_path / "out.gguf", "Q4_K_M")


# ---------------------------------------------------------------- chat templates


MSGS = [{"role": "user", "content": "hi"}]
BAD_TEMPLATES = [
    ("{{ messages.__class__.__mro__ }}", "SecurityError"),
    ("{% for m in messages %}{{ m.content", "syntax error on line 1"),
    ("{{ raise_exception('no \x1b[2J system role' * 40) }}", r"raise_exception('no \x1b[2J system"),
    ("{{ undefined_thing.attr }}", "'undefined_thing' is undefined"),
    ("{{ undefined_thing() }}", "UndefinedError"),
    ("{% include 'x.j2' %}", "cannot load other templates"),
    ("{% extends 'base.j2' %}", "cannot load other templates"),
    ("{% import 'm.j2' as m %}", "cannot load other templates"),
    ("{% for i in range(10**9) %}{% endfor %}", "an argument of 1000000000"),
    ("{% for i in range(200000) %}{% endfor %}", "Range too big"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion too deep"),
    ("{{ 'x' * 10**10 }}", "the limit is"),
    ("{{ messages[0]['content'] * 100000000 }}", "the limit is"),
    ("{{ 10 ** 100000000 }}", "bits"),
    ("{{ '%999999999d' % 1 }}", "format width"),
    ("{{ '{:>999999999}'.format(1) }}", "format width"),
    ("{{ 'x'.ljust(10**9) }}", "an argument of 1000000000"),
    ("{{ 'x' | center(10**9) }}", "an argument of 1000000000"),
    ("{{ [0] * 10**9 }}", "the limit is"),
    (("{% set s = namespace(v='ab') %}{% for i in range(64) %}{% set s.v = s.v ~ s.v %}"
     "{% endfor %}{{ s.v }}"), "the limit is"),
    ("{% set a = 'ab' * 4000000 %}{% set b = a ~ a %}{% set c = b ~ b %}{{ c }}", "the limit is"),
    ("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "the limit is"),
    ("{% macro m() %}{{ 'y' * 9000000 }}{{ 'y' * 9000000 }}{% endmacro %}{{ m() }}",
     "the limit is"),
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
]  # fmt: skip


@pytest.mark.parametrize("template, says", BAD_TEMPLATES)
def test_chat_template_errors_are_one_line(gpt2_tok, template, says):
    t0 = time.perf_counter()
    with pytest.raises(ChatTemplateError) as e:
        gpt2_tok.apply_chat_template(MSGS, chat_template=template)
    assert time.perf_counter() - t0 < 3.0
    msg = str(e.value)
    assert says in msg, msg
    assert msg.startswith("chat template: ") and msg.isprintable() and len(msg) < 400, msg
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize(
    "template",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        (
            "{% for i in range(100000) %}{% for m in messages * 1000 %}{{ '' }}{% endfor %}"
            "{% endfor %}"
        ),
    ],
)
def test_chat_template_time_limit(gpt2_tok, monkeypatch, template):
    monkeypatch.setattr(ct, "TIME_LIMIT", 0.5)
    t0 = time.perf_counter()
    with pytest.raises(ChatTemplateError, match=r"rendering took longer than 0.5 s"):
        gpt2_tok.apply_chat_template(MSGS, chat_template=template)
    assert time.perf_counter() - t0 < 2.0
    # no stray exception left for this thread: Python code keeps running
    x = 0
    for i in range(2_000_000):
        x += i
    time.sleep(0.7)
    assert x > 0
    # nor for a render that ends just in time
    monkeypatch.setattr(ct, "TIME_LIMIT", 0.05)
    for _ in range(50):
        assert gpt2_tok.apply_chat_template(MSGS, chat_template="{{ 'ok' }}") == "ok"
    time.sleep(0.1)


def test_chat_template_time_limit_in_another_thread(gpt2_tok, monkeypatch):
    monkeypatch.setattr(ct, "TIME_LIMIT", 0.3)
    out = []

    def render():
        try:
            gpt2_tok.apply_chat_template(
                MSGS, chat_template="{% for i in range(100000) %}{% for j in range(100000) %}"
                "{% endfor %}{% endfor %}",
            )  # fmt: skip
        except ChatTemplateError as e:
            out.append(str(e))

    t = threading.Thread(target=render)
    t.start()
    t.join(5)
    assert out and "longer than 0.3 s" in out[0]


def test_chat_template_limits_leave_real_templates_alone(gpt2_tok):
    big = "word " * 200_000  # a 1 MB message
    text = gpt2_tok.apply_chat_template([{"role": "user", "content": big}] * 4)
    assert text.count("word") == 800_000


@pytest.fixture(scope="module")
def gpt2_tok():
    from numoe.text import synth_vocab_metadata

    return Tokenizer.from_metadata(synth_vocab_metadata(512, "gpt2"))
