"""Strings from a file, fit for an error line.

A GGUF file names its keys, tensors, architecture and tokens, and its chat template writes
its own error messages: any of them may hold terminal escape codes or run to kilobytes.
Every message that includes such a string passes it through `quote`; the command line
passes its whole error line through `one_line` too, as a last guard.
"""

from __future__ import annotations

__all__ = ["escape", "one_line", "quote"]


def escape(s: str) -> str:
    """`s` with every character that is not printable (control codes such as ESC, new
    lines, bidirectional overrides, unassigned code points) written as a Python escape."""
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in s)


def quote(value: object, limit: int = 60) -> str:
    """A file-supplied string as a message shows it: in single quotes, escaped, and cut to
    `limit` characters with the full length said: 'blk.0.attn' or 'AAAA...' (5012 chars)."""
    s = value if isinstance(value, str) else str(value)
    if len(s) <= limit:
        return f"'{escape(s)}'"
    return f"'{escape(s[:limit])}...' ({len(s)} chars)"


def one_line(msg: str, limit: int = 1000) -> str:
    """An error message as one printable line of at most about `limit` characters."""
    s = escape(msg)
    return s if len(s) <= limit else s[:limit] + f"... ({len(s)} chars)"
