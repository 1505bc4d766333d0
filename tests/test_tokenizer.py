import io
import logging
from types import SimpleNamespace

import jinja2
import pytest
import regex
import sentencepiece as spm
import tokenizers
from tokenizers import AddedToken, Regex, models, pre_tokenizers

from numoe.text import (
    CHATML_TEMPLATE,
    MISTRAL_TEMPLATE,
    IncrementalDecoder,
    Tokenizer,
    synth_vocab_metadata,
)
from numoe.text.chat_template import ChatTemplateError
from numoe.text.synth_vocab import _SYNTH_TEXT
from numoe.text.tokenizer import _PRE

# Qwen2's pre-tokenizer regex as its tokenizer.json writes it (HF form, not llama.cpp's)
QWEN2_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

TEXTS = [
    "Hello world!",
    "The engine runs the experts on the processor, and the attention on the GPU.",
    "  leading spaces, trailing spaces   ",
    "line one\nline two\r\n\n\ttabbed\n",
    "numbers: 1234567 and 3.14159, 2025-01-01",
    "It's, don't, WE'LL, they're",
    "Ünïcödé ñ café — naïve façade",
    "emoji 😀👍🏽 and flags 🇫🇷 and zwj 👩‍👩‍👧",
    "中文文本，日本語のテキスト、한국어 텍스트",
    "code: def f(x):\n    return x**2  # square",
    "",
    " ",
    "a",
]

CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hi there! ¿Qué tal? 😀"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Tell me a joke."},
]

# Qwen3's chat template (from its tokenizer_config.json)
QWEN3_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in message.content %}
                {%- set content = message.content.split('</think>')[-1].lstrip('\n') %}
                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""

# Mistral-7B-Instruct-v0.1's template (raises on non-alternating roles)
MISTRAL_V01_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)


# ---- independent oracles ------------------------------------------------------------------


def _bytes_to_unicode():
    bs = [*range(33, 127), *range(161, 173), *range(174, 256)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


class PyBPE:
    """A plain-Python byte-level BPE (GPT-2's algorithm), written from the metadata."""

    def __init__(self, meta, pattern):
        self.ids = {t: i for i, t in enumerate(meta["tokenizer.ggml.tokens"])}
        self.ranks = {tuple(m.split(" ")): r for r, m in enumerate(meta["tokenizer.ggml.merges"])}
        self.b2u = _bytes_to_unicode()
        self.pattern = regex.compile(pattern)
        types = meta["tokenizer.ggml.token_type"]
        self.specials = [t for t, ty in zip(meta["tokenizer.ggml.tokens"], types) if ty == 3]

    def _bpe(self, word):
        parts = list(word)
        while len(parts) > 1:
            rank, i = min(
                (self.ranks.get((parts[j], parts[j + 1]), float("inf")), j)
                for j in range(len(parts) - 1)
            )
            if rank == float("inf"):
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        return parts

    def encode(self, text, special=False):
        segments = [text]
        if special:
            alt = "|".join(regex.escape(s) for s in sorted(self.specials, key=len, reverse=True))
            segments = regex.split(f"({alt})", text)
        out = []
        for k, seg in enumerate(segments):
            if special and k % 2 == 1:
                out.append(self.ids[seg])
                continue
            for piece in self.pattern.findall(seg):
                word = "".join(self.b2u[b] for b in piece.encode("utf-8"))
                out += [self.ids[p] for p in self._bpe(word)]
        return out


def hf_oracle(meta, pattern=QWEN2_RE):
    """A `tokenizers` tokenizer built straight from tokens + merges (HF style config)."""
    toks = meta["tokenizer.ggml.tokens"]
    vocab = {t: i for i, t in enumerate(toks)}
    merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    hf = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges))
    if pattern is None:
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    specials = [t for t, ty in zip(toks, meta["tokenizer.ggml.token_type"]) if ty == 3]
    hf.add_special_tokens([AddedToken(s, normalized=False) for s in specials])
    return hf


@pytest.fixture(scope="module")
def gpt2_meta():
    return synth_vocab_metadata(1024)


@pytest.fixture(scope="module")
def gpt2(gpt2_meta):
    return Tokenizer.from_metadata(gpt2_meta)


@pytest.fixture(scope="module")
def llama_meta():
    return synth_vocab_metadata(1000, kind="llama")


@pytest.fixture(scope="module")
def llama(llama_meta):
    return Tokenizer.from_metadata(llama_meta)


# ---- synthetic vocabularies ---------------------------------------------------------------


