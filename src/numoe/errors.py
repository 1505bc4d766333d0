"""Exceptions the command line catches, in a module without heavy imports: `numoe --help`
and `numoe doctor` must not import torch to be able to catch them."""

from __future__ import annotations


class ContextFull(RuntimeError):
    """The prompt plus generated tokens do not fit in the context (-c)."""
