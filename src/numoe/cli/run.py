"""`numoe run`: raw completion. Only the generated text goes to stdout."""

from __future__ import annotations

import sys

from .common import HELP_FMT, add_model_args, add_sampling_args, load_from_args, sampler_from_args


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="complete a prompt (no chat template)",
        description="Complete a raw prompt. Generated text goes to stdout, timings to stderr.",
        formatter_class=HELP_FMT,
    )
    add_model_args(p)
    p.add_argument("-p", "--prompt", default="Once upon a time", help="prompt text")
    add_sampling_args(p)
    p.set_defaults(func=main)


def main(args) -> int:
    from ..engine import Session
    from ..text import IncrementalDecoder

    _, model, tok = load_from_args(args)
    prompt = tok.encode(args.prompt, special=True)
    sess = Session(model, n_ctx=args.ctx_size, chunk=args.batch_size,
                   type_k=args.cache_type_k, type_v=args.cache_type_v)  # fmt: skip
    dec = IncrementalDecoder(tok, skip_special=True)  # control tokens print nothing, as llama.cpp
    max_new = args.n_predict if args.n_predict >= 0 else args.ctx_size
    gen = sess.generate(prompt, max_new, sampler_from_args(args), tok.stop_ids, args.ignore_eos)
    for t in gen:
        sys.stdout.write(dec.push(t))
        sys.stdout.flush()
    sys.stdout.write(dec.flush() + "\n")
    sys.stdout.flush()
    print(f"numoe: {sess.timings.summary()}", file=sys.stderr)
    return 0
