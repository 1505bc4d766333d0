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
import sys

from .api import ServeConfig, Server, create_app

__all__ = ["ServeConfig", "Server", "create_app", "run_server"]

log = logging.getLogger("numoe.serve")


def run_server(cfg: ServeConfig, load, host: str, port: int, grace: float = 3.0) -> int:
    """Listen on host:port at once, load the model (`load()` -> (model, tokenizer)) in the
    background, serve until SIGINT/SIGTERM: then stop accepting, end running requests
    (streams get an error event and [DONE]) and return within about `grace` seconds."""
    import uvicorn

    server = Server(cfg)
    app = create_app(server)

    class _Uvicorn(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # end the running requests now: their streams finish, so the connections close
            if server.scheduler is not None:
                server.scheduler.request_stop()
            super().handle_exit(sig, frame)

        async def startup(self, sockets=None):
            await super().startup(sockets)
            for srv in self.servers:
                for sock in srv.sockets:
                    h, p = sock.getsockname()[:2]
                    print(f"numoe: listening on http://{h}:{p} (GET /health: 503 until the "
                          "model is loaded)", file=sys.stderr, flush=True)  # fmt: skip

    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=grace,
        lifespan="off", access_log=False,
    )  # fmt: skip
    u = _Uvicorn(config)

    loader = server.load_in_background(load)
    try:
        u.run()
    finally:
        server.stop()
    loader.join(0.1)
    if server.state == "failed":
        return 1
    return 0
