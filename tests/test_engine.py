"""The token engine: registry-backed resolution, and every way a token may not resolve."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.crypto.engine import (
    AmbiguousTokenError,
    StaleTokenError,
    TokenEngine,
    UnresolvableTokenError,
)
from proxy.crypto.keyring import DataKey, Keyring, KeyState
from proxy.crypto.registry import MemoryRegistry
from proxy.crypto.tokens import IssuedToken, Kind, Method
from proxy.crypto.vault import MemoryVault
from proxy.errors import InvalidInputError, NotATokenError

K1, K2 = bytes(range(32)), bytes(range(1, 33))


def ring(*states: KeyState) -> Keyring:
    return Keyring(
        tuple(DataKey(v, (K1, K2)[v - 1], s) for v, s in enumerate(states, 1))
    )


def engine(keyring: Keyring | None = None) -> TokenEngine:
    return TokenEngine.standard(keyring or ring(KeyState.ACTIVE), MemoryVault(), MemoryRegistry())


def test_tokens_are_recorded_and_resolve_typed_values_pass() -> None:
    e = engine()
    token = e.tokenize("name", "Budi Santoso")
    assert e.registry.lookup("name", token)
    assert e.resolve("name", token).value == "Budi Santoso"
    typed = e.resolve("name", "Agus Salim")
    assert (typed.value, typed.was_token) == ("Agus Salim", False)
    with pytest.raises(NotATokenError):
        e.detokenize("name", "Agus Salim")


def test_a_token_of_one_kind_is_not_a_token_of_another() -> None:
    e = engine()
    token = e.tokenize("phone", "+62 812-3456-789")
    assert e.resolve("name", token).was_token is False


def test_an_unknown_kind_is_refused_never_passed() -> None:
    with pytest.raises(InvalidInputError):
        engine().tokenize("email", "budi@example.com")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["Budi Santoso", "Li", "Siti Nurhaliza", "Иван", "王小明"]),
                max_size=12))
def test_tokenize_many_keeps_order_and_agrees_with_single_calls(values: list[str]) -> None:
    batch, single = engine(), engine()
    # the vault draws random tokens for short values: share one vault to compare
    single.vault = batch.vault
    assert batch.tokenize_many("name", values) == [single.tokenize("name", v) for v in values]


def test_old_tokens_resolve_after_rotation() -> None:
    e = engine(ring(KeyState.ACTIVE))
    old = e.tokenize("name", "Budi Santoso")
    rotated = e.with_keyring(ring(KeyState.DECRYPT_ONLY, KeyState.ACTIVE))
    new = rotated.tokenize("name", "Budi Santoso")
    assert new != old
    assert rotated.detokenize("name", old) == rotated.detokenize("name", new) == "Budi Santoso"


def test_a_retired_token_is_refused_not_passed_as_typed() -> None:
    e = engine(ring(KeyState.ACTIVE))
    old = e.tokenize("name", "Budi Santoso")
    retired = e.with_keyring(ring(KeyState.RETIRED, KeyState.ACTIVE))
    with pytest.raises(StaleTokenError, match="retired or not loaded"):
        retired.resolve("name", old)


def test_a_token_of_a_version_not_loaded_here_is_refused() -> None:
    """Another proxy rotated first: its v2 tokens reach a proxy still on v1."""
    ahead = engine(ring(KeyState.DECRYPT_ONLY, KeyState.ACTIVE))
    token = ahead.tokenize("name", "Budi Santoso")
    behind = TokenEngine.standard(ring(KeyState.ACTIVE), ahead.vault, ahead.registry)
    with pytest.raises(StaleTokenError):
        behind.resolve("name", token)


def test_a_token_two_versions_disagree_on_is_refused() -> None:
    e = engine(ring(KeyState.DECRYPT_ONLY, KeyState.ACTIVE))
    token = e.tokenize("name", "Budi Santoso")
    # the same string, registered as v1's token too: v1 decrypts it to someone else
    e.registry.record([IssuedToken("name", token, 1, Method.FF1)])
    with pytest.raises(AmbiguousTokenError):
        e.resolve("name", token)


def test_a_registered_vault_token_missing_from_the_vault_is_refused() -> None:
    e = engine()
    token = e.tokenize("name", "Li")
    forgetful = TokenEngine.standard(e.keyring, MemoryVault(), e.registry)
    with pytest.raises(UnresolvableTokenError):
        forgetful.resolve("name", token)


def test_free_text_records_the_tokens_inside() -> None:
    e = engine()
    note = e.tokenize_text("Budi Santoso called from +62 812-3456-789", ["Budi Santoso"])
    name, phone = e.tokenize("name", "Budi Santoso"), e.tokenize("phone", "+62 812-3456-789")
    assert note == f"{name} called from {phone}"
    assert e.registry.lookup(Kind.NAME, name) and e.registry.lookup(Kind.PHONE, phone)


def test_forget_drops_a_cached_token() -> None:
    e = engine()
    token = e.tokenize("name", "Li")
    e.vault = MemoryVault()  # as if another proxy's token won the race
    assert e.tokenize("name", "Li") == token and len(e.vault) == 0  # served from the cache
    e.forget("name", "Li")
    e.tokenize("name", "Li")
    assert len(e.vault) == 1  # the cache was bypassed: the new vault assigned a token


PHONES = st.integers(10**7, 10**8 - 1).map(lambda n: f"+62 812-{n // 10**4:04d}-{n % 10**4:04d}")
WORDS = st.text("abcdefghijklmnopqrstuvwxyz", min_size=6, max_size=9).map(str.capitalize)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["phone", "name"]),
                          st.sampled_from([None, "old version", "alternate"]), st.data()),
                min_size=1, max_size=8), st.booleans())
def test_a_token_another_version_issued_is_never_issued_again(
    items: list[tuple[str, str | None, st.DataObject]], batched: bool
) -> None:
    """Whatever tokens were issued before (here: the very token version 2 would give a
    value, issued by version 1, as a collision of two permutations of one domain makes
    it, or by version 2's alternate key for another value), version 2 gives such a value
    its alternate token: no token is registered twice, and every value resolves from its
    token."""
    e2 = engine(ring(KeyState.DECRYPT_ONLY, KeyState.ACTIVE))
    k2 = e2.keyring.active
    values: list[tuple[str, str]] = []
    before: list[IssuedToken] = []
    for kind, taken, data in items:
        value = data.draw(PHONES if kind == "phone" else WORDS)
        values.append((kind, value))
        if taken is not None:
            plain = e2.tokenizer(kind).tokenize(value, k2, e2.vault).token
            row = (IssuedToken(kind, plain, 1, Method.FF1) if taken == "old version"
                   else IssuedToken(kind, plain, 2, Method.ALTERNATE))
            e2.registry.record([row])
            before.append(row)
    methods = set()
    for kind, value in values:
        if batched:
            (token,) = e2.tokenize_many(kind, [value])
        else:
            token = e2.tokenize(kind, value)
        rows = e2.registry.lookup(kind, token)
        assert len(rows) == 1 and rows[0].version == 2, (kind, value)
        assert e2.detokenize(kind, token) == value
        assert e2.resolve(kind, token).value == value
        methods.add(rows[0].method)
    assert (Method.ALTERNATE in methods) == any(taken for _, taken, _ in items)
    for row in before:  # (what was issued before stays as it was)
        assert row in e2.registry.lookup(row.kind, row.token)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(WORDS, min_size=1, max_size=3).map(" ".join), PHONES,
                          st.sampled_from(["{n} called from {p}", "{N} ({p}) and {w}",
                                           "ask {w} about {p}; {n}"])),
                min_size=1, max_size=4))
def test_text_candidates_are_the_ff1_pieces_a_note_gets(
    items: list[tuple[str, str, str]],
) -> None:
    """The dry run of notes names, per kind, every FF1 token the real run then issues
    inside them (full names, their casings and words, phones), and draws and records
    nothing; with one key version it is skipped."""
    notes = [(form.format(n=name, N=name.upper(), w=name.split()[-1], p=phone), (name,))
             for name, phone, form in items]
    registry = _Kept()
    e2 = TokenEngine.standard(ring(KeyState.DECRYPT_ONLY, KeyState.ACTIVE), MemoryVault(),
                              registry)
    candidates = e2.text_candidates(notes)
    assert not len(e2.vault) and not registry.recorded
    for note, names in notes:
        e2.tokenize_text(note, names)
    issued = {(r.kind, r.token) for r in registry.recorded if r.method is Method.FF1}
    assert issued == {(kind, t) for kind, tokens in candidates.items() for t in tokens}
    assert set(candidates) == {"phone", "name"}
    assert engine(ring(KeyState.ACTIVE)).text_candidates(notes) == {}


class _Kept(MemoryRegistry):
    """A registry that also keeps every row recorded, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.recorded: list[IssuedToken] = []

    def record(self, issued: Iterable[IssuedToken]) -> None:
        rows = list(issued)
        self.recorded += rows
        super().record(rows)
