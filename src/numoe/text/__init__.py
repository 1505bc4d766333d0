"""Text: the GGUF tokenizer, chat templates and synthetic vocabularies.

* `numoe.text.tokenizer`: `Tokenizer` (from GGUF metadata) and `IncrementalDecoder`.
* `numoe.text.chat_template`: chat templates rendered in Jinja2's sandbox; the built-in
  ChatML and Mistral templates.
* `numoe.text.synth_vocab`: `synth_vocab_metadata`, a small trained vocabulary for
  synthetic models.
"""

from .chat_template import CHATML_TEMPLATE, MISTRAL_TEMPLATE
from .synth_vocab import synth_vocab_metadata
from .tokenizer import IncrementalDecoder, Tokenizer

__all__ = [
    "CHATML_TEMPLATE",
    "MISTRAL_TEMPLATE",
    "IncrementalDecoder",
    "Tokenizer",
    "synth_vocab_metadata",
]
