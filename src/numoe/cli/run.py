"""`numoe run`: raw completion. Only the generated text goes to stdout."""

from __future__ import annotations

import sys

from .common import (
    HELP_FMT,
    FlagError,
    add_model_args,
    add_sampling_args,
    load_from_args,
    sampler_from_args,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="complete a prompt (no chat template)",
        description="Complete a raw prompt. Generated text goes to stdout, timings to stderr. "
        "Ctrl-C stops and prints the timings so far (exit status 130).",
        formatter_class=HELP_FMT,
    )
    add_model_args(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "-p", "--prompt", default=None,
        help="prompt text; - reads it from standard input (one trailing newline dropped) "
        "(default: 'Once upon a time')",
    )  # fmt: skip
    g.add_argument(
        "-f", "--file", "--prompt_file", "--prompt-file", dest="prompt_file", default=None,
        metavar="FILE",
        help="read the prompt from FILE (one trailing newline dropped, as llama.cpp's -f; "
        "- is standard input) (default: -p)",
    )  # fmt: skip
    add_sampling_args(p)
    p.set_defaults(func=main)


def _drop_newline(text: str) -> str:
    """llama.cpp's -f: one trailing newline (\\n or \\r\\n) is not part of the prompt."""
    return text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")


def prompt_text(args) -> str:
    """The prompt from -p TEXT, -p - / -f - (standard input) or -f FILE."""
    if args.prompt_file is not None and args.prompt_file != "-":
        try:
            with open(args.prompt_file, encoding="utf-8") as f:
                return _drop_newline(f.read())
        except UnicodeDecodeError as e:
            raise FlagError(f"-f {args.prompt_file}: not UTF-8 text ({e.reason})") from None
        except OSError as e:
            raise FlagError(f"-f {args.prompt_file}: {e.strerror}") from None
    if args.prompt == "-" or args.prompt_file == "-":
        flag = "-p -" if args.prompt == "-" else "-f -"
        if sys.stdin is None or sys.stdin.isatty():
            print(f"numoe: {flag}: reading the prompt from standard input (end with Ctrl-D)",
                  file=sys.stderr)  # fmt: skip
        try:
            return _drop_newline(sys.stdin.read())
        except UnicodeDecodeError as e:
            raise FlagError(f"{flag}: standard input is not UTF-8 text ({e.reason})") from None
    return "Once upon a time" if args.prompt is None else args.prompt


def main(args) -> int:
    from ..engine import Session
    from ..text import IncrementalDecoder

    text = prompt_text(args)  # before the load: a bad file is said at once
    _, model, tok = load_from_args(args)
    prompt = tok.encode(text, special=True)
    sess = Session(model, n_ctx=args.ctx_size, chunk=args.batch_size,
                   type_k=args.cache_type_k, type_v=args.cache_type_v)  # fmt: skip
    dec = IncrementalDecoder(tok, skip_special=True)  # control tokens print nothing, as llama.cpp
    max_new = args.n_predict if args.n_predict >= 0 else args.ctx_size
    gen = sess.generate(prompt, max_new, sampler_from_args(args), tok.stop_ids, args.ignore_eos)
    try:
        for t in gen:
            sys.stdout.write(dec.push(t))
            sys.stdout.flush()
    except KeyboardInterrupt:
        # Ctrl-C: what was generated stays, the line ends, the timings so far; 130 as a shell
        gen.close()
        sys.stdout.write(dec.flush() + "\n")
        sys.stdout.flush()
        print(f"numoe: interrupted: {sess.timings.summary()}", file=sys.stderr)
        return 130
    sys.stdout.write(dec.flush() + "\n")
    sys.stdout.flush()
    print(f"numoe: {sess.timings.summary()}", file=sys.stderr)
    return 0
