"""Prometheus metrics of a running proxy, on a registry of its own.

:class:`ProxyMetrics` implements the front end's hooks (:class:`proxy.http.metrics.HttpMetrics`)
as counters and a latency histogram, and reads the state that is not an event (the store's
health and queues, the keyring) when Prometheus scrapes, through the callables given to
:meth:`ProxyMetrics.watch`. Each instance owns its :class:`CollectorRegistry`, never the
global one, so a test (or a process running two proxies) can build several.

**Labels never carry a value.** ``route`` is the configured pattern (``/customers/{id}``)
or ``(default)`` / ``(none)``, never a request path (a path can hold a customer's name or
phone number); ``method`` is one of the standard methods or ``OTHER``; ``status`` is a class
(``2xx``); ``kind``, ``reason`` and ``code`` are the proxy's own codes, and anything that
does not look like one becomes ``other``. So the label sets are bounded whatever clients
send.

Series (all prefixed ``tokenproxy_``):

=========================================  =======  ======================================
``http_requests_total``                    counter  route, method, status (class)
``http_request_duration_seconds``          hist.    route, method
``tokens_issued_total``                    counter  kind: values replaced by tokens
``reveals_total``                          counter  customers revealed under a ticket
``reveal_denials_total``                   counter  reason: customers kept tokenized
                                                    under a cited ticket
``upstream_errors_total``                  counter  code (as in ``X-Tokenproxy-Error``)
``reloads_total``                          counter  what (keyring/policy), outcome
``admin_requests_total``                   counter  endpoint (pattern), status (class)
``store_healthy``                          gauge    1 while the state database answers
``store_pending_rows``                     gauge    queue (registry/vault): rows waiting
``store_dropped_rows``                     gauge    registry rows dropped from a full queue
``store_outages``                          gauge    outages seen since start
``keyring_active_version``                 gauge    the version making new tokens
``keyring_versions``                       gauge    state: versions per state
``up_state``                               gauge    state (starting/ready/draining): 1 for
                                                    the current one
=========================================  =======  ======================================
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.crypto.keyring import Keyring, KeyState

__all__ = ["CONTENT_TYPE", "ProxyMetrics", "method_label", "route_label", "status_class"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CODE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,47}\Z")
_STATES = ("starting", "ready", "draining", "stopped")


def method_label(method: str) -> str:
    """A standard method as is; anything a client invents is ``OTHER``."""
    return method if method in _METHODS else "OTHER"


def route_label(route: str, method: str) -> str:
    """The route pattern of the front end's label (``"GET /customers/{id}"`` ->
    ``/customers/{id}``): the method goes in its own label."""
    prefix = method + " "
    if route.startswith(prefix):
        route = route[len(prefix) :]
    if route in ("(default)", "(none)") or route.startswith("/"):
        return route
    return "(other)"


def status_class(status: int) -> str:
    """``404`` -> ``4xx``; 499 (client went away) stays ``4xx``."""
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


def code_label(value: str) -> str:
    """A proxy code (``customer-not-on-ticket``, ``phone``) as is; anything else ``other``."""
    return value if _CODE.match(value) else "other"


StoreSnapshot = Callable[[], Mapping[str, Any] | None]
KeyringSource = Callable[[], Keyring]
StateSource = Callable[[], str]


class _StateCollector(Collector):
    """Gauges read at scrape time from the running proxy."""

    def __init__(self) -> None:
        self.store: StoreSnapshot | None = None
        self.keyring: KeyringSource | None = None
        self.state: StateSource | None = None

    def describe(self) -> Iterable[Metric]:
        return []  # unchecked: the families depend on what is watched

    def collect(self) -> Iterable[Metric]:
        if self.state is not None:
            current = self.state()
            up = GaugeMetricFamily(
                "tokenproxy_up_state", "The proxy's state: 1 for the current one", labels=["state"]
            )
            for name in _STATES:
                up.add_metric([name], 1.0 if name == current else 0.0)
            yield up
        if self.store is not None:
            snap = self.store()
            if snap is not None:
                yield GaugeMetricFamily(
                    "tokenproxy_store_healthy",
                    "1 while the state database answers (reveals are denied while 0)",
                    value=1.0 if snap.get("database") == "ok" else 0.0,
                )
                pending = GaugeMetricFamily(
                    "tokenproxy_store_pending_rows",
                    "Issued tokens queued in memory for the state database",
                    labels=["queue"],
                )
                pending.add_metric(["registry"], float(snap.get("pending_registry", 0)))
                pending.add_metric(["vault"], float(snap.get("pending_vault", 0)))
                yield pending
                yield GaugeMetricFamily(
                    "tokenproxy_store_dropped_rows",
                    "Registry rows dropped from a full queue (their tokens may not resolve)",
                    value=float(snap.get("dropped", 0)),
                )
                yield GaugeMetricFamily(
                    "tokenproxy_store_outages",
                    "State database outages seen since start",
                    value=float(snap.get("outages", 0)),
                )
        if self.keyring is not None:
            keyring = self.keyring()
            yield GaugeMetricFamily(
                "tokenproxy_keyring_active_version",
                "The data key version that makes new tokens",
                value=float(keyring.active.version),
            )
            versions = GaugeMetricFamily(
                "tokenproxy_keyring_versions", "Data key versions per state", labels=["state"]
            )
            for state in KeyState:
                count = sum(1 for k in keyring.keys if k.state is state)
                versions.add_metric([str(state)], float(count))
            yield versions


class ProxyMetrics:
    """The front end's metrics hooks on a registry of its own, plus the state gauges."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        reg = CollectorRegistry(auto_describe=True) if registry is None else registry
        self.registry = reg
        if process:
            ProcessCollector(registry=reg)
            GCCollector(registry=reg)
        self.requests = Counter(
            "tokenproxy_http_requests",
            "HTTP requests through the proxy, by route pattern, method and status class",
            ["route", "method", "status"],
            registry=reg,
        )
        self.latency = Histogram(
            "tokenproxy_http_request_duration_seconds",
            "Time to answer an HTTP request through the proxy, by route pattern and method",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.tokens = Counter(
            "tokenproxy_tokens_issued",
            "Values replaced by tokens in responses, by kind",
            ["kind"],
            registry=reg,
        )
        self.revealed = Counter(
            "tokenproxy_reveals", "Customers revealed in clear under a ticket", registry=reg
        )
        self.denials = Counter(
            "tokenproxy_reveal_denials",
            "Customers kept tokenized under a cited ticket, by reason",
            ["reason"],
            registry=reg,
        )
        self.upstream_errors = Counter(
            "tokenproxy_upstream_errors",
            "Answers the proxy made instead of the upstream's (502, 504, ...), by code",
            ["code"],
            registry=reg,
        )
        self.reloads = Counter(
            "tokenproxy_reloads",
            "Keyring and policy reloads, by what and outcome",
            ["what", "outcome"],
            registry=reg,
        )
        self.admin_requests = Counter(
            "tokenproxy_admin_requests",
            "Admin API requests, by endpoint pattern and status class",
            ["endpoint", "status"],
            registry=reg,
        )
        self._state = _StateCollector()
        reg.register(self._state)

    def watch(
        self,
        *,
        store: StoreSnapshot | None = None,
        keyring: KeyringSource | None = None,
        state: StateSource | None = None,
    ) -> None:
        """Read these at every scrape: the store's health snapshot (``StoreHealth.snapshot``),
        the current keyring, the proxy's state."""
        if store is not None:
            self._state.store = store
        if keyring is not None:
            self._state.keyring = keyring
        if state is not None:
            self._state.state = state

    def render(self) -> bytes:
        """The text exposition of every series."""
        return generate_latest(self.registry)

    # -- the front end's hooks (proxy.http.metrics.HttpMetrics) ---------------------------

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        m = method_label(method)
        r = route_label(route, method)
        self.requests.labels(r, m, status_class(status)).inc()
        self.latency.labels(r, m).observe(seconds)

    def tokens_issued(self, kind: str, count: int) -> None:
        if count > 0:
            self.tokens.labels(code_label(kind)).inc(count)

    def reveals(self, outcome: str, reason: str, count: int) -> None:
        if count <= 0:
            return
        if outcome == "allowed":
            self.revealed.inc(count)
        else:
            self.denials.labels(code_label(reason)).inc(count)

    def upstream_error(self, code: str) -> None:
        self.upstream_errors.labels(code_label(code)).inc()

    # -- the admin side -------------------------------------------------------------------

    def reload_done(self, what: str, outcome: str) -> None:
        self.reloads.labels(code_label(what), code_label(outcome)).inc()

    def admin_request(self, endpoint: str, status: int) -> None:
        self.admin_requests.labels(endpoint, status_class(status)).inc()
