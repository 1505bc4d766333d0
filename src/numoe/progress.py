"""Load feedback on stderr: a progress bar (tensors n/N, bytes) while a model loads, redrawn
in place at most 10 times a second, only when stderr is a terminal; one final line always.

No dependency: a carriage return and a line of text."""

from __future__ import annotations

import sys
import time

WIDTH = 24  # characters of the bar


def size(n: float) -> str:
    """Bytes as GiB, or MiB below 1 GiB."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class LoadProgress:
    """Watches a GGUFFile's `tensor()` calls (``g.on_tensor = progress``): the tensors the model
    has taken so far, of all the file holds, and their bytes."""

    def __init__(self, g, label: str, stream=None, tty: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.label = label
        self.total_n = len(g.tensors)
        self.total_bytes = sum(t.nbytes for t in g.tensors.values())
        self.seen: set[str] = set()
        self.bytes = 0
        self.t0 = time.perf_counter()
        self._drawn = 0.0
        self._width = 0

    def __call__(self, t) -> None:
        if t.name in self.seen:
            return
        self.seen.add(t.name)
        self.bytes += t.nbytes
        now = time.perf_counter()
        if self.tty and now - self._drawn >= 0.1:
            self._drawn = now
            self._draw(now)

    def line(self, now: float) -> str:
        frac = self.bytes / self.total_bytes if self.total_bytes else 1.0
        fill = min(WIDTH, int(frac * WIDTH))
        bar = "#" * fill + "." * (WIDTH - fill)
        return (
            f"numoe: loading {self.label} [{bar}] {len(self.seen)}/{self.total_n} tensors, "
            f"{size(self.bytes)}/{size(self.total_bytes)}, {now - self.t0:.1f} s"
        )

    def _draw(self, now: float) -> None:
        text = self.line(now)
        pad = " " * max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write("\r" + text + pad)
        self.stream.flush()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def clear(self) -> None:
        """Wipe the bar off its line (before the final line, or an error)."""
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def finish(self, text: str) -> None:
        """Clear the bar and write `text`, the final line."""
        self.clear()
        print(text, file=self.stream, flush=True)


class WriteProgress:
    """Feedback while a file is written (numoe synth): ``on_tensor(done, n, bytes, total)``
    after each tensor. On a terminal a bar redrawn in place (at most 10 times a second);
    otherwise a line each time another ~10 % of the bytes is written."""

    def __init__(self, label: str, stream=None, tty: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.label = label
        self.t0 = time.perf_counter()
        self._drawn = 0.0
        self._width = 0
        self._decile = 0  # tenths reported so far (not on a terminal)

    def line(self, done: int, n: int, nbytes: int, total: int, bar: bool = True) -> str:
        frac = nbytes / total if total else 1.0
        fill = min(WIDTH, int(frac * WIDTH))
        shown = f" [{'#' * fill}{'.' * (WIDTH - fill)}]" if bar else ""
        return (
            f"numoe: writing {self.label}{shown} {frac:{'4' if bar else ''}.0%} {done}/{n} tensors, "
            f"{size(nbytes)}/{size(total)}, {time.perf_counter() - self.t0:.1f} s"
        )

    def __call__(self, done: int, n: int, nbytes: int, total: int) -> None:
        frac = nbytes / total if total else 1.0
        if self.tty:
            now = time.perf_counter()
            if now - self._drawn >= 0.1 or done == n:
                self._drawn = now
                text = self.line(done, n, nbytes, total)
                pad = " " * max(0, self._width - len(text))
                self._width = len(text)
                self.stream.write("\r" + text + pad)
                self.stream.flush()
            return
        decile = min(10, int(frac * 10 + 1e-9))
        if decile > self._decile and done < n:
            self._decile = decile
            print(self.line(done, n, nbytes, total, bar=False), file=self.stream, flush=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def clear(self) -> None:
        """Wipe the bar off its line (before the final line, or an error)."""
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
