"""`numoe serve`: OpenAI-compatible HTTP API over a continuous-batching scheduler.

- api.py: the app (Starlette): endpoints, API key, errors as OpenAI bodies;
- params.py: request fields checked one by one;
- scheduler.py: one thread owns the model; every running request advances in one
  forward pass per step; prompt prefixes reused from the slots' caches;
- textout.py: tokens to text, stop strings held back until settled;
- ollama.py: Ollama's /api/chat, /api/generate, /api/tags;
- metrics.py: Prometheus metrics.
"""

from __future__ import annotations

import logging
import socket
import sys

from .api import ServeConfig, Server, create_app

__all__ = ["ServeConfig", "Server", "create_app", "run_server"]

log = logging.getLogger("numoe.serve")


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (IPv4 or IPv6, by what `host` resolves to); OSError
    naming the address when it cannot be had (in use, not this machine's, no permission)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise OSError(f"--host {host}: {e.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


def run_server(cfg: ServeConfig, load, host: str, port: int, grace: float = 3.0) -> int:
    """Listen on host:port at once, load the model (`load()` -> (model, tokenizer)) in the
    background, serve until SIGINT/SIGTERM: then stop accepting, end running requests
    (streams get an error event and [DONE]) and return within about `grace` seconds."""
    import uvicorn

    sock = listen(host, port)  # before loading: a port in use is an error at once
    server = Server(cfg)
    app = create_app(server)

    class _Uvicorn(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # end the running requests now: their streams finish, so the connections close
            if server.scheduler is not None:
                server.scheduler.request_stop()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app, log_level="warning", timeout_graceful_shutdown=grace, lifespan="off",
        access_log=False,
    )  # fmt: skip
    u = _Uvicorn(config)
    h, p = sock.getsockname()[:2]
    h = f"[{h}]" if ":" in h else h
    print(f"numoe: listening on http://{h}:{p} (GET /health: 503 until the model is loaded)",
          file=sys.stderr, flush=True)  # fmt: skip
    loader = server.load_in_background(load)
    try:
        u.run(sockets=[sock])
    finally:
        server.stop()
        sock.close()
    loader.join(0.1)
    return 1 if server.state == "failed" else 0
