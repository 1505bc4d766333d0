"""`numoe chat`: interactive chat with the model's template.

On a terminal, lines are read with Python's `readline` (arrow keys, history). A full context
drops the oldest turns (the system prompt stays) instead of ending the session. Commands
(`/help`) are handled here and never sent to the model."""

from __future__ import annotations

import re
import sys

from .common import HELP_FMT, add_model_args, add_sampling_args, load_from_args, sampler_from_args

COMMANDS = {
    "/help": "help",
    "/?": "help",
    "/clear": "clear",
    "/reset": "clear",
    "/exit": "exit",
    "/quit": "exit",
}

HELP = '''\
commands (never sent to the model):
  /help, /?        this help
  /clear, /reset   start a new conversation (the system prompt stays)
  /exit, /quit     quit (Ctrl-D at the prompt too)
several lines: end a line with \\ to continue on the next one, or type """ on a line of its
  own, then the lines, then """ again
a message that starts with / : type it with // (//etc sends /etc)
Ctrl-C stops the current reply; up/down arrows recall earlier lines (on a terminal).
when the context (-c) is full, the oldest turns are dropped, the system prompt stays'''

_COMMAND_RE = re.compile(r"/[A-Za-z?]+")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "chat",
        help="interactive chat using the model's chat template",
        description="Chat with a model. Ctrl-C stops the current reply; Ctrl-D or /exit "
        "quits; /clear starts a new conversation; /help lists the commands. A line ending in "
        '\\ continues on the next, and """ on a line of its own starts and ends a block of '
        "lines. On a terminal the arrow keys edit the line and recall earlier ones. When the "
        "context (-c) is full, the oldest turns are dropped (the system prompt stays).",
        formatter_class=HELP_FMT,
    )
    add_model_args(p)
    p.add_argument("--system", default=None, help="system prompt (default: none)")
    add_sampling_args(p, n_predict=-1)
    p.set_defaults(func=main)


class LineReader:
    """Lines from stdin: through `input()` with `readline` loaded (line editing, history)
    when stdin and stdout are terminals; a prompt on stderr when only stdin is one; no prompt
    when stdin is a pipe or file."""

    def __init__(self, stdin=None, stdout=None):
        self.stdin = stdin if stdin is not None else sys.stdin
        stdout = stdout if stdout is not None else sys.stdout
        self.tty = self.stdin.isatty()
        self.editing = False
        if self.tty and stdout.isatty() and self.stdin is sys.stdin:
            try:
                import readline  # noqa: F401 - input() edits lines and keeps history with it
            except ImportError:  # pragma: no cover - Python built without readline
                pass
            else:
                self.editing = True

    def read(self, prompt: str) -> str | None:
        """One line without its newline; None at end of input."""
        if self.editing:
            try:
                return input(prompt)
            except EOFError:
                return None
        if self.tty:
            print(prompt, end="", flush=True, file=sys.stderr)
        line = self.stdin.readline()
        if not line:
            return None
        return line.rstrip("\r\n")

    def message(self) -> str | None:
        """One message: a line; lines joined while each ends in a backslash; or the lines
        between two lines of three double quotes. None at end of input."""
        line = self.read("> ")
        if line is None:
            return None
        parts = []
        if line.strip() == '"""':
            while (line := self.read("... ")) is not None and line.strip() != '"""':
                parts.append(line)
            return "\n".join(parts)
        while line.endswith("\\"):
            parts.append(line[:-1])
            line = self.read("... ")
            if line is None:
                line = ""
                break
        parts.append(line)
        return "\n".join(parts)


def command(text: str) -> str | None:
    """The command a message is ('help', 'clear', 'exit', or 'unknown'), None for text."""
    first = text.split(maxsplit=1)[0] if text else ""
    if "\n" in text or not _COMMAND_RE.fullmatch(first):
        return None
    return COMMANDS.get(first.lower(), "unknown")


def _turns(n: int) -> str:
    return f"{n} turn" if n == 1 else f"{n} turns"


def fit_context(messages: list[dict], n_keep: int, encode, n_ctx: int, room: int):
    """Drop the oldest turns (a user message and the replies after it; the first `n_keep`
    messages, the system prompt, stay) until the prompt leaves `room` tokens of the context
    for the reply, or only the last message is left. Returns (prompt tokens, turns
    dropped, prompt length before); `messages` is changed in place."""
    prompt = encode(messages)
    before, dropped = len(prompt), 0
    while len(prompt) + room > n_ctx and len(messages) > n_keep + 1:
        del messages[n_keep]
        while len(messages) > n_keep + 1 and messages[n_keep]["role"] != "user":
            del messages[n_keep]
        dropped += 1
        prompt = encode(messages)
    return prompt, dropped, before


def main(args) -> int:
    from ..engine import Session
    from ..text import IncrementalDecoder

    _, model, tok = load_from_args(args)
    sess = Session(model, n_ctx=args.ctx_size, chunk=args.batch_size,
                   type_k=args.cache_type_k, type_v=args.cache_type_v)  # fmt: skip
    sampler = sampler_from_args(args)
    base = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(base)
    max_new = args.n_predict if args.n_predict > 0 else args.ctx_size
    # room kept for a reply when old turns are dropped
    room = max(1, min(max_new, args.ctx_size // 4))
    reader = LineReader()
    if reader.tty:
        print("numoe: chat; /help lists the commands, Ctrl-D quits", file=sys.stderr)
    while True:
        try:
            text = reader.message()
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 0
        if text is None:
            return 0
        text = text.strip()
        if not text:
            continue
        cmd = command(text)
        if cmd == "exit":
            return 0
        if cmd == "help":
            print(HELP, file=sys.stderr)
            continue
        if cmd == "clear":
            messages = list(base)
            print("numoe: new conversation", file=sys.stderr)
            continue
        if cmd == "unknown":
            print(
                f"numoe: unknown command {text.split()[0]} (not sent; /help lists the "
                "commands, // starts a message with /)",
                file=sys.stderr,
            )
            continue
        if text.startswith("//"):
            text = text[1:]
        messages.append({"role": "user", "content": text})
        prompt, dropped, before = fit_context(
            messages, len(base), tok.encode_chat, args.ctx_size, room
        )
        if len(prompt) >= args.ctx_size:
            messages.pop()
            print(
                f"numoe: this message takes {len(prompt)} tokens with the chat template; the "
                f"context (-c {args.ctx_size}) has no room to reply: not sent",
                file=sys.stderr,
            )
            continue
        if dropped:
            print(
                f"numoe: context full: dropped the oldest {_turns(dropped)} ({before} -> "
                f"{len(prompt)} of {args.ctx_size} tokens)",
                file=sys.stderr,
            )
        dec, reply, note = IncrementalDecoder(tok, skip_special=True), [], ""
        try:
            for t in sess.generate(prompt, max_new, sampler, tok.stop_ids, args.ignore_eos):
                reply.append(t)
                sys.stdout.write(dec.push(t))
                sys.stdout.flush()
        except KeyboardInterrupt:
            note = " [stopped]"
        else:
            if sess.finish_reason == "context":
                note = f" [reply cut: the context (-c {args.ctx_size}) is full]"
            elif sess.finish_reason == "length" and args.n_predict > 0:
                note = f" [reply cut at -n {args.n_predict} tokens]"
        sys.stdout.write(dec.flush())
        sys.stdout.flush()
        if note:
            print(note, end="", file=sys.stderr, flush=True)
        print(flush=True)
        messages.append({"role": "assistant", "content": tok.decode(reply, skip_special=True)})
        print(f"[{sess.timings.summary()}]", file=sys.stderr)
