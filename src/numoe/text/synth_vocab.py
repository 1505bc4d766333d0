"""Synthetic vocabularies: GGUF tokenizer metadata for a small working vocabulary.

`synth_vocab_metadata` trains a byte-level BPE (``gpt2``) or a SentencePiece-style BPE with
scores (``llama``) on a built-in English paragraph with `tokenizers`' trainer, so that
synthetic models (`numoe synth`, the tests) come with a tokenizer `Tokenizer` can load.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from tokenizers import Regex, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from .chat_template import CHATML_TEMPLATE, MISTRAL_TEMPLATE
from .tokenizer import (
    _RE_QWEN2,
    TT_BYTE,
    TT_CONTROL,
    TT_NORMAL,
    TT_UNKNOWN,
    _bytes_to_unicode,
)

__all__ = ["synth_vocab_metadata"]

_SYNTH_TEXT = """\
The engine reads a model file, maps its weights into memory and runs the layers one after
another. Each layer has an attention block and a feed-forward block; in a mixture of experts
model the feed-forward block is split into many small experts, and a router picks a few of
them for every token. Most of the weights are in the experts, but each token only touches
the ones it was sent to, so the work per token is much smaller than the size of the model.
That is why such models can run on a machine whose graphics card is far too small to hold
them: the experts stay in the main memory of the computer and are computed by the processor,
while the attention, which every token needs, runs on the graphics card when there is one.
When you ask the model a question, it first reads the whole prompt in one pass, then writes
the answer one token at a time. Every new token depends on all the tokens before it, so the
keys and values of the attention are kept in a cache and are not computed again. The speed
of writing is limited by how fast the memory can deliver the weights: for each token the
processor must read the attention weights, the shared experts and the few routed experts.
A good engine keeps the threads of the processor busy, places the memory close to the cores
that use it, and avoids copies. It should also be easy to use: one command to download, one
command to run, and clear messages when something goes wrong. Here are some numbers to try:
1, 2, 3, 10, 42, 100, 256, 1024, 2025 and 3.14159. Questions? Answers! "Quotes", (brackets),
[lists], {sets}, a-b, a_b, a/b, a+b=c, 50% off, $9.99, e-mail: user@example.com, #tag.
It's, don't, we'll, they're, I've, she'd, I'm. Hello, world. The end of the story is near,
and the people who wrote this program hope that you will find it useful and fast.
"""

_CONTROL_GPT2 = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_SYNTH_MERGES = 600  # merges trained; truncated to fit a smaller n_vocab
# reserved control tokens (<|extra_N|>, <extra_N>) before the filler words, as real
# vocabularies reserve a few; the rest of a large vocabulary is words that print as text
_N_EXTRA = 8
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def _filler_words(space: str, seen: set[str]):
    """Pseudo-words of two, then three, ... consonant-vowel syllables ('bako', 'dilu'), each
    after the vocabulary's space mark (`space`: 'Ġ' or '▁'), skipping those in `seen`.
    Normal tokens: a random model that samples them prints words, not nothing. No merge
    makes them (gpt2); their scores rank below every trained piece (llama), so only text
    that holds such a word can be tokenized with them."""
    syl = [c + v for c in _CONSONANTS for v in _VOWELS]
    n = 2
    while True:
        for k in range(len(syl) ** n):
            word = []
            for _ in range(n):
                k, r = divmod(k, len(syl))
                word.append(syl[r])
            t = space + "".join(word)
            if t not in seen:
                yield t
        n += 1


def _trained_merges(hf) -> list[tuple[str, str]]:
    out = []
    for m in json.loads(hf.to_str())["model"]["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        out.append((a, b))
    return out


@lru_cache(maxsize=4)
def _train_gpt2_merges() -> tuple[tuple[str, str], ...]:
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_RE_QWEN2), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=256 + _SYNTH_MERGES,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator([_SYNTH_TEXT], trainer)
    return tuple(_trained_merges(hf))


@lru_cache(maxsize=4)
def _train_llama_pieces() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(alphabet chars, merged pieces in merge order) of a small SentencePiece-style BPE."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=100 + _SYNTH_MERGES, show_progress=False)
    # newlines are left out so that they exercise the byte fallback, as in real SPM vocabs
    hf.train_from_iterator([_SYNTH_TEXT.replace("\n", " ")], trainer)
    merged = [a + b for a, b in _trained_merges(hf)]
    alphabet = sorted(t for t in hf.get_vocab() if len(t) == 1)
    return tuple(alphabet), tuple(merged)


def synth_vocab_metadata(
    n_vocab: int, kind: str = "gpt2", chat_template: str | None = None
) -> dict[str, Any]:
    """GGUF tokenizer metadata for a small working vocabulary of exactly ``n_vocab`` tokens.

    Deterministic and offline: merges are learned with `tokenizers`' BPE trainer on a built-in
    English paragraph, truncated to fit, and the vocab is padded with a few control tokens
    (``<|extra_N|>`` / ``<extra_N>``), then with normal tokens, pseudo-words that print as
    text (a model with a real vocabulary size samples them most of the time). kind="gpt2": byte-level BPE with ChatML specials and
    the ChatML template (pre "qwen2"). kind="llama": SentencePiece-style with ``<unk>``,
    ``<s>``, ``</s>``, 256 ``<0xNN>`` byte tokens and scores, and a Mistral [INST] template.
    ``chat_template`` overrides the template.
    """
    if kind == "gpt2":
        b2u = _bytes_to_unicode()
        tokens = [b2u[b] for b in range(256)]
        minimum = 256 + len(_CONTROL_GPT2)
        if n_vocab < minimum:
            raise ValueError(
                f"synth_vocab_metadata: n_vocab={n_vocab} < minimum {minimum} for gpt2"
            )
        merges = list(_train_gpt2_merges())[: n_vocab - minimum]
        seen = set(tokens)
        kept = []
        for a, b in merges:
            if a + b not in seen:
                seen.add(a + b)
                tokens.append(a + b)
            kept.append(f"{a} {b}")
        types = [TT_NORMAL] * len(tokens)
        first_special = len(tokens)
        tokens += _CONTROL_GPT2
        types += [TT_CONTROL] * len(_CONTROL_GPT2)
        k = 0
        while len(tokens) < n_vocab and k < _N_EXTRA:
            tokens.append(f"<|extra_{k}|>")
            types.append(TT_CONTROL)
            k += 1
        words = _filler_words(b2u[ord(" ")], seen)
        while len(tokens) < n_vocab:
            tokens.append(next(words))
            types.append(TT_NORMAL)
        eot, im_end = first_special, first_special + 2
        return {
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": "qwen2",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.merges": kept,
            "tokenizer.ggml.bos_token_id": eot,
            "tokenizer.ggml.eos_token_id": im_end,
            "tokenizer.ggml.eot_token_id": im_end,
            "tokenizer.ggml.padding_token_id": eot,
            "tokenizer.ggml.add_bos_token": False,
            "tokenizer.chat_template": chat_template or CHATML_TEMPLATE,
        }
    if kind == "llama":
        alphabet, merged = _train_llama_pieces()
        tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
        types = [TT_UNKNOWN, TT_CONTROL, TT_CONTROL] + [TT_BYTE] * 256
        scores = [0.0] * len(tokens)
        minimum = len(tokens) + len(alphabet)
        if n_vocab < minimum:
            raise ValueError(
                f"synth_vocab_metadata: n_vocab={n_vocab} < minimum {minimum} for llama"
            )
        seen = set(tokens)
        pieces = [p for p in merged if p not in seen][: n_vocab - minimum]
        for rank, p in enumerate(pieces):
            tokens.append(p)
            types.append(TT_NORMAL)
            scores.append(-float(rank))
        for j, c in enumerate(alphabet):
            tokens.append(c)
            types.append(TT_NORMAL)
            scores.append(-float(len(pieces) + j))
        k = 0
        while len(tokens) < n_vocab and k < _N_EXTRA:
            tokens.append(f"<extra_{k}>")
            types.append(TT_CONTROL)
            scores.append(0.0)
            k += 1
        seen |= set(tokens)
        words, low = _filler_words("▁", seen), -float(len(pieces) + len(alphabet))
        while len(tokens) < n_vocab:
            tokens.append(next(words))
            types.append(TT_NORMAL)
            low -= 1.0
            scores.append(low)
        return {
            "tokenizer.ggml.model": "llama",
            "tokenizer.ggml.pre": "default",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.scores": scores,
            "tokenizer.ggml.bos_token_id": 1,
            "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0,
            "tokenizer.ggml.add_bos_token": True,
            "tokenizer.ggml.add_eos_token": False,
            "tokenizer.ggml.add_space_prefix": True,
            "tokenizer.chat_template": chat_template or MISTRAL_TEMPLATE,
        }
    raise ValueError(f"synth_vocab_metadata: unknown kind {kind!r} (expected 'gpt2' or 'llama')")
