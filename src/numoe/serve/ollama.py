"""Ollama's API (/api/chat, /api/generate, /api/tags, /api/version), for the UIs that speak
only it. Same scheduler and checks as the OpenAI endpoints; streamed as NDJSON (Ollama's
default), errors as Ollama's {"error": "..."}."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import params
from .api import ABORTED, read_json
from .params import bad

_OPTIONS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n", "seed",
            "stop", "frequency_penalty", "presence_penalty")  # fmt: skip


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _generation(api, body: dict) -> params.Generation:
    opts = body.get("options", None) or {}
    if not isinstance(opts, dict):
        raise bad("'options' must be an object", "options")
    flat = {k: opts[k] for k in _OPTIONS if k in opts}
    n = params.get_int(opts, "num_predict", None, -2)
    if n is not None and n > 0:
        flat["max_tokens"] = n
    elif n == 0:
        raise bad("'num_predict' must not be 0", "num_predict")
    flat["stream"] = params.get_bool(body, "stream", True)
    return params.generation(flat, api.server.cfg.defaults, chat=False)


def routes(api, wrap) -> list[Route]:
    def ollama_errors(f):
        g = wrap(f)

        async def handler(request: Request) -> Response:
            r = await g(request)
            if r.status_code >= 400 and r.media_type == "application/json":
                msg = json.loads(r.body).get("error", {}).get("message", "error")
                return JSONResponse({"error": msg}, status_code=r.status_code, headers=r.headers)
            return r

        return handler

    async def run(request: Request, body: dict, ids: list[int], gen, wrap_text) -> Response:
        job, q = await api.submit(ids, gen)
        model, t0 = api.server.cfg.model_id, time.perf_counter()

        def final(ev) -> dict:
            return {"model": model, "created_at": _now(), **wrap_text(""), "done": True,
                    "done_reason": ev.finish_reason, "total_duration": int((time.perf_counter() - t0) * 1e9),
                    "prompt_eval_count": ev.prompt_tokens - ev.cached_tokens,
                    "eval_count": ev.completion_tokens}  # fmt: skip

        if gen.stream:

            async def stream():
                async for ev in api.events(request, job, q):
                    if ev.kind == "token" and ev.text:
                        line = {
                            "model": model,
                            "created_at": _now(),
                            **wrap_text(ev.text),
                            "done": False,
                        }
                        yield json.dumps(line, ensure_ascii=False).encode() + b"\n"
                    elif ev.kind == "error" or ev.finish_reason == "abort":
                        msg = ev.message or ABORTED
                        yield json.dumps({"error": msg}).encode() + b"\n"
                    elif ev.kind == "done":
                        yield json.dumps(final(ev)).encode() + b"\n"

            return StreamingResponse(stream(), media_type="application/x-ndjson")
        text, _, last = await api.collect(request, job, q)
        return JSONResponse({**final(last), **wrap_text(text)})

    async def chat(request: Request) -> Response:
        body = await _body(request)
        msgs = params.messages(body)
        gen = _generation(api, body)
        try:
            ids = await asyncio.to_thread(api.server.tok.encode_chat, msgs, True)
        except ValueError as e:
            raise bad(f"the chat template failed: {e}", "messages") from None
        return await run(request, body, ids, gen,
                         lambda s: {"message": {"role": "assistant", "content": s}})  # fmt: skip

    async def generate(request: Request) -> Response:
        body = await _body(request)
        prompt = body.get("prompt", None)
        if not isinstance(prompt, str):
            raise bad("'prompt' must be a string", "prompt")
        gen = _generation(api, body)
        tok = api.server.tok
        if params.get_bool(body, "raw", False):
            ids = await asyncio.to_thread(tok.encode, prompt, None, True)
        else:
            msgs = [{"role": "user", "content": prompt}]
            system = body.get("system", None)
            if isinstance(system, str) and system:
                msgs.insert(0, {"role": "system", "content": system})
            try:
                ids = await asyncio.to_thread(tok.encode_chat, msgs, True)
            except ValueError as e:
                raise bad(f"the chat template failed: {e}", "prompt") from None
        return await run(request, body, ids, gen, lambda s: {"response": s})

    async def _body(request: Request) -> dict:
        body = await read_json(request, api.server.cfg.max_body)
        api.check_model(body)
        api.ready()
        return body

    async def tags(request: Request) -> Response:
        m = api.server.cfg.model_id
        return JSONResponse({"models": [{"name": m, "model": m, "modified_at": _now(),
                                         "size": 0, "digest": "",
                                         "details": {"format": "gguf"}}]})  # fmt: skip

    async def version(request: Request) -> Response:
        from .. import __version__

        return JSONResponse({"version": f"numoe-{__version__}"})

    return [
        Route("/api/chat", ollama_errors(chat), methods=["POST"]),
        Route("/api/generate", ollama_errors(generate), methods=["POST"]),
        Route("/api/tags", tags, methods=["GET"]),
        Route("/api/version", version, methods=["GET"]),
    ]
