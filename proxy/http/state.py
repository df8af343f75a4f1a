"""What the proxy keeps on each request: its id, route label and log fields (no values)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["STATE", "RequestState", "state"]


@dataclass(slots=True)
class RequestState:
    """Set by the app's middleware; handlers add to ``route`` and ``log``."""

    request_id: str
    route: str = "(none)"
    log: dict[str, Any] = field(default_factory=dict)


_RequestKey: Any = getattr(web, "RequestKey", None)  # aiohttp >= 3.12; a str key before
STATE: Any = (
    _RequestKey("tokenproxy_request", RequestState) if _RequestKey else "tokenproxy_request"
)


def state(request: web.BaseRequest) -> RequestState:
    """The request's :class:`RequestState`."""
    found: RequestState = request[STATE]
    return found
