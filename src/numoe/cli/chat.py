"""`numoe chat`: interactive chat with the model's template. Ctrl-C stops the reply."""

from __future__ import annotations

import sys

from .common import HELP_FMT, add_model_args, add_sampling_args, load_from_args, sampler_from_args


def add_parser(sub) -> None:
    p = sub.add_parser(
        "chat",
        help="interactive chat using the model's chat template",
        description="Chat with a model. Ctrl-C stops the current reply; Ctrl-D or /exit "
        "quits; /reset starts a new conversation.",
        formatter_class=HELP_FMT,
    )
    add_model_args(p)
    p.add_argument("--system", default=None, help="system prompt (default: none)")
    add_sampling_args(p, n_predict=-1)
    p.set_defaults(func=main)


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
    interactive = sys.stdin.isatty()
    while True:
        try:
            if interactive:
                print("> ", end="", flush=True, file=sys.stderr)
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 0
        if not line:
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return 0
        if text == "/reset":
            messages = list(base)
            continue
        messages.append({"role": "user", "content": text})
        prompt = tok.encode_chat(messages, add_generation_prompt=True)
        dec, reply = IncrementalDecoder(tok, skip_special=True), []
        try:
            for t in sess.generate(prompt, max_new, sampler, tok.stop_ids, args.ignore_eos):
                reply.append(t)
                sys.stdout.write(dec.push(t))
                sys.stdout.flush()
        except KeyboardInterrupt:
            print(" [stopped]", end="", file=sys.stderr)
        print(dec.flush(), flush=True)
        messages.append({"role": "assistant", "content": tok.decode(reply, skip_special=True)})
        print(f"[{sess.timings.summary()}]", file=sys.stderr)
