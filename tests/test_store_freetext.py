"""Notes coming back: their tokens resolved under the key version that issued them, and a
token two versions issued for different values refused, never resolved by a guess."""

from __future__ import annotations

import secrets

import asyncpg
import pytest
from store_fixtures import *  # noqa: F403  (the store_pool fixture)

from proxy.crypto.engine import AmbiguousTokenError, TokenEngine
from proxy.crypto.keyring import DataKey, Keyring, KeyState
from proxy.crypto.registry import MemoryRegistry
from proxy.crypto.tokens import IssuedToken, Kind, Method
from proxy.crypto.vault import MemoryVault, Unrecorded
from proxy.store.durable import Store
from proxy.store.freetext import resolve_note, tokenize_notes
from proxy.store.registry import PgTokenRegistry

NAME = "Budi Santoso"  # (a first name of four letters: its token comes from the vault)
NOTE = "Called Budi back on +62 812-3456-7890 about the router."
LONG_NAME = "Bambang Santoso"  # (seven: FF1)
LONG_NOTE = "Called Bambang back on +62 812-3456-7890 about the router."


def rotated_pair() -> tuple[TokenEngine, TokenEngine]:
    """An engine on version 1, and one after a rotation to version 2 (1 decrypt-only),
    sharing the vault and the registry."""
    k1 = DataKey(1, secrets.token_bytes(32))
    vault, registry = MemoryVault(), MemoryRegistry()
    before = TokenEngine.standard(Keyring((k1,)), vault, registry)
    after = TokenEngine.standard(
        Keyring((k1.with_state(KeyState.DECRYPT_ONLY), DataKey(2, secrets.token_bytes(32)))),
        vault,
        registry,
    )
    return before, after


@pytest.mark.parametrize("full_name, text", [(NAME, NOTE), (LONG_NAME, LONG_NOTE)])
@pytest.mark.parametrize("version", [1, 2])
async def test_a_note_resolves_under_the_version_that_issued_it(
    version: int, full_name: str, text: str
) -> None:
    """A note saved back after a rotation resolves whole, whichever key tokenized it: the
    old key's token of the record's first name included (a token left in it would be
    stored as data)."""
    before, after = rotated_pair()
    issuer = before if version == 1 else after
    name = issuer.tokenize(Kind.NAME.value, full_name)
    note = issuer.tokenize_text(text, [full_name])
    assert note != text and full_name.split()[0] not in note
    assert await resolve_note(after, None, note, [name]) == text


async def test_a_phone_token_two_versions_issued_in_a_note_is_refused() -> None:
    """The old version's note holds the token of its phone; the new version issued the
    same token for another phone. Resolving the note with the newest version first would
    write that other phone into it: refused instead."""
    before, after = rotated_pair()
    name = before.tokenize(Kind.NAME.value, NAME)
    note = before.tokenize_text(NOTE, [NAME])
    phone = before.tokenize(Kind.PHONE.value, "+62 812-3456-7890")
    assert phone in note
    after.registry.record([IssuedToken(Kind.PHONE.value, phone, 2, Method.FF1)])
    with pytest.raises(AmbiguousTokenError):
        await resolve_note(after, None, note, [name])


async def test_a_name_token_two_versions_issued_in_a_note_is_refused() -> None:
    before, after = rotated_pair()
    name = before.tokenize(Kind.NAME.value, LONG_NAME)
    note = before.tokenize_text(LONG_NOTE, [LONG_NAME])
    first = before.tokenize(Kind.NAME.value, "Bambang")  # the note's token of the first name
    assert first in note
    after.registry.record([IssuedToken(Kind.NAME.value, first, 2, Method.FF1)])
    with pytest.raises(AmbiguousTokenError):
        await resolve_note(after, None, note, [name])


async def test_a_fields_alternate_token_pasted_into_a_note_resolves_to_its_value() -> None:
    """A phone whose plain token the old version issued for another phone gets its
    version's alternate token; an agent pasting that token into the notes saves the
    phone, resolved with the alternate key (the plain one would read another number)."""
    _, after = rotated_pair()
    phone = "+62 812-3456-7890"
    k2 = after.keyring.active
    plain = after.tokenizer(Kind.PHONE.value).tokenize(phone, k2, after.vault).token
    after.registry.record([IssuedToken(Kind.PHONE.value, plain, 1, Method.FF1)])
    token = after.tokenize(Kind.PHONE.value, phone)
    assert token != plain
    assert [r.method for r in after.registry.lookup(Kind.PHONE.value, token)] == [
        Method.ALTERNATE]
    name = after.tokenize(Kind.NAME.value, NAME)
    typed = f"New number: {token}, call after six."
    assert await resolve_note(after, None, typed, [name]) == f"New number: {phone}, call after six."


async def test_a_note_of_a_phone_whose_plain_token_is_taken_resolves() -> None:
    """After a rotation, a phone whose new plain token the old version issued for another
    phone: the note's piece takes the same alternate token as the field, and the note
    saved back resolves whole, the phone included."""
    _, after = rotated_pair()
    phone = "+62 812-3456-7890"
    plain = after.tokenizer(Kind.PHONE.value).tokenize(phone, after.keyring.active,
                                                        after.vault).token
    after.registry.record([IssuedToken(Kind.PHONE.value, plain, 1, Method.FF1)])
    field = after.tokenize(Kind.PHONE.value, phone)
    name = after.tokenize(Kind.NAME.value, NAME)
    note = after.tokenize_text(NOTE, [NAME])
    assert field != plain and field in note and plain not in note
    assert await resolve_note(after, None, note, [name]) == NOTE


async def test_a_note_piece_whose_plain_token_is_taken_in_the_database_takes_the_alternate(
    store_pool: asyncpg.Pool,
) -> None:
    """The registry in the database, a proxy with nothing cached: the note's word
    "Bambang", whose plain token under the new key version 1 issued for another word (a
    row another proxy wrote), takes its alternate token; the note saved back resolves whole
    (the plain token would be refused as ambiguous: the note could never be saved)."""
    store = Store.over(store_pool, "test")
    k1, k2 = DataKey(1, secrets.token_bytes(32)), DataKey(2, secrets.token_bytes(32))
    engine = TokenEngine.standard(
        Keyring((k1.with_state(KeyState.DECRYPT_ONLY), k2)), store.vault, store.registry
    )
    plain = engine.tokenizer(Kind.NAME.value).tokenize("Bambang", k2, Unrecorded()).token
    elsewhere = PgTokenRegistry(store_pool)
    elsewhere.record([IssuedToken(Kind.NAME.value, plain, 1, Method.FF1)])
    await elsewhere.flush()
    [name] = await store.tokenize(engine, Kind.NAME.value, [LONG_NAME])
    [note], settled = await tokenize_notes(engine, store, [(LONG_NOTE, (LONG_NAME,))])
    assert settled and "Bambang" not in note and plain not in note
    [word] = [w for w in note.split() if len(w) == len("Bambang") and w != "Bambang"][:1]
    rows = await store_pool.fetch(
        "SELECT version, method FROM token_registry WHERE kind = 'name' AND token = $1", word)
    assert [(r["version"], r["method"]) for r in rows] == [(2, "ff1-alt")]
    assert await resolve_note(engine, store, note, [name]) == LONG_NOTE
