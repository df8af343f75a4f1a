"""Tickets as values, and the one reveal decision both front ends rely on.

A real value leaves the proxy only under a *ticket*: the helpdesk's record that an agent is
working for a customer right now. :func:`decide` answers "may agent A see customer C now,
under ticket T, and if not, why" for a ticket already looked up (``proxy.store.tickets``
does the looking up, caching and auditing). Pure: no I/O, no clock; ``now`` is passed in.

Rules, in the order they are checked (the first failing one is the reason given):

1. the ticket must exist                        -> ``unknown_ticket``
2. it must be ``open``                          -> ``closed`` / ``pending``
3. ``now`` must be before its expiry            -> ``expired``
4. it must be assigned to the asking agent      -> ``not_assigned``
5. the record must carry a usable customer id   -> ``no_customer_id`` / ``invalid_customer_id``
6. the ticket must name that customer           -> ``customer_not_on_ticket``

**Pending does not justify a reveal.** A pending ticket waits on the customer or a third
party: nobody is working it at this moment, so nobody needs the customer's data at this
moment. Failing closed costs an agent one status change in the helpdesk; failing open would
leave a window for every parked ticket. Only ``open`` justifies.

**Customer ids are strings.** Front ends meet ids as ``int`` (PostgreSQL ``bigint``, JSON
numbers), ``str`` (text keys, JSON strings) or ``uuid.UUID``; :func:`customer_key` maps
each to one string so that ``42`` and ``"42"`` are the same customer:

- ``int`` -> its canonical decimal (``42`` -> ``"42"``, ``-7`` -> ``"-7"``);
- ``uuid.UUID`` -> its canonical lower-case hyphenated form;
- ``str`` -> itself, unchanged: no stripping, no case folding, no reinterpretation, so
  ``"042"`` is *not* ``"42"`` (a text key keeps its exact spelling);
- anything else (``bool``, ``float``, ``bytes``, ``None``, containers) is refused: a float
  id could be a rounded bigint, ``True == 1`` in Python, and guessing here would let one
  customer's ticket reveal another.

A string id must be 1..200 characters with no control characters.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from proxy.errors import InvalidInputError

MAX_ID_LENGTH = 200

__all__ = [
    "MAX_ID_LENGTH",
    "Decision",
    "Reason",
    "Ticket",
    "TicketStatus",
    "customer_key",
    "decide",
    "is_customer_key",
]


class TicketStatus(StrEnum):
    """A ticket's life in the helpdesk. Only ``OPEN`` justifies a reveal."""

    OPEN = "open"
    PENDING = "pending"  # waiting on the customer or a third party: does NOT justify
    CLOSED = "closed"


class Reason(StrEnum):
    """Why a reveal was allowed or denied. Goes into the audit log and the agent's page."""

    ALLOWED = "allowed"
    NO_TICKET = "no_ticket"  # the request cited no ticket
    UNKNOWN_TICKET = "unknown_ticket"  # it cited a ticket the store does not know
    CLOSED = "closed"
    PENDING = "pending"
    EXPIRED = "expired"
    NOT_ASSIGNED = "not_assigned"  # someone else's ticket, or nobody's
    NO_CUSTOMER_ID = "no_customer_id"  # the record carries no customer id
    INVALID_CUSTOMER_ID = "invalid_customer_id"  # ... or one of a type we refuse
    CUSTOMER_NOT_ON_TICKET = "customer_not_on_ticket"
    BUDGET_EXCEEDED = "budget_exceeded"  # the agent's reveal budget is spent
    STORE_UNAVAILABLE = "store_unavailable"  # the reveal could not be recorded: fail closed


@dataclass(frozen=True, slots=True)
class Decision:
    """Reveal or not, and why. ``allowed`` is true exactly when ``reason`` is ``ALLOWED``."""

    allowed: bool
    reason: Reason

    def __post_init__(self) -> None:
        if self.allowed != (self.reason is Reason.ALLOWED):
            raise InvalidInputError(
                f"a decision cannot be allowed={self.allowed} for {self.reason}"
            )

    @classmethod
    def allow(cls) -> Decision:
        return _ALLOW

    @classmethod
    def deny(cls, reason: Reason) -> Decision:
        """A denial for ``reason`` (anything but ``ALLOWED``)."""
        return cls(False, reason)


_ALLOW = Decision(True, Reason.ALLOWED)


