"""A request's generated tokens as text: UTF-8 completed across tokens, stop strings cut.

A stop string never reaches the client, even when it arrives split across tokens: text that
could still turn into one is held back until the next token settles it.
"""

from __future__ import annotations

from ..text import IncrementalDecoder, Tokenizer


def held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of `text` could be the start of a stop string."""
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), keep, -1):
            if text.endswith(s[:n]):
                keep = n
                break
    return keep


class TextOut:
    """push(token) -> (text safe to send now, whether a stop string ended the output).

    `text` is everything sent so far; after a stop, the output is cut before the earliest
    stop string and nothing more is accepted."""

    def __init__(self, tok: Tokenizer, stops: list[str]):
        self.dec = IncrementalDecoder(tok, skip_special=True)
        self.stops = [s for s in stops if s]
        self.pending = ""  # decoded, not sent yet
        self.text = ""  # sent
        self.stopped = False

    def push(self, token: int) -> tuple[str, bool]:
        return self._take(self.dec.push(token), final=False)

    def finish(self) -> tuple[str, bool]:
        """(the held-back text, whether it holds a stop string) once generation ends: an
        incomplete UTF-8 tail becomes U+FFFD, which may complete a stop string."""
        if self.stopped:
            return "", True
        return self._take(self.dec.flush(), final=True)

    def _take(self, piece: str, final: bool) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        buf = self.pending + piece
        # the earliest stop string in the text not yet sent (it may start in the held-back part)
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending, self.stopped = buf[:cut], "", True
        else:
            keep = 0 if final else held_back(buf, self.stops)
            out, self.pending = buf[: len(buf) - keep], buf[len(buf) - keep :]
        self.text += out
        return out, self.stopped
