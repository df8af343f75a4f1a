"""Metrics hooks of the HTTP front end: the protocol and a no-op.

The front end calls the hooks; whoever builds the :class:`~proxy.http.app.HttpContext`
chooses the implementation (``proxy.admin.metrics.ProxyMetrics`` on the admin /metrics).
Labels carry route patterns, kinds, outcomes and reason codes: never a value, a token or a
raw path (a path can hold a customer's name).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NULL_METRICS", "HttpMetrics", "NullMetrics"]


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

