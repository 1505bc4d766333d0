"""Continuous batching: one thread owns the model and steps every running request at once.

Each step is one `model.forward_batch` over the next token of every decoding request plus
prompt tokens of requests still prefilling: while others decode, at most `chunk` of them (0:
as many as keep such a step within STALL times a decode-only step, from the measured costs),
so a long prompt slows running streams by a bounded factor; up to `batch` when nothing
decodes.
Requests join and leave at step boundaries: a new one takes the free slot whose cache shares
the longest prefix with its prompt (llama-server's choice) and prefills only the rest; a
finished or cancelled one frees its slot, whose cache keeps its tokens for the next.

Thread safety: `submit` and `cancel` may be called from any thread; everything else runs on
the scheduler's thread. A job's events go through its `emit` callback (called on the
scheduler thread; the API hands them to its event loop).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .. import _cpu
from ..engine import NonFiniteLogits, check_logits, common_prefix
from ..sampling import Sampler
from .metrics import Metrics
from .textout import TextOut

log = logging.getLogger("numoe.serve")


STALL = 3.0  # chunk=0: a step with prompt tokens takes at most about this x a decode step
MIN_CHUNK = 8  # ... but always at least this many prompt tokens, so prompts progress


def pin_to_pool_caller() -> None:
    """Pin the calling thread (the scheduler's) to the CPU of the pool's caller slot. Each pool
    call otherwise moves an unpinned caller off a worker's CPU and back (two migrations per
    op, ~100 ops a step), and in a server the event loop's thread keeps pushing it there. The
    scheduler starts no threads, so nothing inherits the one-CPU mask."""
    groups = _cpu.thread_groups()
    cpu = groups[0][0] if groups and groups[0] else -1
    if cpu >= 0 and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {cpu})  # Linux: pid 0 is this thread
        except OSError:
            pass  # a CPU the process may not use any more: run unpinned


class QueueFull(RuntimeError):
    """Every slot is busy and the waiting queue is at its limit."""


@dataclass
class Event:
    """kind "token": `text` to append (may be empty while a stop string is undecided),
    `token` its id, `logprob`/`top` when asked for. kind "done": `finish_reason` ("stop",
    "length", "abort") and the usage counts. kind "error": `message`."""

    kind: str
    text: str = ""
    token: int = -1
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    message: str = ""


@dataclass(eq=False)
class Job:
    prompt: list[int]  # token ids
    max_tokens: int  # >= 1; the scheduler also stops at a full context
    sampler: Sampler
    emit: Callable[[Event], None]
    stops: list[str] = field(default_factory=list)
    stop_ids: frozenset[int] = frozenset()  # end-of-generation tokens (EOS, EOT)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; n >= 0: the token's and n top alternatives
    # set by the scheduler
    cancelled: bool = False
    t_arrive: float = 0.0
    t_last: float = 0.0
    slot: Slot | None = None
    n_cached: int = 0
    fed: int = 0  # prompt tokens in the cache so far
    generated: list[int] = field(default_factory=list)
    next_token: int | None = None  # sampled, not yet fed through the model
    out: TextOut | None = None


class Slot:
    """A KV cache and the tokens it holds (a finished request's stay, for prompt reuse)."""

    def __init__(self, index: int, cache):
        self.index, self.cache = index, cache
        self.tokens: list[int] = []
        self.job: Job | None = None
        self.last_used = 0.0


class Scheduler:
    def __init__(
        self,
        model,
        tok,
        n_slots: int,
        n_ctx: int,
        chunk: int = 0,
        batch: int = 512,
        max_queue: int = 64,
        metrics: Metrics | None = None,
        cache_types: tuple[str, str] = ("f16", "f16"),  # a slot's (type_k, type_v): -ctk, -ctv
    ):
        if min(n_slots, n_ctx, batch) < 1 or min(chunk, max_queue) < 0:
            raise ValueError("slots, context and batch must be >= 1, chunk and queue >= 0")
        self.model, self.tok, self.n_ctx = model, tok, n_ctx
        self.chunk, self.batch, self.max_queue = chunk, batch, max_queue
        self.slots = [Slot(i, model.new_cache(n_ctx, *cache_types)) for i in range(n_slots)]
        self.metrics = metrics or Metrics()
        self.metrics.slots_total.set(n_slots)
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: list[Job] = []  # in slots, in admission order
        self.t_decode = None  # seconds of a decode-only step (moving average)
        self.t_prompt = None  # seconds one prompt token adds to a step (moving average)
        self.cv = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="numoe-scheduler", daemon=True)

    # ---- any thread -------------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        """Queue `job`; QueueFull when every slot is busy and max_queue jobs wait already."""
        if not job.prompt:
            raise ValueError("empty prompt")
        if len(job.prompt) > self.n_ctx:
            raise ValueError(f"prompt of {len(job.prompt)} tokens exceeds the context {self.n_ctx}")
        with self.cv:
            if self.stopping:
                raise QueueFull("the server is shutting down")
            busy = len(self.running) >= len(self.slots)
            if busy and len(self.waiting) >= self.max_queue:
                raise QueueFull(
                    f"all {len(self.slots)} slots are busy and {len(self.waiting)} requests wait"
                )
            job.t_arrive = time.perf_counter()
            self.waiting.append(job)
            self.metrics.waiting.set(len(self.waiting))
            self.cv.notify()

    def cancel(self, job: Job) -> None:
        """Drop `job` at the next step boundary (its client went away)."""
        with self.cv:
            job.cancelled = True
            self.cv.notify()

    def request_stop(self) -> None:
        """End every request ("abort") after the step in progress; returns at once."""
        with self.cv:
            self.stopping = True
            self.cv.notify()

    def stop(self, timeout: float = 10.0) -> None:
        """request_stop and wait for the thread."""
        self.request_stop()
        if self.thread.is_alive():
            self.thread.join(timeout)

    @property
    def n_running(self) -> int:
        return len(self.running)

    # ---- the scheduler thread ---------------------------------------------------------

    def _loop(self) -> None:
        pin_to_pool_caller()
        while True:
            with self.cv:
                while not self.stopping and not self.waiting and not self.running:
                    self.cv.wait()
                if self.stopping:
                    break
                self._drop_cancelled()
                self._admit()
            if self.running:
                try:
                    self._step()
                except Exception as e:  # a bug or a bad model: every running request ends
                    log.exception("scheduler step failed")
                    for job in list(self.running):
                        self._fail(job, f"internal error: {type(e).__name__}: {e}")
        with self.cv:
            for job in list(self.running):
                self._finish(job, "abort")
            while self.waiting:
                self.waiting.popleft().emit(Event("done", finish_reason="abort"))
            self.metrics.waiting.set(0)

    def _drop_cancelled(self) -> None:
        if any(j.cancelled for j in self.waiting):
            self.waiting = collections.deque(j for j in self.waiting if not j.cancelled)
            self.metrics.waiting.set(len(self.waiting))
        for job in [j for j in self.running if j.cancelled]:
            self._finish(job, "abort")

    def _admit(self) -> None:
        """Waiting jobs into free slots, first come first served; each takes the free slot
        sharing the longest prefix with its prompt (else the least recently used)."""
        while self.waiting:
            free = [s for s in self.slots if s.job is None]
            if not free:
                break
            job = self.waiting.popleft()
            best = max(free, key=lambda s: (common_prefix(s.tokens, job.prompt), -s.last_used))
            # at least the last prompt token is recomputed: its logits give the first token
            keep = min(common_prefix(best.tokens, job.prompt), len(job.prompt) - 1)
            del best.tokens[keep:]
            best.job, job.slot, job.fed, job.n_cached = job, best, keep, keep
            job.out = TextOut(self.tok, job.stops)
            self.running.append(job)
            m = self.metrics
            m.prompt_tokens.inc(len(job.prompt))
            m.prompt_tokens_cached.inc(keep)
        self.metrics.waiting.set(len(self.waiting))
        self.metrics.running.set(len(self.running))
        self.metrics.slots_used.set(len(self.running))

    def _step(self) -> None:
        tokens: list[int] = []
        caches: list = []
        positions: list[int] = []
        rows: list[tuple[int, Job]] = []  # (batch index, job) whose logits are sampled
        decoding = [j for j in self.running if j.next_token is not None]
        for job in decoding:
            rows.append((len(tokens), job))
            tokens.append(job.next_token)
            caches.append(job.slot.cache)
            positions.append(len(job.slot.tokens))
        budget = self.prompt_budget() if decoding else self.batch
        prefilled: list[tuple[Job, int]] = []
        for job in self.running:
            if budget == 0:
                break
            todo = len(job.prompt) - job.fed
            if job.next_token is not None or todo == 0:
                continue
            n = min(todo, budget)
            part = job.prompt[job.fed : job.fed + n]
            tokens += part
            caches += [job.slot.cache] * n
            positions += range(job.fed, job.fed + n)
            prefilled.append((job, n))
            budget -= n
            if n == todo:
                rows.append((len(tokens) - 1, job))
        if not tokens:
            return
        t0 = time.perf_counter()
        logits = self.model.forward_batch(tokens, caches, positions, [i for i, _ in rows])
        self._timed(time.perf_counter() - t0, len(decoding), len(tokens) - len(decoding))
        self.metrics.steps.inc()
        for job in decoding:
            job.slot.tokens.append(job.next_token)
            job.next_token = None
        for job, n in prefilled:
            job.slot.tokens += job.prompt[job.fed : job.fed + n]
            job.fed += n
            self.metrics.prefill_tokens.inc(n)
        now = time.perf_counter()
        for (_, job), row in zip(rows, logits):
            self._sample(job, row, now)
        self.metrics.kv_tokens.set(sum(len(s.tokens) for s in self.slots))

    def prompt_budget(self) -> int:
        """Prompt tokens a step may take beside decoding requests: `chunk`, or (chunk 0)
        enough to make the step about STALL x a decode-only step, at least MIN_CHUNK."""
        if self.chunk:
            return self.chunk
        if self.t_decode is None or self.t_prompt is None:
            return MIN_CHUNK
        n = int((STALL - 1.0) * self.t_decode / max(self.t_prompt, 1e-9))
        return max(MIN_CHUNK, min(n, self.batch))

    def _timed(self, dt: float, n_decode: int, n_prompt: int) -> None:
        def avg(old, new):
            return new if old is None else 0.8 * old + 0.2 * new

        if n_prompt == 0:
            self.t_decode = avg(self.t_decode, dt)
        elif n_decode == 0 or self.t_decode is not None:
            base = self.t_decode if n_decode else 0.0
            self.t_prompt = avg(self.t_prompt, max(dt - base, 0.0) / n_prompt)

    def _sample(self, job: Job, logits: torch.Tensor, now: float) -> None:
        pos = len(job.slot.tokens) - 1
        try:
            check_logits(logits, pos)
        except NonFiniteLogits as e:
            self._fail(job, str(e))
            return
        tok = job.sampler.sample(logits, job.prompt + job.generated)
        m = self.metrics
        if job.generated:
            m.itl.observe(now - job.t_last)
        else:
            m.ttft.observe(now - job.t_arrive)
        job.t_last = now
        if tok in job.stop_ids and not job.ignore_eos:
            self._finish(job, "stop")
            return
        job.generated.append(tok)
        m.generated_tokens.inc()
        text, stopped = job.out.push(tok)
        ev = Event("token", text=text, token=tok)
        if job.logprobs is not None:
            lp = torch.log_softmax(logits.float(), dim=0)  # [V]
            ev.logprob = float(lp[tok])
            if job.logprobs > 0:
                v, i = torch.topk(lp, min(job.logprobs, lp.shape[0]))
                ev.top = [(int(a), float(b)) for a, b in zip(i, v)]
        job.emit(ev)
        if stopped:
            self._finish(job, "stop")
        elif len(job.generated) >= job.max_tokens or len(job.slot.tokens) + 1 >= self.n_ctx:
            self._finish(job, "length")
        else:
            job.next_token = tok

    def _release(self, job: Job) -> None:
        if job in self.running:
            self.running.remove(job)
        if job.slot is not None:
            job.slot.job, job.slot.last_used = None, time.perf_counter()
        m = self.metrics
        m.running.set(len(self.running))
        m.slots_used.set(len(self.running))

    def _finish(self, job: Job, reason: str) -> None:
        self._release(job)
        if reason != "abort" and job.out is not None:
            tail, stopped = job.out.finish()
            if tail:
                job.emit(Event("token", text=tail))
            if stopped:
                reason = "stop"
        self.metrics.requests.labels(reason).inc()
        job.emit(
            Event(
                "done",
                finish_reason=reason,
                prompt_tokens=len(job.prompt),
                cached_tokens=job.n_cached,
                completion_tokens=len(job.generated),
            )
        )

    def _fail(self, job: Job, message: str) -> None:
        self._release(job)
        self.metrics.requests.labels("error").inc()
        job.emit(Event("error", message=message))
