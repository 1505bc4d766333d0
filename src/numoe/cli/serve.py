"""`numoe serve`: an OpenAI-compatible HTTP server with continuous batching (numoe.serve).

It listens at once (GET /health says 503 while the model loads, then 200); Ctrl-C or
SIGTERM stops accepting, ends running streams and exits."""

from __future__ import annotations

import argparse
import logging
import sys

from .common import HELP_FMT, FlagError, add_model_args
from .flags import penalty_arg, positive_int, prob_arg, repeat_last_n_arg, temp_arg, top_k_arg


def port_arg(s: str) -> int:
    from ..config import SETTINGS

    try:
        return SETTINGS["port"].parse(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected {e}, got {s!r}") from None


def add_parser(sub) -> None:
    from ..config import setting_help

    S = argparse.SUPPRESS
    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible server (chat and completions, streaming, continuous batching)",
        description="Serve a model over HTTP: OpenAI's /v1/chat/completions, /v1/completions "
        "and /v1/models, Ollama's /api/chat, /api/generate and /api/tags, /health and "
        "/metrics (Prometheus). Requests arriving while others run join the same forward "
        "pass. Listens on 127.0.0.1 unless --host says otherwise.",
        formatter_class=HELP_FMT,
    )
    add_model_args(p)
    p._option_string_actions[
        "-c"
    ].help = (
        "context tokens of each slot; 0 = the model's trained context (its GGUF context_length)"
    )
    g = p.add_argument_group("server")
    g.add_argument("--host", default=S, help=setting_help("host", "address to listen on"))
    g.add_argument(
        "--port", type=port_arg, default=S, help=setting_help("port", "port to listen on (0: any)")
    )
    g.add_argument(
        "-np", "--parallel", type=positive_int, default=S,
        help=setting_help("parallel", "slots: requests generating at the same time"),
    )  # fmt: skip
    g.add_argument(
        "--api-key", default=S,
        help=setting_help("api_key", "require 'Authorization: Bearer KEY' (all but /health)"),
    )  # fmt: skip
    g.add_argument(
        "--chunk", type=int, default=0,
        help="prompt tokens per step while other requests generate (what a new prompt adds "
        "to their next token's time); 0: as many as keep such a step within about twice a "
        "generating step, measured as it runs; -b when nothing else runs",
    )  # fmt: skip
    g.add_argument(
        "--queue", type=int, default=64,
        help="requests that may wait for a slot; beyond that: 429 with Retry-After",
    )  # fmt: skip
    g.add_argument(
        "-a", "--alias", default=None,
        help="model name clients use (default: the file's name without .gguf)",
    )  # fmt: skip
    g.add_argument("--max-body", type=positive_int, default=16, help="largest request body, in MiB")
    s = p.add_argument_group("sampling defaults (a request's fields override them)")
    s.add_argument("--temp", type=temp_arg, default=0.8, help="temperature; 0 = greedy")
    s.add_argument("--top-k", type=top_k_arg, default=40, help="top-k; 0 = off")
    s.add_argument("--top-p", type=prob_arg, default=0.95, help="top-p; 1 = off")
    s.add_argument("--min-p", type=prob_arg, default=0.05, help="min-p; 0 = off")
    s.add_argument("--repeat-penalty", type=penalty_arg, default=1.0, help="1 = off")
    s.add_argument(
        "--repeat-last-n", type=repeat_last_n_arg, default=64,
        help="tokens the penalties look at (-1: all)",
    )  # fmt: skip
    p.set_defaults(func=main)


def main(args) -> int:
    from ..config import SERVE_SETTINGS, THREAD_SETTINGS
    from ..sampling import SamplingParams
    from ..serve import ServeConfig, run_server
    from .common import load_model, model_path, resolve_settings, runtime_from_args

    resolve_settings(args, THREAD_SETTINGS + SERVE_SETTINGS)
    if args.queue < 0 or args.chunk < 0:
        raise FlagError(f"--queue and --chunk must be >= 0, got {args.queue}, {args.chunk}")
    try:
        defaults = SamplingParams(
            temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
            repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n,
        ).validate()  # fmt: skip
    except ValueError as e:
        raise FlagError(str(e)) from None
    path = model_path(args)
    if not path.exists():
        raise FlagError(f"-m {path}: no such file or directory")
    alias = args.alias or (path.name.removesuffix(".gguf"))
    cfg = ServeConfig(
        model_id=alias, n_slots=args.parallel, n_ctx=args.ctx_size, chunk=args.chunk,
        batch=args.batch_size, max_queue=args.queue, api_key=args.api_key,
        cache_type_k=args.cache_type_k, cache_type_v=args.cache_type_v,
        max_body=args.max_body << 20, defaults=defaults,
    )  # fmt: skip
    runtime = runtime_from_args(args)  # flag errors before the server starts

    def load():
        from ..text import Tokenizer

        g, _, model = load_model(path, runtime)
        return model, Tokenizer.from_gguf(g)

    logging.basicConfig(level=logging.INFO, format="numoe: %(message)s", stream=sys.stderr)
    return run_server(cfg, load, args.host, args.port)
