"""Metrics hooks of the HTTP front end: a protocol, a no-op, and a Prometheus implementation.

The front end calls the hooks; whoever builds the :class:`~proxy.http.app.HttpContext`
chooses the implementation (the admin layer exposes the Prometheus registry on /metrics).
Labels carry route patterns, kinds, outcomes and reason codes: never a value, a token or a
raw path (a path can hold a customer's name).
"""

from __future__ import annotations

from typing import Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

__all__ = ["NULL_METRICS", "HttpMetrics", "NullMetrics", "PrometheusHttpMetrics"]


class HttpMetrics(Protocol):
    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        """One request answered (``route`` is the matched pattern, or ``(default)``)."""

    def tokens_issued(self, kind: str, count: int) -> None:
        """Values of ``kind`` replaced by tokens in one response."""

    def reveals(self, outcome: str, reason: str, count: int) -> None:
        """Customers revealed (``allowed``) or kept tokenized under a cited ticket."""

    def upstream_error(self, code: str) -> None:
        """A 502/504 (``code`` as in the ``X-Tokenproxy-Error`` header)."""


class NullMetrics:
    """Hooks that do nothing."""

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        return None

    def tokens_issued(self, kind: str, count: int) -> None:
        return None

    def reveals(self, outcome: str, reason: str, count: int) -> None:
        return None

    def upstream_error(self, code: str) -> None:
        return None


NULL_METRICS = NullMetrics()


class PrometheusHttpMetrics:
    """The hooks as Prometheus counters and a latency histogram."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = REGISTRY if registry is None else registry
        self.requests = Histogram(
            "tokenproxy_http_request_seconds",
            "HTTP requests through the proxy, by route pattern, method and status",
            ["route", "method", "status"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=reg,
        )
        self.tokens = Counter(
            "tokenproxy_http_tokens_total", "Values replaced by tokens", ["kind"], registry=reg
        )
        self.reveal = Counter(
            "tokenproxy_http_reveals_total",
            "Customers revealed or kept tokenized under a cited ticket",
            ["outcome", "reason"],
            registry=reg,
        )
        self.errors = Counter(
            "tokenproxy_http_upstream_errors_total", "502 and 504 answers", ["code"], registry=reg
        )

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).observe(seconds)

    def tokens_issued(self, kind: str, count: int) -> None:
        self.tokens.labels(kind).inc(count)

    def reveals(self, outcome: str, reason: str, count: int) -> None:
        self.reveal.labels(outcome, reason).inc(count)

    def upstream_error(self, code: str) -> None:
        self.errors.labels(code).inc()
