"""The HTTP API: OpenAI's /v1/chat/completions, /v1/completions and /v1/models, /health,
/metrics (and Ollama's /api/* in ollama.py), on Starlette.

Every request that is not answered with a result gets an OpenAI-shaped error body
(params.ApiError); the model runs only on the scheduler's thread."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..sampling import Sampler, SamplingParams
from . import params
from .metrics import Metrics
from .params import ApiError, bad
from .scheduler import Event, Job, QueueFull, Scheduler

log = logging.getLogger("numoe.serve")


@dataclass
class ServeConfig:
    model_id: str
    n_slots: int = 4
    n_ctx: int = 4096  # per slot
    chunk: int = 0  # prompt tokens per step while others decode (0: sized by the scheduler)
    batch: int = 512  # prompt tokens per step when nothing decodes
    max_queue: int = 64
    cache_type_k: str = "f16"  # a slot's KV cache types (-ctk, -ctv; numoe.cache.CACHE_TYPES)
    cache_type_v: str = "f16"
    api_key: str | None = None
    max_body: int = 16 << 20
    defaults: SamplingParams = field(default_factory=SamplingParams)


class Server:
    """The app's state: loading -> ready (or failed), the tokenizer and the scheduler."""

    def __init__(self, cfg: ServeConfig, metrics: Metrics | None = None):
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.state, self.error = "loading", ""
        self.tok = None
        self.scheduler: Scheduler | None = None
        self.created = int(time.time())

    def attach(self, model, tok) -> None:
        """The loaded model: start the scheduler; the server answers requests from now."""
        c = self.cfg
        self.tok = tok
        self.scheduler = Scheduler(model, tok, c.n_slots, c.n_ctx, c.chunk, c.batch,
                                   c.max_queue, self.metrics,
                                   cache_types=(c.cache_type_k, c.cache_type_v))  # fmt: skip
        self.scheduler.start()
        self.state = "ready"

    def fail(self, message: str) -> None:
        self.state, self.error = "failed", message

    def load_in_background(self, load) -> threading.Thread:
        """Run `load()` -> (model, tok) on a thread; /health says 503 until it is done."""

        def run():
            try:
                self.attach(*load())
            except BaseException as e:  # noqa: BLE001 (reported on /health and in the log)
                log.error("numoe serve: loading failed: %s", e)
                self.fail(str(e))

        t = threading.Thread(target=run, name="numoe-load", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()


# ---- helpers -------------------------------------------------------------------------------


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def read_json(request: Request, limit: int) -> dict:
    n = request.headers.get("content-length")
    if n is not None and n.isdigit() and int(n) > limit:
        raise ApiError(413, f"request body of {n} bytes exceeds the limit of {limit}")
    data = bytearray()
    try:
        async for piece in request.stream():
            data += piece
            if len(data) > limit:
                raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
    except ClientDisconnect:
        raise ApiError(400, "the client closed the connection while sending the body") from None
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"the body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(body, dict):
        raise bad("the body must be a JSON object")
    return body


def usage(ev: Event) -> dict:
    return {
        "prompt_tokens": ev.prompt_tokens,
        "completion_tokens": ev.completion_tokens,
        "total_tokens": ev.prompt_tokens + ev.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": ev.cached_tokens},
    }


ABORTED = "request aborted: the server is shutting down"


def chat_piece(delta, logprobs=None, finish=None) -> dict:
    """A chat chunk's choice: delta text (None: the finishing chunk's empty delta), or a
    dict delta as given."""
    if delta is None:
        delta = {}
    elif isinstance(delta, str):
        delta = {"content": delta}
    return {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}


def text_piece(text, logprobs=None, finish=None) -> dict:
    """A completions chunk's choice (None: the finishing chunk's empty text)."""
    return {"index": 0, "text": text or "", "logprobs": logprobs, "finish_reason": finish}


def sse(obj) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


class Api:
    def __init__(self, server: Server):
        self.server = server

    # -- gates

    def ready(self) -> Scheduler:
        s = self.server
        if s.state != "ready":
            msg = "the model is loading" if s.state == "loading" else f"loading failed: {s.error}"
            raise ApiError(503, msg, type_="server_error", headers={"Retry-After": "5"})
        return s.scheduler

    def check_model(self, body: dict) -> None:
        m = body.get("model", None)
        if m is None:
            return  # llama-server and Ollama clients may leave it out: the one model
        if not isinstance(m, str):
            raise bad("'model' must be a string", "model")
        if m.removesuffix(":latest") != self.server.cfg.model_id:  # Ollama's tag
            raise ApiError(404, f"the model {m[:200]!r} does not exist; this server has "
                           f"{self.server.cfg.model_id!r}", "model", code="model_not_found")  # fmt: skip

    # -- running a job

    def token_text(self, t: int) -> str:
        return self.server.tok.token_bytes(t).decode("utf-8", errors="replace")

    async def submit(
        self, prompt_ids: list[int], gen: params.Generation
    ) -> tuple[Job, asyncio.Queue]:
        sched = self.ready()
        n_ctx = self.server.cfg.n_ctx
        if not prompt_ids:
            raise bad("the prompt is empty", "prompt")
        if len(prompt_ids) >= n_ctx:
            raise bad(f"the prompt is {len(prompt_ids)} tokens; the context (-c) is {n_ctx}, "
                      "which must also leave room for at least one generated token",
                      "messages")  # fmt: skip
        room = n_ctx - len(prompt_ids)
        max_tokens = room if gen.max_tokens is None else min(gen.max_tokens, room)
        try:
            sampler = Sampler(gen.sampling)
        except ValueError as e:
            raise bad(str(e)) from None
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        job = Job(
            prompt=prompt_ids,
            max_tokens=max_tokens,
            sampler=sampler,
            emit=lambda ev: loop.call_soon_threadsafe(q.put_nowait, ev),
            stops=gen.stops,
            stop_ids=frozenset(self.server.tok.stop_ids),
            ignore_eos=gen.ignore_eos,
            logprobs=gen.logprobs,
        )
        try:
            sched.submit(job)
        except QueueFull as e:
            raise ApiError(429, f"server busy: {e}; retry later", type_="rate_limit_error",
                           headers={"Retry-After": "1"}) from None  # fmt: skip
        return job, q

    async def events(
        self, request: Request, job: Job, q: asyncio.Queue, watch: bool = False
    ) -> AsyncIterator[Event]:
        """The job's events until done or error; cancels the job if the consumer stops early
        (Starlette cancels a streamed response whose client disconnects). watch: also poll
        for the client going away (a non-streamed request, whose handler only waits)."""
        done = False
        watcher = asyncio.create_task(self._watch(request, job)) if watch else None
        try:
            while True:
                ev = await q.get()
                done = ev.kind in ("done", "error")
                yield ev
                if done:
                    return
        finally:
            if watcher is not None:
                watcher.cancel()
            if not done:
                self.server.scheduler.cancel(job)

    async def _watch(self, request: Request, job: Job) -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.25)
        self.server.scheduler.cancel(job)  # its "abort" event ends events()

    async def collect(self, request: Request, job: Job, q: asyncio.Queue):
        """(text, tokens, logprob events, final event) of a job run to the end."""
        text, evs, last = [], [], None
        async for ev in self.events(request, job, q, watch=True):
            if ev.kind == "token":
                text.append(ev.text)
                if ev.token >= 0:
                    evs.append(ev)
            last = ev
        if last is None:
            raise ApiError(499, "client closed request")
        if last.kind == "error":
            raise ApiError(500, last.message, type_="server_error")
        if last.finish_reason == "abort":
            raise ApiError(503, ABORTED, type_="server_error")
        return "".join(text), evs, last

    # -- logprobs, as OpenAI shapes them

    def chat_logprobs(self, evs: list[Event]) -> dict:
        def item(t, lp):
            s = self.token_text(t)
            return {"token": s, "logprob": lp, "bytes": list(s.encode())}

        return {
            "content": [
                {**item(e.token, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top or []]}
                for e in evs
            ]
        }

    def completion_logprobs(self, evs: list[Event]) -> dict:
        toks = [self.token_text(e.token) for e in evs]
        offs, o = [], 0
        for s in toks:
            offs.append(o)
            o += len(s)
        return {
            "tokens": toks,
            "token_logprobs": [e.logprob for e in evs],
            "top_logprobs": [{self.token_text(t): lp for t, lp in e.top or []} for e in evs],
            "text_offset": offs,
        }

    def stream(self, request, job, q, gen, head, piece, logprobs, first=None) -> Response:
        """A job as Server-Sent Events: `first` (when given), a chunk per token
        (piece(text, logprobs, None)), the finishing chunk (piece(None, None, reason)), the
        usage when asked, then [DONE]; an error or an abort ends with an error event and
        [DONE]. piece shapes a choice: chat's delta or completions' text."""

        async def events():
            if first is not None:
                yield sse(first)
            async for ev in self.events(request, job, q):
                if ev.kind == "token":
                    if not ev.text and ev.token < 0:
                        continue
                    lp = logprobs([ev]) if job.logprobs is not None and ev.token >= 0 else None
                    yield sse({**head, "choices": [piece(ev.text, lp, None)]})
                elif ev.kind == "error" or ev.finish_reason == "abort":
                    yield sse({"error": {"message": ev.message or ABORTED, "type": "server_error",
                                         "param": None, "code": None}})  # fmt: skip
                    yield b"data: [DONE]\n\n"
                else:
                    yield sse({**head, "choices": [piece(None, None, ev.finish_reason)]})
                    if gen.include_usage:
                        yield sse({**head, "choices": [], "usage": usage(ev)})
                    yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})  # fmt: skip

    # -- endpoints

    async def chat(self, request: Request) -> Response:
        body = await read_json(request, self.server.cfg.max_body)
        self.check_model(body)
        self.ready()
        msgs = params.messages(body)
        gen = params.generation(body, self.server.cfg.defaults, chat=True)
        kw = body.get("chat_template_kwargs", None) or {}
        if not isinstance(kw, dict):
            raise bad("'chat_template_kwargs' must be an object", "chat_template_kwargs")
        tok = self.server.tok
        try:
            ids = await asyncio.to_thread(tok.encode_chat, msgs, True, **kw)
        except ValueError as e:  # ChatTemplateError and the tokenizer's own
            raise bad(f"the chat template failed: {e}", "messages") from None
        job, q = await self.submit(ids, gen)
        rid, created, model = (
            f"chatcmpl-{uuid.uuid4().hex}",
            int(time.time()),
            self.server.cfg.model_id,
        )
        head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
        if gen.stream:
            first = {**head, "choices": [chat_piece({"role": "assistant", "content": ""})]}
            return self.stream(request, job, q, gen, head, chat_piece, self.chat_logprobs, first)
        text, evs, last = await self.collect(request, job, q)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": self.chat_logprobs(evs) if job.logprobs is not None else None,
            "finish_reason": last.finish_reason,
        }
        return JSONResponse({**head, "object": "chat.completion", "choices": [choice],
                             "usage": usage(last)})  # fmt: skip

    async def completions(self, request: Request) -> Response:
        body = await read_json(request, self.server.cfg.max_body)
        self.check_model(body)
        self.ready()
        tok = self.server.tok
        p = params.prompt(body, tok.n_vocab)
        gen = params.generation(body, self.server.cfg.defaults, chat=False)
        if isinstance(p, str):
            ids = await asyncio.to_thread(tok.encode, p, None, True)
        else:
            ids = p
        job, q = await self.submit(ids, gen)
        rid, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), self.server.cfg.model_id
        head = {"id": rid, "object": "text_completion", "created": created, "model": model}
        if gen.stream:
            return self.stream(request, job, q, gen, head, text_piece, self.completion_logprobs)
        text, evs, last = await self.collect(request, job, q)
        choice = {
            "index": 0,
            "text": text,
            "logprobs": self.completion_logprobs(evs) if job.logprobs is not None else None,
            "finish_reason": last.finish_reason,
        }
        return JSONResponse({**head, "choices": [choice], "usage": usage(last)})

    async def models(self, request: Request) -> Response:
        c = self.server.cfg
        return JSONResponse({"object": "list", "data": [{
            "id": c.model_id, "object": "model", "created": self.server.created,
            "owned_by": "numoe", "meta": {"n_ctx": c.n_ctx, "slots": c.n_slots},
        }]})  # fmt: skip

    async def health(self, request: Request) -> Response:
        s = self.server
        if s.state == "ready":
            return JSONResponse({"status": "ok"})
        if s.state == "loading":
            return JSONResponse({"status": "loading"}, status_code=503,
                                headers={"Retry-After": "5"})  # fmt: skip
        return JSONResponse({"status": "error", "message": s.error}, status_code=500)

    async def metrics(self, request: Request) -> Response:
        return Response(self.server.metrics.render(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")  # fmt: skip


class Guard:
    """ASGI middleware: the API key (every path but /health) and errors as OpenAI bodies."""

    OPEN = ("/health",)

    def __init__(self, app, api_key: str | None):
        self.app, self.key = app, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.key and scope["path"] not in self.OPEN:
            auth = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), self.key.encode()):
                e = ApiError(401, "invalid or missing API key (Authorization: Bearer ...)",
                             type_="authentication_error", code="invalid_api_key")  # fmt: skip
                return await error_response(e)(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(server: Server) -> Starlette:
    api = Api(server)

    def wrap(f):
        async def handler(request: Request) -> Response:
            try:
                return await f(request)
            except ApiError as e:
                return error_response(e)

        return handler

    from .ollama import routes as ollama_routes

    routes = [
        Route("/v1/chat/completions", wrap(api.chat), methods=["POST"]),
        Route("/v1/completions", wrap(api.completions), methods=["POST"]),
        Route("/chat/completions", wrap(api.chat), methods=["POST"]),
        Route("/completions", wrap(api.completions), methods=["POST"]),
        Route("/v1/models", wrap(api.models), methods=["GET"]),
        Route("/models", wrap(api.models), methods=["GET"]),
        Route("/health", api.health, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        *ollama_routes(api, wrap),
    ]

    async def not_found(request, exc):
        status = getattr(exc, "status_code", 404)
        msg = "not found" if status == 404 else getattr(exc, "detail", "error")
        return error_response(ApiError(status, f"{request.method} {request.url.path}: {msg}"))

    async def server_error(request, exc):
        log.exception("numoe serve: unexpected error", exc_info=exc)
        return error_response(ApiError(500, f"internal error: {type(exc).__name__}",
                                       type_="server_error"))  # fmt: skip

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found,
                                                        Exception: server_error})  # fmt: skip
    app.state.server = server
    return Guard(app, server.cfg.api_key)
