"""Checks on the files numoe writes; no heavy imports (the CLI checks before loading any)."""

from __future__ import annotations

from pathlib import Path


def check_output_dir(path: str | Path) -> None:
    """FileNotFoundError / NotADirectoryError naming the directory `path` would go in, when
    it is not there."""
    parent = Path(path).parent
    if not parent.exists():
        raise FileNotFoundError(f"output directory {parent} does not exist (create it first)")
    if not parent.is_dir():
        raise NotADirectoryError(f"output directory {parent} is not a directory")
