"""Prometheus metrics of one app instance (its own registry, so several apps can live in a process)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Metrics", "MetricsMiddleware"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("mixagent_http_requests_total", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("mixagent_http_request_duration_seconds", "HTTP request latency",
                                 ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.decisions = Counter("mixagent_decisions_total", "Decisions recorded (replays excluded)",
                                 ["policy", "version"], registry=r)
        self.replays = Counter("mixagent_decision_replays_total", "Retried feedback answered from the store",
                               registry=r)
        self.runs_created = Counter("mixagent_runs_created_total", "Runs created", ["policy"], registry=r)
        self.active_runs = Gauge("mixagent_active_runs", "Runs that still expect feedback", registry=r)
        self.policy_load_failures = Counter("mixagent_policy_load_failures_total",
                                            "Policy artifacts refused", registry=r)
        self.policies_loaded = Counter("mixagent_policy_loads_total", "Policy artifacts loaded", registry=r)
        self.fallbacks = Counter(
            "mixagent_fallback_decisions_total",
            "Decisions (initial mixtures included, replays excluded) that a learned policy handed to the "
            "fallback baseline, by policy (name@version) and reason: space (the run's domains do not fit "
            "the policy) or observation (outside the ranges seen in training)",
            ["policy", "reason"], registry=r)

    def track_active_runs(self, fn: Callable[[], float]) -> None:
        def safe() -> float:
            try:
                return float(fn())
            except Exception:  # a scrape must not fail because the database is briefly away
                return float("nan")

        self.active_runs.set_function(safe)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts requests and their latency by method, route template (not raw path) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            labels = (scope["method"], path, str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - t0)
