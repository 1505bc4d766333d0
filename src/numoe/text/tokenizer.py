"""Tokenizer built from GGUF metadata.

Two GGUF tokenizer models are supported, built on the `tokenizers` library:

* ``gpt2``: byte-level BPE (Qwen, DeepSeek, Llama 3 ...). Tokens and merges are stored as
  llama.cpp stores them (the same strings HF's byte-level BPE uses). The pre-tokenizer
  regex is chosen by ``tokenizer.ggml.pre`` with llama.cpp's expressions.
* ``llama``: SentencePiece-style BPE with scores (Mistral/Mixtral). Merges are derived
  from the scores as HF's ``SentencePieceExtractor`` does; unknown characters fall back
  to the ``<0xNN>`` byte tokens.

Control tokens (token_type 3) are special added tokens: matched whole in text only when
``encode(..., special=True)``. User-defined tokens (type 4) are always matched whole, as
llama.cpp does.

Decoding does not use `tokenizers`: each id maps to its bytes and the byte stream is
decoded as UTF-8 (errors replaced), which `IncrementalDecoder` reproduces chunk by chunk.

Chat templates are rendered by `numoe.text.chat_template`.
"""

from __future__ import annotations

import codecs
import logging
import re
import threading
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from ..gguf.read import GGUFError
from ..quote import quote
from .chat_template import render_chat

log = logging.getLogger(__name__)

__all__ = ["IncrementalDecoder", "Tokenizer"]

# GGUF token types (llama.cpp's llama_token_type)
TT_NORMAL, TT_UNKNOWN, TT_CONTROL, TT_USER_DEFINED, TT_UNUSED, TT_BYTE = (
    1,
    2,
    3,
    4,
    5,
    6,
)

K_MODEL = "tokenizer.ggml.model"
K_PRE = "tokenizer.ggml.pre"
K_TOKENS = "tokenizer.ggml.tokens"
K_TYPES = "tokenizer.ggml.token_type"
K_SCORES = "tokenizer.ggml.scores"
K_MERGES = "tokenizer.ggml.merges"
K_TEMPLATE = "tokenizer.chat_template"

# Pre-tokenizer regexes, as llama.cpp (llama-vocab.cpp) writes them. Each list is applied in
# sequence; every regex splits each piece into matches and the text between them.
_RE_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_RE_LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_RE_QWEN2 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_RE_DEEPSEEK_LLM = [
    "[\r\n]",
    (
        "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅ"
        # Greek Extended + letterlike symbols, escaped: several of these code points are
        # canonical singletons that editors normalise away (e.g. U+1F7D, U+2126, U+212A)
        "ὐ-ὗὙὛὝ\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc"
        "\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc"
        "\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d"
        "\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184Ⰰ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎ"
        "ꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ\U00010400-\U0001044f𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+"
    ),
    "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
    "\\s+$",
    "[一-龥ࠀ-一가-퟿]+",
    "\\p{N}+",
]
_RE_DEEPSEEK3 = [
    r"\p{N}{1,3}",
    "[一-龥぀-ゟ゠-ヿ]+",
    (
        "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
        "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"
    ),
]
_RE_DEEPSEEK_CODER = [
    "[\r\n]",
    r"\s?\p{L}+",
    r"\s?\p{P}+",
    "[一-龥ࠀ-一가-퟿]+",
    r"\p{N}",
]

# tokenizer.ggml.pre -> (regex list or None for the GPT-2 byte-level default, ignore_merges)
_PRE: dict[str, tuple[list[str] | None, bool]] = {
    "default": (None, False),
    "gpt2": (None, False),
    "gpt-2": (None, False),
    "phi-2": (None, False),
    "roberta-bpe": (None, False),
    "llama-bpe": ([_RE_LLAMA3], True),
    "llama3": ([_RE_LLAMA3], True),
    "llama-v3": ([_RE_LLAMA3], True),
    "dbrx": ([_RE_LLAMA3], False),
    "smaug-bpe": ([_RE_LLAMA3], False),
    "falcon3": ([_RE_LLAMA3], True),
    "pixtral": ([_RE_LLAMA3], True),
    "qwen2": ([_RE_QWEN2], False),
    "deepseek-r1-qwen": ([_RE_QWEN2], False),
    "stablelm2": ([_RE_QWEN2], False),
    "megrez": ([_RE_QWEN2], False),
    "deepseek-llm": (_RE_DEEPSEEK_LLM, False),
    "deepseek-coder": (_RE_DEEPSEEK_CODER, False),
    "deepseek-v3": (_RE_DEEPSEEK3, False),
}

