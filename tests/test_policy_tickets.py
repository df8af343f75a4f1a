"""proxy.policy.tickets: tickets as values and the reveal decision (pure, no I/O)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.errors import InvalidInputError
from proxy.policy.tickets import (
    Decision,
    Reason,
    Ticket,
    TicketStatus,
    customer_key,
    decide,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=4)


def ticket(**changes: object) -> Ticket:
    base: dict[str, object] = {
        "id": "T-1",
        "agent": "alice",
        "customer_ids": ["42", "c-7"],
        "status": "open",
        "expires_at": LATER,
        "updated_at": NOW - timedelta(minutes=5),
    }
    base.update(changes)
    return Ticket(**base)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ the rules


def test_open_assigned_ticket_naming_the_customer_allows() -> None:
    assert decide(ticket(), "alice", "42", NOW) == Decision(True, Reason.ALLOWED)
    assert decide(ticket(), "alice", "c-7", NOW).allowed


@pytest.mark.parametrize(
    ("t", "agent", "customer", "reason"),
    [
        (None, "alice", "42", Reason.UNKNOWN_TICKET),
        (ticket(status="closed"), "alice", "42", Reason.CLOSED),
        (ticket(status="pending"), "alice", "42", Reason.PENDING),
        (ticket(expires_at=NOW), "alice", "42", Reason.EXPIRED),
        (ticket(expires_at=NOW - timedelta(seconds=1)), "alice", "42", Reason.EXPIRED),
        (ticket(), "bob", "42", Reason.NOT_ASSIGNED),
        (ticket(), "", "42", Reason.NOT_ASSIGNED),
        (ticket(agent=None), "alice", "42", Reason.NOT_ASSIGNED),
        (ticket(), "alice", None, Reason.NO_CUSTOMER_ID),
        (ticket(), "alice", "43", Reason.CUSTOMER_NOT_ON_TICKET),
        (ticket(), "alice", "042", Reason.CUSTOMER_NOT_ON_TICKET),
        (ticket(), "Alice", "42", Reason.NOT_ASSIGNED),
    ],
)
def test_each_denial_names_its_reason(
    t: Ticket | None, agent: str, customer: str | None, reason: Reason
) -> None:
    decision = decide(t, agent, customer, NOW)
    assert decision == Decision.deny(reason)
    assert not decision.allowed


@pytest.mark.parametrize("bad", [42, 4.2, b"42", True, ["42"], "", "x\x00"])
def test_a_customer_id_of_the_wrong_type_is_denied_not_coerced(bad: object) -> None:
    decision = decide(ticket(customer_ids=["42", "4.2", "True"]), "alice", bad, NOW)  # type: ignore[arg-type]
    assert decision == Decision.deny(Reason.INVALID_CUSTOMER_ID)


def test_ticket_level_reasons_come_before_customer_level_ones() -> None:
    assert decide(ticket(status="closed"), "bob", None, NOW).reason is Reason.CLOSED
    assert decide(ticket(expires_at=NOW), "bob", "99", NOW).reason is Reason.EXPIRED
    assert decide(ticket(), "bob", "99", NOW).reason is Reason.NOT_ASSIGNED


def test_pending_does_not_justify_a_reveal() -> None:
    assert not decide(ticket(status=TicketStatus.PENDING), "alice", "42", NOW).allowed


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(InvalidInputError, match="timezone-aware"):
        decide(ticket(), "alice", "42", datetime(2024, 5, 1, 12))


def test_expiry_compares_instants_not_wall_clocks() -> None:
    jakarta = timezone(timedelta(hours=7))
    t = ticket(expires_at=datetime(2024, 5, 1, 19, 30, tzinfo=jakarta))  # 12:30 UTC
    assert decide(t, "alice", "42", NOW).allowed
    assert decide(t, "alice", "42", NOW + timedelta(minutes=30)).reason is Reason.EXPIRED


# ------------------------------------------------------------------------ the values


def test_decision_allowed_and_reason_agree() -> None:
    with pytest.raises(InvalidInputError):
        Decision(True, Reason.CLOSED)
    with pytest.raises(InvalidInputError):
        Decision(False, Reason.ALLOWED)


def test_customer_ids_are_normalised_to_strings() -> None:
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    t = ticket(customer_ids=[42, "x", u, -7])
    assert t.customer_ids == frozenset({"42", "x", str(u), "-7"})
    assert t.sorted_customer_ids == tuple(sorted(t.customer_ids))
    assert ticket(customer_ids=[42]) == ticket(customer_ids=["42"])
    assert customer_key(u) == "12345678-1234-5678-1234-567812345678"


@pytest.mark.parametrize("bad", [4.2, True, b"42", None, ("42",), "", "a\nb", "x" * 201])
def test_customer_key_refuses_what_it_cannot_name(bad: object) -> None:
    with pytest.raises(InvalidInputError) as err:
        customer_key(bad)
    if isinstance(bad, str) and bad:
        assert bad not in str(err.value)  # the value is never echoed


def test_a_ticket_with_no_customers_is_a_clear_error() -> None:
    with pytest.raises(InvalidInputError, match="names no customer"):
        ticket(customer_ids=[])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"customer_ids": [4.2]}, "str, int or UUID, not float"),
        ({"customer_ids": "42"}, "not one string"),
        ({"status": "resolved"}, "status must be one of open, pending, closed"),
        ({"expires_at": datetime(2024, 5, 2)}, "timezone-aware"),
        ({"updated_at": "2024-05-01"}, "must be a datetime"),
        ({"id": ""}, "ticket id"),
        ({"agent": ""}, "an agent"),
        ({"id": 17}, "ticket id"),
    ],
)
def test_bad_tickets_are_refused_with_a_clear_error(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        ticket(**changes)


def test_tickets_are_frozen_and_hashable() -> None:
    t = ticket()
    with pytest.raises(AttributeError):
        t.status = TicketStatus.CLOSED  # type: ignore[misc]
    assert len({t, ticket()}) == 1


# ------------------------------------------------------------------- properties

ids = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")),
              min_size=1, max_size=12).filter(str.isprintable)
customer_ids = st.one_of(ids, st.integers(-(10**20), 10**20))
agents = st.sampled_from(["alice", "bob", "carol"])
times = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
)


@st.composite
def tickets(draw: st.DrawFn) -> Ticket:
    return Ticket(
        draw(ids),
        draw(st.one_of(st.none(), agents)),
        draw(st.lists(customer_ids, min_size=1, max_size=5)),
        draw(st.sampled_from(list(TicketStatus))),
        draw(times),
        draw(times),
    )


@given(
    st.one_of(st.none(), tickets()),
    agents,
    st.one_of(st.none(), customer_ids.map(customer_key)),
    times,
)
def test_allowed_exactly_when_every_rule_holds(
    t: Ticket | None, agent: str, customer: str | None, now: datetime
) -> None:
    decision = decide(t, agent, customer, now)
    expected = (
        t is not None
        and t.status is TicketStatus.OPEN
        and now < t.expires_at
        and t.agent == agent
        and customer is not None
        and customer in t.customer_ids
    )
    assert decision.allowed is expected
    assert (decision.reason is Reason.ALLOWED) is expected


@given(tickets(), agents, customer_ids, times)
def test_breaking_any_one_rule_of_an_allowed_decision_denies(
    t: Ticket, agent: str, customer: str | int, now: datetime
) -> None:
    key = customer_key(customer)
    allowed = Ticket(
        t.id, agent, {*t.customer_ids, key}, "open", now + timedelta(seconds=1), t.updated_at
    )
    assert decide(allowed, agent, key, now).allowed
    broken = {
        Reason.CLOSED: replace_status(allowed, TicketStatus.CLOSED),
        Reason.PENDING: replace_status(allowed, TicketStatus.PENDING),
        Reason.EXPIRED: Ticket(
            t.id, agent, allowed.customer_ids, "open", now, t.updated_at
        ),
        Reason.NOT_ASSIGNED: Ticket(
            t.id, agent + "x", allowed.customer_ids, "open", allowed.expires_at, t.updated_at
        ),
    }
    for reason, variant in broken.items():
        assert decide(variant, agent, key, now) == Decision.deny(reason)
    others = allowed.customer_ids - {key}
    if others:
        narrowed = Ticket(t.id, agent, others, "open", allowed.expires_at, t.updated_at)
        assert decide(narrowed, agent, key, now).reason is Reason.CUSTOMER_NOT_ON_TICKET


def replace_status(t: Ticket, status: TicketStatus) -> Ticket:
    return Ticket(t.id, t.agent, t.customer_ids, status, t.expires_at, t.updated_at)


@given(st.integers(-(10**30), 10**30))
def test_an_int_id_and_its_decimal_string_are_one_customer(n: int) -> None:
    assert customer_key(n) == customer_key(str(n)) == str(n)
    t = Ticket("T", "alice", [n], "open", LATER, NOW)
    assert decide(t, "alice", str(n), NOW).allowed
    assert decide(t, "alice", customer_key(n), NOW).allowed


@given(st.one_of(st.floats(), st.booleans(), st.binary(), st.none(), st.lists(st.integers())))
def test_decide_never_raises_and_never_allows_a_mistyped_id(bad: object) -> None:
    t = Ticket("T", "alice", ["1", "0", "True"], "open", LATER, NOW)
    decision = decide(t, "alice", bad, NOW)  # type: ignore[arg-type]
    assert not decision.allowed


def test_replace_is_not_a_way_around_validation() -> None:
    # dataclasses.replace goes through __init__: the checks hold for copies too.
    with pytest.raises(InvalidInputError):
        replace(ticket(), customer_ids=frozenset())
