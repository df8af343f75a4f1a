"""Agent names and ticket ids: what a well-formed one is, and clear refusals otherwise."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.errors import InvalidInputError
from proxy.policy.principals import Justification, Principal, parse_agent, parse_ticket_id


@pytest.mark.parametrize(
    "value", ["alice", "alice@example.com", "Zoë O'Brien", "T-1234", "x" * 200]
)
def test_well_formed_values_pass_unchanged(value: str) -> None:
    assert parse_agent(value) == value
    assert parse_ticket_id(value) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "is empty"),
        ("x" * 201, "201 characters long; at most 200"),
        (" alice", "leading or trailing whitespace"),
        ("alice\n", "leading or trailing whitespace"),
        ("ali\x00ce", r"U\+0000\) at position 3"),
        ("ali\u200bce", r"U\+200B"),  # zero width space
        ("ali\u202ece", r"U\+202E"),  # right-to-left override
        ("a\tb", r"U\+0009"),
        (42, "must be a string, not int"),
        (None, "must be a string, not NoneType"),
    ],
)
def test_malformed_values_are_refused_without_echoing_them(value: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message) as info:
        parse_agent(value)
    if isinstance(value, str) and value.strip():
        assert value not in str(info.value)
    with pytest.raises(InvalidInputError, match="the ticket id"):
        parse_ticket_id(value)


def test_principal_and_justification_validate_on_construction() -> None:
    assert Principal("alice", "jwt").agent == "alice"
    assert Justification("T-1", "cookie").ticket_id == "T-1"
    with pytest.raises(InvalidInputError, match="source must be one of jwt, header, cookie, pg"):
        Principal("alice", "query")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="source must be one of header, cookie, pg"):
        Justification("T-1", "jwt")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        Principal("alice\x7f", "header")
    with pytest.raises(InvalidInputError):
        Justification("", "header")


@given(st.text(max_size=210))
def test_parse_either_returns_the_value_or_refuses_it(value: str) -> None:
    try:
        assert parse_agent(value) == value
    except InvalidInputError:
        return
    assert 0 < len(value) <= 200 and value.isprintable() and value == value.strip()