# stop tokens recognised by their text (when of control type)
_STOP_TEXTS = (
    "<|im_end|>",
    "<|endoftext|>",
    "<｜end▁of▁sentence｜>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
)

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


@lru_cache(maxsize=1)
def _unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in _bytes_to_unicode().items()}


def _bad(key: str, why: str) -> ValueError:
    return ValueError(f"tokenizer metadata: {key!r} {why}")


def _as_str(x: Any, key: str = K_TOKENS) -> str:
    if isinstance(x, bytes | bytearray):
        return bytes(x).decode("utf-8", errors="replace")
    if not isinstance(x, str):
        raise _bad(key, f"holds a {type(x).__name__} value where a string belongs")
    return x


def _ints(raw: Any, key: str) -> list[int]:
    """An array of integers (token types)."""
    if not isinstance(raw, list | tuple) or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in raw
    ):
        raise _bad(key, "must be an array of integers")
    return list(raw)


def _flag(meta: dict[str, Any], key: str, default: bool) -> bool:
    v = meta.get(key, default)
    if isinstance(v, bool) or (isinstance(v, int) and v in (0, 1)):
        return bool(v)
    raise _bad(key, f"must be a bool, not {quote(v, 40)}")


# ids that may point outside the vocabulary: llama.cpp ignores them, and numoe never uses them
_UNUSED_IDS = frozenset({"tokenizer.ggml.padding_token_id"})


def _opt_id(meta: dict[str, Any], key: str, n: int) -> int | None:
    v = meta.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(key, f"must be an integer token id, not {quote(v, 40)}")
    if v == -1 or v == 0xFFFFFFFF:  # llama.cpp writes -1 for "none"
        return None
    if not 0 <= v < n:
        if key in _UNUSED_IDS:
            log.warning("tokenizer metadata: %s=%d is outside the vocab (%d); ignored", key, v, n)
            return None
        raise _bad(key, f"= {v} is outside the vocabulary of {n} tokens")
    return v


def _sp_merges(
    vocab: dict[str, int], scores: dict[str, float], pieces: Iterable[str]
) -> list[tuple[str, str]]:
    """Merges from SentencePiece scores, ordered as HF's ``generate_merges`` does."""
    merges: list[tuple[str, str, float]] = []
    for piece in pieces:
        score = scores[piece]
        local = []
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            if left in vocab and right in vocab:
                local.append((left, right, score))
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