@pytest.mark.parametrize("kind,n", [("gpt2", 300), ("gpt2", 1024), ("llama", 600), ("llama", 2000)])
def test_synth_vocab_shape(kind, n):
    meta = synth_vocab_metadata(n, kind=kind)
    toks = meta["tokenizer.ggml.tokens"]
    assert len(toks) == n == len(meta["tokenizer.ggml.token_type"])
    assert len(set(toks)) == n
    assert meta == synth_vocab_metadata(n, kind=kind)  # deterministic
    tok = Tokenizer.from_metadata(meta)
    assert tok.n_vocab == n
    text = "The engine reads 12 files.\nDone!"
    assert tok.decode(tok.encode(text), skip_special=True) == text


def test_synth_vocab_details(gpt2_meta, llama_meta):
    toks = gpt2_meta["tokenizer.ggml.tokens"]
    assert len(gpt2_meta["tokenizer.ggml.merges"]) >= 300
    assert gpt2_meta["tokenizer.ggml.add_bos_token"] is False
    assert toks[gpt2_meta["tokenizer.ggml.eos_token_id"]] == "<|im_end|>"
    assert {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|extra_0|>"} <= set(toks)
    assert gpt2_meta["tokenizer.chat_template"] == CHATML_TEMPLATE
    lt = llama_meta["tokenizer.ggml.tokens"]
    assert lt[:3] == ["<unk>", "<s>", "</s>"] and lt[3] == "<0x00>" and lt[258] == "<0xFF>"
    assert llama_meta["tokenizer.ggml.add_bos_token"] is True
    assert llama_meta["tokenizer.chat_template"] == MISTRAL_TEMPLATE


@pytest.mark.parametrize("kind,n", [("gpt2", 258), ("llama", 280), ("bert", 1000)])
def test_synth_vocab_errors(kind, n):
    with pytest.raises(ValueError):
        synth_vocab_metadata(n, kind=kind)


# ---- gpt2 (byte-level BPE) ----------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_gpt2_matches_oracles(gpt2, gpt2_meta, text):
    ids = gpt2.encode(text)
    assert ids == PyBPE(gpt2_meta, QWEN2_RE).encode(text)
    assert ids == hf_oracle(gpt2_meta).encode(text, add_special_tokens=False).ids
    assert gpt2.decode(ids) == text


def test_gpt2_words_use_merges(gpt2):
    ids = gpt2.encode(" the")
    assert [gpt2.token_text(i) for i in ids] == ["Ġthe"]


def test_gpt2_special_tokens(gpt2, gpt2_meta):
    text = "<|im_start|>user\nhi 😀<|im_end|>\n<|im_start|>assistant\n"
    ids = gpt2.encode(text, special=True)
    assert ids == PyBPE(gpt2_meta, QWEN2_RE).encode(text, special=True)
    assert ids == hf_oracle(gpt2_meta).encode(text, add_special_tokens=False).ids
    start, end = gpt2.token_id("<|im_start|>"), gpt2.token_id("<|im_end|>")
    assert ids[0] == start and ids.count(start) == 2 and ids.count(end) == 1
    assert gpt2.decode(ids) == text
    assert gpt2.decode(ids, skip_special=True) == "user\nhi 😀\nassistant\n"
    # special=False: the same text is plain text, never the control ids
    plain = gpt2.encode(text)
    assert start not in plain and end not in plain
    assert plain == PyBPE(gpt2_meta, QWEN2_RE).encode(text)
    assert gpt2.decode(plain) == text


def test_gpt2_user_defined_tokens_always_match(gpt2_meta):
    meta = dict(gpt2_meta)
    toks = list(meta["tokenizer.ggml.tokens"])
    types = list(meta["tokenizer.ggml.token_type"])
    toks[-1], types[-1] = "<think>", 4
    meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"] = toks, types
    tok = Tokenizer.from_metadata(meta)
    ids = tok.encode("a<think>b")
    assert len(toks) - 1 in ids
    assert tok.decode(ids, skip_special=True) == "a<think>b"


def test_gpt2_bos_and_ids(gpt2, gpt2_meta):
    assert gpt2.n_vocab == 1024
    assert gpt2.bos_id == gpt2_meta["tokenizer.ggml.bos_token_id"]
    assert gpt2.eos_id == gpt2.token_id("<|im_end|>")
    assert gpt2.stop_ids == {
        gpt2.token_id("<|im_end|>"),
        gpt2.token_id("<|endoftext|>"),
    }
    assert gpt2.encode("hi")[0] != gpt2.bos_id  # add_bos_token False
    assert gpt2.encode("hi", add_bos=True)[0] == gpt2.bos_id


def test_pre_tokenizer_hand_cases(gpt2_meta):
    def pieces(pre, text):
        tok = Tokenizer.from_metadata({**gpt2_meta, "tokenizer.ggml.pre": pre})
        return [p for p, _ in tok._hf.pre_tokenizer.pre_tokenize_str(text)]

    # qwen2: digits one by one
    assert pieces("qwen2", "abc 12345") == ["abc", "Ġ", "1", "2", "3", "4", "5"]
    # llama3: digits in groups of three
    assert pieces("llama-bpe", "abc 12345") == ["abc", "Ġ", "123", "45"]
    # gpt2: a space joins the following digits
    assert pieces("gpt-2", "abc 12345") == ["abc", "Ġ12345"]
    # deepseek-v3: digit groups of three are split first
    assert pieces("deepseek-v3", "abc 12345") == ["abc", "Ġ", "123", "45"]
    # deepseek-v3: a run of kanji + kana stays whole; letters take one leading space
    assert pieces("deepseek-v3", "日本語です abc") == ["æĹ¥æľ¬èªŀãģ§ãģĻ", "Ġabc"]
    # deepseek-llm: newlines alone, letters with one leading space
    assert pieces("deepseek-llm", "Hi there\n42") == ["Hi", "Ġthere", "Ċ", "42"]
    # ... and its letter class keeps the singleton code points (Ohm sign, Greek oxia)
    # (Ohm sign, Greek omega with oxia, Kelvin sign: one letter run)
    assert len(pieces("deepseek-llm", "\u2126\u1f7d\u212a")) == 1
    # its ASCII punctuation class [!-/:-~] also covers letters, so (as in llama.cpp)
    # a non-ASCII letter before ASCII letters ends up on its own
    assert len(pieces("deepseek-llm", "\u03a9hm")) == 2


@pytest.mark.parametrize("pre", sorted(_PRE))
def test_every_known_pre_builds(gpt2_meta, pre):
    tok = Tokenizer.from_metadata({**gpt2_meta, "tokenizer.ggml.pre": pre})
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("text", TEXTS[:10])
def test_gpt2_pre_gpt2_matches_bytelevel_oracle(gpt2_meta, text):
    meta = {**gpt2_meta, "tokenizer.ggml.pre": "gpt-2"}
    ids = Tokenizer.from_metadata(meta).encode(text)
    assert ids == PyBPE(meta, GPT2_RE).encode(text)
    assert ids == hf_oracle(meta, pattern=None).encode(text, add_special_tokens=False).ids


def test_unknown_pre_warns_and_falls_back(gpt2_meta, caplog):
    with caplog.at_level(logging.WARNING, logger="numoe.text.tokenizer"):
        tok = Tokenizer.from_metadata({**gpt2_meta, "tokenizer.ggml.pre": "martian"})
    assert "martian" in caplog.text
    assert tok.encode("abc 12345") == PyBPE(gpt2_meta, GPT2_RE).encode("abc 12345")


# ---- streaming ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_decoder_matches_decode(gpt2, llama, text):
    for tok in (gpt2, llama):
        ids = tok.encode(text)
        dec = IncrementalDecoder(tok)
        chunks = [dec.push(i) for i in ids]
        chunks.append(dec.flush())
        assert "".join(chunks) == tok.decode(ids)
        assert not any("\ufffd" in c for c in chunks)


def test_incremental_decoder_holds_split_characters(gpt2, llama):
    ids = gpt2.encode("😀")
    assert len(ids) == 4  # not in the vocab: one token per byte
    dec = IncrementalDecoder(gpt2)
    assert [dec.push(i) for i in ids] == ["", "", "", "😀"]
    ids = llama.encode("😀", add_bos=False)  # "▁" (the dummy prefix, dropped) + 4 bytes
    dec = IncrementalDecoder(llama)
    assert [dec.push(i) for i in ids] == ["", "", "", "", "😀"]
    ids = gpt2.encode("ok 😀 done")
    dec = IncrementalDecoder(gpt2)
    out = [dec.push(i) for i in ids]
    assert "".join(out) == "ok 😀 done"
    assert all(("😀" in c) or ("\ufffd" not in c and "\ud83d" not in c) for c in out)


def test_incremental_decoder_invalid_utf8_matches_decode(gpt2):
    # a lone continuation byte and a truncated sequence at the end
    ids = [gpt2.token_id(c) for c in ("a", "\u0122", "\u00e3", "b", "\u00f0", "\u0141")]
    ids = [i for i in ids if i is not None]
    dec = IncrementalDecoder(gpt2)
    text = "".join(dec.push(i) for i in ids) + dec.flush()
    assert text == gpt2.decode(ids)
    assert "\ufffd" in text


# ---- llama (SentencePiece BPE with scores) ------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_llama_round_trip(llama, text):
    ids = llama.encode(text)
    assert ids[0] == llama.bos_id == 1
    assert llama.decode(ids, skip_special=True) == text
    assert llama.decode(ids[1:]) == text


def test_llama_leading_space_and_bytes(llama):
    ids = llama.encode("Hello world", add_bos=False)
    pieces = [llama.token_text(i) for i in ids]
    assert pieces[0].startswith("▁") and "▁world" in "".join(pieces)
    assert llama.decode(ids) == "Hello world"
    ids2 = llama.encode(" Hello", add_bos=False)
    assert llama.token_text(ids2[0]) == "▁"  # dummy prefix + the text's space
    assert llama.decode(ids2) == " Hello"
    # characters missing from the vocab fall back to their UTF-8 bytes
    emoji = llama.encode("😀", add_bos=False)
    assert [llama.token_text(i) for i in emoji] == [
        "▁",
        "<0xF0>",
        "<0x9F>",
        "<0x98>",
        "<0x80>",
    ]
    nl = llama.encode("a\nb", add_bos=False)
    assert "<0x0A>" in [llama.token_text(i) for i in nl]
    assert llama.decode(nl) == "a\nb"


def test_llama_special_tokens(llama):
    ids = llama.encode("<s>[INST] hi [/INST]", add_bos=False, special=True)
    assert ids[0] == 1
    assert llama.encode("</s>", add_bos=False, special=False) != [2]
    assert llama.encode("</s>", add_bos=False, special=True) == [2]
    assert llama.stop_ids == {2}


def _spm_meta():
    """Metadata converted (as llama.cpp's convert does) from a real SentencePiece model."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_SYNTH_TEXT.splitlines()),
        model_writer=buf,
        model_type="bpe",
        vocab_size=500,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        minloglevel=2,
        num_threads=1,
    )
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    toks, types, scores = [], [], []
    for i in range(sp.get_piece_size()):
        toks.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(
            2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1
        )
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": toks,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.bos_token_id": sp.bos_id(),
        "tokenizer.ggml.eos_token_id": sp.eos_id(),
    }
    return sp, meta


def test_llama_matches_sentencepiece():
    sp, meta = _spm_meta()
    tok = Tokenizer.from_metadata(meta)
    texts = TEXTS + [
        "Hello  world\n\nnew line",
        "thethethe  the",
        "The processor must read the attention weights, the shared experts and more.",
    ]
    for text in texts:
        ids = tok.encode(text, add_bos=False)
        assert ids == sp.encode(text), text
        assert tok.decode(ids) == sp.decode(ids) == text
    assert tok.encode("hi")[0] == sp.bos_id()


# ---- chat templates -----------------------------------------------------------------------


def _hf_render(template, bos, eos, messages, **kw):
    from transformers import PreTrainedTokenizerFast

    hf = tokenizers.Tokenizer(models.BPE({"a": 0, bos: 1, eos: 2}, []))
    fast = PreTrainedTokenizerFast(tokenizer_object=hf, bos_token=bos, eos_token=eos)
    return fast.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=True,
        chat_template=template,
        **kw,
    )


def test_chat_template_qwen3_matches_transformers(gpt2_meta):
    tok = Tokenizer.from_metadata({**gpt2_meta, "tokenizer.chat_template": QWEN3_TEMPLATE})
    msgs = CHAT + [
        {
            "role": "assistant",
            "content": "<think>\nhmm\n</think>\n\nLet me check.",
            "tool_calls": [{"function": {"name": "météo", "arguments": {"ville": "Zürich"}}}],
        },
        {"role": "tool", "content": '{"temp": "20°C"}'},
    ]
    tools = [{"type": "function", "function": {"name": "météo", "description": "Wetter ☀"}}]
    for kw in ({}, {"enable_thinking": False}, {"tools": tools}):
        ours = tok.apply_chat_template(msgs, add_generation_prompt=True, **kw)
        theirs = _hf_render(QWEN3_TEMPLATE, "<|endoftext|>", "<|im_end|>", msgs, **kw)
        assert ours == theirs
    assert '"ville": "Zürich"' in ours  # tojson keeps non-ASCII
    assert ours.endswith("<|im_start|>assistant\n")


def test_chat_template_mistral_matches_transformers(llama):
    msgs = [m for m in CHAT if m["role"] != "system"]
    for template in (MISTRAL_TEMPLATE, MISTRAL_V01_TEMPLATE):
        ours = llama.apply_chat_template(msgs, chat_template=template)
        assert ours == _hf_render(template, "<s>", "</s>", msgs)
        assert ours.startswith("<s>[INST] Hi there!")
    ours = llama.apply_chat_template(CHAT)  # the synthetic vocab's template folds the system
    assert ours == _hf_render(MISTRAL_TEMPLATE, "<s>", "</s>", CHAT)
    with pytest.raises(jinja2.TemplateError, match="alternate"):
        llama.apply_chat_template(CHAT, chat_template=MISTRAL_V01_TEMPLATE)


def test_encode_chat_single_bos(llama, gpt2):
    ids = llama.encode_chat([{"role": "user", "content": "hi"}])
    assert ids[0] == 1 and ids[1] != 1
    ids = gpt2.encode_chat([{"role": "user", "content": "hi"}])
    assert ids[0] == gpt2.token_id("<|im_start|>")
    assert gpt2.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_chat_template_fallback_is_chatml(gpt2_meta, caplog):
    meta = {k: v for k, v in gpt2_meta.items() if k != "tokenizer.chat_template"}
    tok = Tokenizer.from_metadata(meta)
    assert tok.chat_template is None
    with caplog.at_level(logging.WARNING, logger="numoe.text.chat_template"):
        text = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert "chat template" in caplog.text
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__init__.__globals__ }}",
        "{% set x = [] %}{{ x.append(1) }}",
        "{{ messages.append({'role': 'x'}) }}",
    ],
)
def test_chat_template_sandbox(gpt2, template):
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(ChatTemplateError, match="SecurityError: .*unsafe"):
        gpt2.apply_chat_template(msgs, chat_template=template)
    assert msgs == [{"role": "user", "content": "hi"}]


def test_chat_template_globals(gpt2):
    out = gpt2.apply_chat_template(
        [],
        chat_template="{{ strftime_now('%Y') | length }}{% for i in range(5) %}"
        "{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}{{ {'k': 'é'} | tojson }}",
    )
    assert out == '401{"k": "é"}'
    with pytest.raises(jinja2.TemplateError, match="boom"):
        gpt2.apply_chat_template([], chat_template="{{ raise_exception('boom') }}")


# ---- construction and bad metadata --------------------------------------------------------


def test_from_gguf_uses_meta(gpt2_meta):
    tok = Tokenizer.from_gguf(SimpleNamespace(meta=gpt2_meta))
    assert tok.n_vocab == 1024


def _without(meta, key):
    return {k: v for k, v in meta.items() if k != key}


@pytest.mark.parametrize(
    "change,key",
    [
        (lambda m: _without(m, "tokenizer.ggml.tokens"), "tokenizer.ggml.tokens"),
        (lambda m: _without(m, "tokenizer.ggml.model"), "tokenizer.ggml.model"),
        (lambda m: {**m, "tokenizer.ggml.model": "bert"}, "tokenizer.ggml.model"),
        (lambda m: _without(m, "tokenizer.ggml.merges"), "tokenizer.ggml.merges"),
        (
            lambda m: {
                **m,
                "tokenizer.ggml.merges": [*m["tokenizer.ggml.merges"], "Ġq zzz"],
            },
            "tokenizer.ggml.merges",
        ),
        (
            lambda m: {**m, "tokenizer.ggml.merges": ["nospace"]},
            "tokenizer.ggml.merges",
        ),
        (
            lambda m: {**m, "tokenizer.ggml.token_type": [1, 1]},
            "tokenizer.ggml.token_type",
        ),
        (lambda m: {**m, "tokenizer.ggml.tokens": []}, "tokenizer.ggml.tokens"),
        (
            lambda m: {**m, "tokenizer.ggml.bos_token_id": "x"},
            "tokenizer.ggml.bos_token_id",
        ),
    ],
)
def test_bad_metadata(gpt2_meta, change, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")) as e:
        Tokenizer.from_metadata(change(gpt2_meta))
    assert "\n" not in str(e.value)


def test_bad_llama_scores(llama_meta):
    with pytest.raises(ValueError, match=r"tokenizer\.ggml\.scores"):
        Tokenizer.from_metadata({**llama_meta, "tokenizer.ggml.scores": [0.0]})