def customer_key(value: object) -> str:
    """The one string that names a customer (rules in the module docstring).

    Raises :class:`InvalidInputError` naming the type, never the value, for an id we refuse.
    """
    if isinstance(value, str):
        if not is_customer_key(value):
            raise InvalidInputError(
                f"a customer id must be 1..{MAX_ID_LENGTH} characters without control "
                f"characters (got a string of length {len(value)})"
            )
        return value
    if isinstance(value, bool):  # before int: bool is an int subclass
        raise InvalidInputError("a customer id cannot be a bool")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise InvalidInputError(
        f"a customer id must be a str, int or UUID, not {type(value).__name__}"
    )


def is_customer_key(value: object) -> bool:
    """Whether ``value`` is already a valid normalised customer id (a well-formed str)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ID_LENGTH
        and value.isprintable()
    )


def _check_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not is_customer_key(value):
        raise InvalidInputError(
            f"{what} must be a non-empty string of at most {MAX_ID_LENGTH} printable characters"
        )
    return value


def _check_aware(value: object, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidInputError(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInputError(f"{what} must be timezone-aware (use datetime.now(UTC))")
    return value


@dataclass(frozen=True, slots=True)
class Ticket:
    """One helpdesk ticket, as the policy sees it.

    ``customer_ids`` accepts any iterable of str, int or UUID and holds normalised strings
    (:func:`customer_key`); it must name at least one customer: a ticket for nobody
    justifies nothing, and is refused here with a clear error rather than stored.
    ``agent`` is ``None`` for a ticket assigned to nobody (it justifies no reveal).
    ``expires_at`` is required: a forgotten ticket lapses on its own.
    ``updated_at`` is the helpdesk's time of the last change; the store ignores an update
    older than the one it holds (a late message must not reopen a closed ticket).
    """

    id: str
    agent: str | None
    customer_ids: frozenset[str]
    status: TicketStatus
    expires_at: datetime
    updated_at: datetime
    _sorted: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        id: str,
        agent: str | None,
        customer_ids: Iterable[str | int | uuid.UUID],
        status: TicketStatus | str,
        expires_at: datetime,
        updated_at: datetime,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "id", _check_id(id, "a ticket id"))
        set_(self, "agent", None if agent is None else _check_id(agent, "an agent"))
        if isinstance(customer_ids, str | bytes):
            raise InvalidInputError("customer_ids must be a collection of ids, not one string")
        ids = frozenset(customer_key(c) for c in customer_ids)
        if not ids:
            raise InvalidInputError(
                f"ticket {self.id} names no customer: a ticket must name at least one "
                "customer id (a ticket for nobody justifies no reveal)"
            )
        set_(self, "customer_ids", ids)
        set_(self, "_sorted", tuple(sorted(ids)))
        try:
            set_(self, "status", TicketStatus(status))
        except ValueError:
            raise InvalidInputError(
                f"ticket status must be one of {', '.join(TicketStatus)}"
            ) from None
        set_(self, "expires_at", _check_aware(expires_at, "expires_at"))
        set_(self, "updated_at", _check_aware(updated_at, "updated_at"))

    @property
    def sorted_customer_ids(self) -> tuple[str, ...]:
        """The customer ids in a stable order (for storage, logs and the audit log)."""
        return self._sorted


def decide(
    ticket: Ticket | None, agent: str, customer_id: str | None, now: datetime
) -> Decision:
    """May ``agent`` see the record of ``customer_id`` at ``now`` under ``ticket``?

    ``ticket`` is the looked-up ticket, ``None`` when the cited ticket does not exist (a
    request that cites no ticket at all is ``no_ticket``, answered before any lookup).
    ``customer_id`` should be normalised (:func:`customer_key`); ``None`` means the record
    has none, and a value of another type is denied as ``invalid_customer_id``, never
    coerced. ``now`` must be timezone-aware. Never raises for a bad ticket or id: a bad
    input is a denial with its reason.
    """
    _check_aware(now, "now")
    if ticket is None:
        return Decision.deny(Reason.UNKNOWN_TICKET)
    if ticket.status is TicketStatus.CLOSED:
        return Decision.deny(Reason.CLOSED)
    if ticket.status is not TicketStatus.OPEN:
        return Decision.deny(Reason.PENDING)
    if now >= ticket.expires_at:
        return Decision.deny(Reason.EXPIRED)
    if ticket.agent is None or not isinstance(agent, str) or agent != ticket.agent:
        return Decision.deny(Reason.NOT_ASSIGNED)
    if customer_id is None:
        return Decision.deny(Reason.NO_CUSTOMER_ID)
    if not is_customer_key(customer_id):
        return Decision.deny(Reason.INVALID_CUSTOMER_ID)
    if customer_id not in ticket.customer_ids:
        return Decision.deny(Reason.CUSTOMER_NOT_ON_TICKET)
    return Decision.allow()
