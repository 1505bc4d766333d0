"""The server's Prometheus metrics (GET /metrics), in a registry of their own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.running = Gauge("numoe_requests_running", "requests in a slot", registry=r)
        self.waiting = Gauge("numoe_requests_waiting", "requests queued for a slot", registry=r)
        self.slots_used = Gauge("numoe_kv_slots_used", "KV slots holding a request", registry=r)
        self.slots_total = Gauge("numoe_kv_slots_total", "KV slots (-np)", registry=r)
        self.kv_tokens = Gauge("numoe_kv_tokens", "tokens held in the slots' caches", registry=r)
        self.requests = Counter(
            "numoe_requests", "finished requests", ["finish_reason"], registry=r
        )
        self.prompt_tokens = Counter(
            "numoe_prompt_tokens", "prompt tokens of finished and running requests", registry=r
        )
        self.prompt_tokens_cached = Counter(
            "numoe_prompt_tokens_cached", "prompt tokens reused from a slot's cache", registry=r
        )
        self.prefill_tokens = Counter(
            "numoe_prefill_tokens", "prompt tokens computed (not reused)", registry=r
        )
        self.generated_tokens = Counter("numoe_generation_tokens", "tokens generated", registry=r)
        self.steps = Counter("numoe_steps", "forward passes of the scheduler", registry=r)
        self.ttft = Histogram(
            "numoe_time_to_first_token_seconds",
            "arrival to first generated token",
            buckets=_LATENCY,
            registry=r,
        )
        self.itl = Histogram(
            "numoe_inter_token_latency_seconds",
            "between consecutive generated tokens of a request",
            buckets=_LATENCY,
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
