"""Prometheus metrics on a per-app registry.

Each app gets its own ``CollectorRegistry`` instead of the process-global one, so several
apps in one process (tests, embedded use) never collide on metric names.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Everything the server counts; one instance per app."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("eco_guard_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"], registry=r)
        self.decisions = Counter("eco_guard_decisions", "guard decisions by action and target ('' = none)", ["action", "target"], registry=r)
        self.flagged = Counter("eco_guard_flagged", "flagged requests per forget target", ["target"], registry=r)
        self.latency = Histogram("eco_guard_request_latency_seconds", "request latency by endpoint", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("eco_guard_stream_first_token_seconds", "time to the first streamed token", buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("eco_guard_prompt_tokens", "prompt tokens of answered requests", registry=r)
        self.completion_tokens = Counter("eco_guard_completion_tokens", "generated tokens", registry=r)
        self.batch_size = Histogram("eco_guard_batch_size", "rows per batched call", ["stage"], buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.in_flight = Gauge("eco_guard_in_flight_requests", "requests being served now", registry=r)
        self.guard_decisions = Counter(
            "eco_guard_guard_decisions", "decisions by guard, API key name ('' = no keys) and action", ["guard", "key", "action"], registry=r
        )
        self.refused = Counter("eco_guard_auth_refused", "requests refused by authentication (401) or authorisation (403)", ["status"], registry=r)
        self.reloads = Counter("eco_guard_reloads", "guard reloads by guard and outcome (reloaded, unchanged, failed)", ["guard", "outcome"], registry=r)
        self.reload_failing = Gauge("eco_guard_reload_failing", "1 while a guard's last reload failed and its old version serves", ["guard"], registry=r)

    def observe_decision(self, action: str, target: str | None, *, guard: str = "", key: str | None = None) -> None:
        self.decisions.labels(action=action, target=target or "").inc()
        self.guard_decisions.labels(guard=guard, key=key or "", action=action).inc()
        if target is not None:
            self.flagged.labels(target=target).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