class Tokenizer:
    """A GGUF tokenizer. Build with `from_metadata` or `from_gguf`."""

    def __init__(self) -> None:  # use the classmethods
        self.kind: str = ""
        self.pre: str | None = None
        self.tokens: list[str] = []
        self.token_types: list[int] = []
        self.bos_id: int | None = None
        self.eos_id: int | None = None
        self.eot_id: int | None = None
        self.eom_id: int | None = None
        self.pad_id: int | None = None
        self.add_bos: bool = False
        self.add_eos: bool = False
        self.chat_template: str | None = None
        self.stop_ids: set[int] = set()
        self._strip_leading_space = False
        self._bytes: list[bytes] = []
        self._hf = None
        self._lock = threading.Lock()
        self._templates: dict[str, Any] = {}

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, g: Any) -> Tokenizer:
        """From a `numoe.gguf.GGUFFile` (anything with ``.meta`` and ``.path``); bad
        tokenizer metadata is a one-line GGUFError naming the file and the key."""
        try:
            return cls.from_metadata(g.meta)
        except GGUFError:
            raise
        except ValueError as e:
            raise GGUFError(f"{getattr(g, 'path', 'GGUF metadata')}: {e}") from None

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> Tokenizer:
        """From GGUF metadata keys mapped to Python values."""
        if K_MODEL not in meta:
            raise _bad(K_MODEL, "is missing")
        kind = _as_str(meta[K_MODEL], K_MODEL)
        if kind not in ("gpt2", "llama"):
            raise _bad(K_MODEL, f"= {quote(kind)} is not supported (supported: 'gpt2', 'llama')")
        raw_tokens = meta.get(K_TOKENS)
        if raw_tokens is None:
            raise _bad(K_TOKENS, "is missing")
        if isinstance(raw_tokens, str | bytes) or not hasattr(raw_tokens, "__len__"):
            raise _bad(K_TOKENS, "must be a list of strings")
        tokens = [_as_str(t) for t in raw_tokens]
        n = len(tokens)
        if n == 0:
            raise _bad(K_TOKENS, "is empty")

        raw_types = meta.get(K_TYPES)
        if raw_types is None:
            types = [TT_NORMAL] * n
            if kind == "llama":
                types = [TT_BYTE if _BYTE_TOKEN.match(t) else TT_NORMAL for t in tokens]
        else:
            types = _ints(raw_types, K_TYPES)
            if len(types) != n:
                raise _bad(K_TYPES, f"has {len(types)} entries but {K_TOKENS} has {n}")

        self = cls()
        self.kind = kind
        self.tokens = tokens
        self.token_types = types

        vocab: dict[str, int] = {}
        n_dup = 0
        for i, t in enumerate(tokens):
            if t in vocab:
                n_dup += 1
            else:
                vocab[t] = i
        if n_dup:
            log.warning(
                "tokenizer: %d duplicate token strings; the first id of each is used",
                n_dup,
            )

        if kind == "gpt2":
            hf = self._build_gpt2(meta, vocab)
        else:
            hf = self._build_llama(meta, vocab)

        # control tokens: special (matched only with special=True); user-defined: always
        added = []
        for i, (t, ty) in enumerate(zip(tokens, types, strict=True)):
            if ty in (TT_CONTROL, TT_USER_DEFINED) and t and vocab.get(t) == i:
                added.append(AddedToken(t, special=ty == TT_CONTROL, normalized=False))
        if added:
            hf.add_tokens(added)
        self._hf = hf

        # special ids and flags
        self.bos_id = _opt_id(meta, "tokenizer.ggml.bos_token_id", n)
        self.eos_id = _opt_id(meta, "tokenizer.ggml.eos_token_id", n)
        self.eot_id = _opt_id(meta, "tokenizer.ggml.eot_token_id", n)
        self.eom_id = _opt_id(meta, "tokenizer.ggml.eom_token_id", n)
        self.pad_id = _opt_id(meta, "tokenizer.ggml.padding_token_id", n)
        if kind == "llama":
            if self.bos_id is None and "<s>" in vocab:
                self.bos_id = vocab["<s>"]
            if self.eos_id is None and "</s>" in vocab:
                self.eos_id = vocab["</s>"]
        self.add_bos = _flag(meta, "tokenizer.ggml.add_bos_token", kind == "llama")
        self.add_eos = _flag(meta, "tokenizer.ggml.add_eos_token", False)
        tmpl = meta.get(K_TEMPLATE)
        self.chat_template = _as_str(tmpl, K_TEMPLATE) if tmpl else None

        stops = {i for i in (self.eos_id, self.eot_id, self.eom_id) if i is not None}
        for t in _STOP_TEXTS:
            i = vocab.get(t)
            if i is not None and types[i] == TT_CONTROL:
                stops.add(i)
        self.stop_ids = stops
        self._bytes = self._token_bytes_table()
        return self

    def _build_gpt2(self, meta: dict[str, Any], vocab: dict[str, int]):
        raw_merges = meta.get(K_MERGES)
        if raw_merges is None:
            raise _bad(K_MERGES, "is missing (required for tokenizer model 'gpt2')")
        merges: list[tuple[str, str]] = []
        if not isinstance(raw_merges, list | tuple):
            raise _bad(K_MERGES, "must be an array of strings")
        for k, m in enumerate(raw_merges):
            m = _as_str(m, K_MERGES)
            sep = m.find(" ", 1)
            if sep < 0:
                raise _bad(K_MERGES, f"entry {k} {quote(m)} is not 'left right'")
            a, b = m[:sep], m[sep + 1 :]
            for part in (a, b, a + b):
                if part not in vocab:
                    raise _bad(
                        K_MERGES, f"entry {k} {quote(m)} references unknown token {quote(part)}"
                    )
            merges.append((a, b))

        pre = _as_str(meta.get(K_PRE, "default"), K_PRE)
        self.pre = pre
        if pre not in _PRE:
            log.warning(
                "tokenizer: unknown %s %s; using the GPT-2 pre-tokenizer regex "
                "(tokenization may differ from the model's)",
                K_PRE,
                quote(pre),
            )
        regexes, ignore_merges = _PRE.get(pre, (None, False))
        model = models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges)
        hf = HFTokenizer(model)
        if regexes is None:
            hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        else:
            steps = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
            steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
            hf.pre_tokenizer = pre_tokenizers.Sequence(steps)
        hf.decoder = decoders.ByteLevel()
        return hf

    def _build_llama(self, meta: dict[str, Any], vocab: dict[str, int]):
        tokens, types = self.tokens, self.token_types
        raw_scores = meta.get(K_SCORES)
        if raw_scores is None:
            scores = [-float(i) for i in range(len(tokens))]
        else:
            if not isinstance(raw_scores, list | tuple) or not all(
                isinstance(x, int | float) and not isinstance(x, bool) for x in raw_scores
            ):
                raise _bad(K_SCORES, "must be an array of numbers")
            scores = [float(s) for s in raw_scores]
            if len(scores) != len(tokens):
                raise _bad(
                    K_SCORES,
                    f"has {len(scores)} entries but {K_TOKENS} has {len(tokens)}",
                )
        pieces = [
            t
            for i, t in enumerate(tokens)
            if types[i] in (TT_NORMAL, TT_USER_DEFINED) and vocab.get(t) == i
        ]
        score_of = {t: scores[vocab[t]] for t in pieces}
        merges = _sp_merges(vocab, score_of, pieces)
        for b in range(256):
            if f"<0x{b:02X}>" not in vocab:
                log.warning("tokenizer: llama vocab lacks byte tokens; no byte fallback")
                break
        unk = next((t for i, t in enumerate(tokens) if types[i] == TT_UNKNOWN), None)
        if unk is None and "<unk>" in vocab:
            unk = "<unk>"
        model = models.BPE(
            vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True
        )
        hf = HFTokenizer(model)
        add_prefix = _flag(meta, "tokenizer.ggml.add_space_prefix", True)
        steps = [normalizers.Replace(" ", "▁")]
        if add_prefix:
            steps.insert(0, normalizers.Prepend("▁"))
        hf.normalizer = normalizers.Sequence(steps)
        hf.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        )
        self._strip_leading_space = add_prefix
        return hf

    def _token_bytes_table(self) -> list[bytes]:
        out: list[bytes] = []
        if self.kind == "gpt2":
            u2b = _unicode_to_bytes()
            for t, ty in zip(self.tokens, self.token_types, strict=True):
                if ty in (TT_CONTROL, TT_USER_DEFINED):
                    out.append(t.encode("utf-8"))
                    continue
                try:
                    out.append(bytes(u2b[c] for c in t))
                except KeyError:
                    out.append(t.encode("utf-8"))
        else:
            for t, ty in zip(self.tokens, self.token_types, strict=True):
                m = _BYTE_TOKEN.match(t) if ty in (TT_BYTE, TT_NORMAL) else None
                if m is not None and (ty == TT_BYTE or len(t) == 6):
                    out.append(bytes([int(m.group(1), 16)]))
                elif ty == TT_NORMAL:
                    out.append(t.replace("▁", " ").encode("utf-8"))
                else:
                    out.append(t.encode("utf-8"))
        return out

    # ---- properties ---------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    def token_text(self, token_id: int) -> str:
        """The token's string as stored in the GGUF file."""
        return self.tokens[token_id]

    def token_id(self, text: str) -> int | None:
        """The id of a token given its stored string, or None."""
        return self._hf.token_to_id(text)

    def token_bytes(self, token_id: int, skip_special: bool = False) -> bytes:
        """The bytes a token stands for (control tokens: their text, or b'' if skipped)."""
        if not 0 <= token_id < len(self._bytes):
            raise ValueError(f"token id {token_id} is outside the vocab (n_vocab={self.n_vocab})")
        if skip_special and self.token_types[token_id] == TT_CONTROL:
            return b""
        return self._bytes[token_id]

    # ---- encode / decode ----------------------------------------------------------------

    def encode(self, text: str, add_bos: bool | None = None, special: bool = False) -> list[int]:
        """Token ids of ``text``.

        add_bos: None = the metadata's ``add_bos_token`` (llama default True, gpt2 False).
        special: match control tokens (e.g. ``<|im_start|>``) written in the text.
        """
        if add_bos is None:
            add_bos = self.add_bos
        with self._lock:
            self._hf.encode_special_tokens = not special
            ids = self._hf.encode(text, add_special_tokens=False).ids
        if add_bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if self.add_eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of ``ids``; invalid UTF-8 becomes U+FFFD. Llama vocabularies drop the
        leading space the encoder's space prefix adds (as HF does)."""
        data = b"".join(self.token_bytes(int(i), skip_special) for i in ids)
        text = data.decode("utf-8", errors="replace")
        if self._strip_leading_space and text.startswith(" "):
            text = text[1:]
        return text

    # ---- chat ---------------------------------------------------------------------------

    def _special_text(self, token_id: int | None) -> str:
        return self.tokens[token_id] if token_id is not None else ""

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Render the chat template (``tokenizer.chat_template``) as transformers does.

        Without a template (and no ``chat_template`` argument) a ChatML template is used,
        with a warning. Extra keyword arguments (tools=, enable_thinking=, ...) are passed
        to the template. Template errors (including sandbox violations, which raise
        `jinja2.exceptions.SecurityError`) propagate as `jinja2.TemplateError`.
        """
        variables: dict[str, Any] = {
            "bos_token": self._special_text(self.bos_id),
            "eos_token": self._special_text(self.eos_id),
        }
        variables.update(kwargs)
        return render_chat(
            self._templates,
            chat_template or self.chat_template,
            messages,
            add_generation_prompt,
            variables,
        )

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> list[int]:
        """Render the chat template and encode it with special tokens parsed; BOS is added
        (when the vocabulary adds one) only if the rendered text does not start with it."""
        text = self.apply_chat_template(messages, add_generation_prompt, **kwargs)
        bos = self._special_text(self.bos_id)
        add_bos = self.add_bos and not (bos and text.startswith(bos))
        return self.encode(text, add_bos=add_bos, special=True)


class IncrementalDecoder:
    """Streaming decoder: ``push(id)`` returns only complete UTF-8 text, so a character
    split across byte tokens is emitted whole once its last byte arrives. The
    concatenation of every ``push`` and a final ``flush()`` equals ``tok.decode(ids)``."""

    def __init__(self, tok: Tokenizer, skip_special: bool = False) -> None:
        self.tok = tok
        self.skip_special = skip_special
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False

    def push(self, token_id: int) -> str:
        return self._post(self._dec.decode(self.tok.token_bytes(int(token_id), self.skip_special)))

    def flush(self) -> str:
        """Emit what is left (an incomplete UTF-8 tail becomes U+FFFD) and reset."""
        s = self._post(self._dec.decode(b"", final=True))
        self._dec.reset()
        return s

    def _post(self, s: str) -> str:
        if s and not self._started:
            self._started = True
            if self.tok._strip_leading_space and s.startswith(" "):
                s = s[1:]
        return s
