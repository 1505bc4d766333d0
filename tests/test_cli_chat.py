"""numoe chat as a user runs it (the console script in a subprocess): commands that never reach
the model, multi-line messages, a long conversation in a small context, and line editing and
history through a pseudo-terminal."""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from numoe.cli.chat import HELP, LineReader, command, fit_context


def numoe_cmd() -> list[str]:
    """The console script beside this Python (as installed), else python -m numoe."""
    exe = Path(sys.executable).parent / "numoe"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("numoe")
    return [found] if found else [sys.executable, "-m", "numoe"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    from numoe.synth import synth

    path = tmp_path_factory.mktemp("chat") / "tiny.gguf"
    synth("tiny-qwen3moe", path, "Q8_0")
    return str(path)


def chat(model: str, stdin: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*numoe_cmd(), "chat", "-m", model, "-t", "1", "--temp", "0", *flags],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def prompt_sizes(err: str) -> list[int]:
    return [int(n) for n in re.findall(r"prompt: (\d+) tokens", err)]


# ------------------------------------------------------------------------------ units


@pytest.mark.parametrize(
    "text, want",
    [
        ("/help", "help"),
        ("/?", "help"),
        ("/HELP", "help"),
        ("/clear", "clear"),
        ("/reset", "clear"),
        ("/exit", "exit"),
        ("/quit", "exit"),
        ("/nope", "unknown"),
        ("/help me please", "help"),
        ("/etc/passwd is a file", None),
        ("//help", None),
        ("hello /help", None),
        ("/help\nsecond line", None),
    ],
)
def test_command(text, want):
    assert command(text) == want


class _Lines:
    def __init__(self, text: str):
        self.lines = text.splitlines(keepends=True)

    def isatty(self) -> bool:
        return False

    def readline(self) -> str:
        return self.lines.pop(0) if self.lines else ""


def test_multi_line_messages():
    r = LineReader(_Lines('a\\\nb \\\nc\n"""\nx\n\n  y\n"""\nlast\\\n'), _Lines(""))
    assert r.message() == "a\nb \nc"
    assert r.message() == "x\n\n  y"
    assert r.message() == "last\n"  # end of input after a backslash: the message as it is
    assert r.message() is None


def test_fit_context_drops_oldest_turns_keeps_the_system_prompt():
    def encode(msgs):  # one token per character, plus 2 per message
        return [0] * sum(len(m["content"]) + 2 for m in msgs)

    msgs = [{"role": "system", "content": "s" * 8}]
    for i in range(3):
        msgs += [{"role": "user", "content": "u" * 10}, {"role": "assistant", "content": "a" * 10}]
    msgs.append({"role": "user", "content": "q" * 10})
    prompt, dropped, before = fit_context(msgs, 1, encode, n_ctx=60, room=10)
    assert before == 10 + 7 * 12 and dropped == 2
    assert len(prompt) == 10 + 3 * 12 and len(prompt) + 10 <= 60
    assert msgs[0]["role"] == "system" and [m["content"][0] for m in msgs[1:]] == list("uaq")
    # the last message alone is never dropped
    msgs = [{"role": "user", "content": "q" * 100}]
    prompt, dropped, _ = fit_context(msgs, 0, encode, n_ctx=60, room=10)
    assert dropped == 0 and len(msgs) == 1 and len(prompt) == 102


# ---------------------------------------------------------------- through the command


def test_help_and_unknown_commands_never_reach_the_model(model):
    p = chat(model, "/help\n/nope\n/clear\n/exit\nnever read\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""
    assert HELP in p.stderr
    assert "numoe: unknown command /nope (not sent" in p.stderr
    assert "generation:" not in p.stderr  # the model generated nothing
    assert "Traceback" not in p.stderr


def test_clear_starts_a_new_conversation(model):
    for clear in ("/clear", "/reset"):
        p = chat(model, f"hello\n{clear}\nhello\n", "-n", "6", "--ignore-eos")
        assert p.returncode == 0, p.stderr
        assert p.stderr.count("generation: 6 tokens") == 2
        assert "numoe: new conversation" in p.stderr
        half = len(p.stdout) // 2
        assert p.stdout[:half] == p.stdout[half:]  # greedy: the same reply to the same start
    # the second turn's prompt tokens not already in the cache: after /clear the prompt is
    # the first one again (1 token recomputed for its logits); without it, the new turn
    q = chat(model, "hello\n/clear\nhello\n", "-n", "6", "--ignore-eos")
    assert prompt_sizes(q.stderr)[1] == 1
    p = chat(model, "hello\nhello\n", "-n", "6", "--ignore-eos")
    assert prompt_sizes(p.stderr)[1] > 1


def test_multi_line_input(model):
    from numoe.gguf import open_gguf
    from numoe.text import Tokenizer

    tok = Tokenizer.from_gguf(open_gguf(model))
    want = len(tok.encode_chat([{"role": "user", "content": "line one\nline two"}]))
    outs = []
    for stdin in ("line one\\\nline two\n", '"""\nline one\nline two\n"""\n'):
        p = chat(model, stdin, "-n", "4", "--ignore-eos")
        assert p.returncode == 0, p.stderr
        assert p.stderr.count("generation:") == 1  # one message, not two
        assert prompt_sizes(p.stderr) == [want]
        outs.append(p.stdout)
    assert outs[0] == outs[1]


def test_long_conversation_in_a_small_context(model):
    """-c 64: the oldest turns go, with a notice; every message is answered; a reply the
    context cuts says so; a message that cannot fit is not sent; no error."""
    turns = [f"tell me about expert number {i}, please" for i in range(6)]
    p = chat(model, "\n".join(turns) + "\n", "-c", "64", "-n", "12", "--ignore-eos")
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("generation: 12 tokens") == 6
    notes = re.findall(r"numoe: context full: dropped the oldest (\d+) turns? \((\d+) -> (\d+)"
                       r" of 64 tokens\)", p.stderr)  # fmt: skip
    assert notes
    for _, before, after in notes:
        assert int(after) < int(before) and int(after) + 12 <= 64
    assert all(n <= 64 for n in prompt_sizes(p.stderr))
    assert "error" not in p.stderr and "Traceback" not in p.stderr

    # no -n: each reply runs until the context is full, and says so; the next turn goes on
    p = chat(model, "hello\nand again\n" + "word " * 80 + "\nbye\n", "-c", "48", "--ignore-eos")
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("[reply cut: the context (-c 48) is full]") == 3
    assert "dropped the oldest 1 turn (" in p.stderr
    assert "the context (-c 48) has no room to reply: not sent" in p.stderr
    assert p.stderr.count("generation:") == 3


def test_reply_cut_by_n_predict_says_so(model):
    p = chat(model, "hello\n", "-n", "3", "--ignore-eos")
    assert p.returncode == 0, p.stderr
    assert "[reply cut at -n 3 tokens]" in p.stderr


# -------------------------------------------------------------------- a real terminal


class _Term:
    """The master side of a pseudo-terminal: what the program wrote so far, keys to send."""

    def __init__(self, fd: int):
        self.fd, self.out = fd, b""

    def _after(self, anchor: str, n: int) -> str:
        """The text after the n-th `anchor` ('' while there are fewer)."""
        parts = self.out.decode(errors="replace").split(anchor)
        return anchor.join(parts[n:]) if len(parts) > n else ""

    def wait_for(
        self, what: str, count: int = 1, after: tuple[str, int] | None = None,
        timeout: float = 120,
    ) -> None:  # fmt: skip
        """Until `what` was written `count` times (after the after[1]-th after[0])."""
        end = time.monotonic() + timeout
        while (self._after(*after) if after else self.out.decode(errors="replace")).count(
            what
        ) < count:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what!r} x{count} in {self.out[-2000:]!r}")
            r, _, _ = select.select([self.fd], [], [], left)
            if r:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # the program closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"ended without {what!r}: {self.out[-2000:]!r}")
                self.out += chunk

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals")
def test_line_editing_and_history_on_a_terminal(model):
    """readline on a terminal: left arrows move into the line to fix a typo, the up arrow
    recalls the previous line. Both lines are /help, so nothing reaches the model; without
    line editing the escape sequences would be sent as text."""
    master, slave = os.openpty()
    env = {**os.environ, "TERM": "xterm"}
    p = subprocess.Popen(
        [*numoe_cmd(), "chat", "-m", model, "-t", "1"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    term = _Term(master)
    try:
        term.wait_for("/help lists the commands")
        term.wait_for("> ")
        term.send("/hlp\x1b[D\x1b[De\r")  # left, left, insert the missing e
        end_of_help = HELP.splitlines()[-1]
        term.wait_for("> ", after=(end_of_help, 1))  # the help, then the next prompt
        term.send("\x1b[A\r")  # up: the line before, /help
        term.wait_for("> ", after=(end_of_help, 2))
        term.send("/exit\r")
        assert p.wait(timeout=60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
    text = term.out.decode(errors="replace")
    assert "unknown command" not in text and "generation:" not in text
