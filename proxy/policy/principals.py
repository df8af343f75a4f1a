"""Who is asking and which ticket they cite, as validated values both front ends share.

The front ends do the verifying (a JWT's signature, a trusted peer's header, the agent
page's signed cookie, a PostgreSQL login); this module only says what a well-formed agent
name and ticket id are, so that a value compared with a ticket's ``agent`` or looked up as a
ticket id is never a surprise:

- a ``str`` (a JWT ``sub`` that is a number is refused, not converted: say which claim);
- 1 to 200 characters (:data:`proxy.policy.tickets.MAX_ID_LENGTH`, as tickets store them);
- printable: no control, format (zero-width, bidi overrides) or separator characters other
  than the plain space, so that two names that look the same are the same;
- no leading or trailing whitespace (``"alice "`` is not ``"alice"``, and is refused rather
  than trimmed: a front end trims what its protocol says to trim, e.g. header whitespace).

Errors name the problem and the position, never echo the value (it may be a token from a
hostile client, and it ends up in logs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from proxy.errors import InvalidInputError
from proxy.policy.tickets import MAX_ID_LENGTH

__all__ = [
    "Justification",
    "JustificationSource",
    "Principal",
    "PrincipalSource",
    "parse_agent",
    "parse_ticket_id",
]

PrincipalSource = Literal["jwt", "header", "cookie", "pg"]
JustificationSource = Literal["header", "cookie", "pg"]


def _check(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidInputError(f"{what} is empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInputError(
            f"{what} is {len(value)} characters long; at most {MAX_ID_LENGTH} are allowed"
        )
    if value != value.strip():
        raise InvalidInputError(f"{what} has leading or trailing whitespace")
    for i, ch in enumerate(value):
        if not ch.isprintable():
            raise InvalidInputError(
                f"{what} has a control or invisible character (U+{ord(ch):04X}) at "
                f"position {i}"
            )
    return value


def parse_agent(value: object) -> str:
    """A well-formed agent name (rules in the module docstring), or InvalidInputError."""
    return _check(value, "the agent name")


def parse_ticket_id(value: object) -> str:
    """A well-formed ticket id (rules in the module docstring), or InvalidInputError."""
    return _check(value, "the ticket id")


def _source(value: object, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise InvalidInputError(f"{what} source must be one of {', '.join(allowed)}")


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified agent, and how they were identified."""

    agent: str
    source: PrincipalSource

    def __post_init__(self) -> None:
        parse_agent(self.agent)
        _source(self.source, get_args(PrincipalSource), "a principal's")


@dataclass(frozen=True, slots=True)
class Justification:
    """The ticket an agent cites for a request, and where it was read."""

    ticket_id: str
    source: JustificationSource

    def __post_init__(self) -> None:
        parse_ticket_id(self.ticket_id)
        _source(self.source, get_args(JustificationSource), "a justification's")
