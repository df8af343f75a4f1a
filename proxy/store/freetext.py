"""Free-text fields (notes) through the store: tokenized with the record's names, resolved on
write-back.

The text tokenizer (:mod:`proxy.crypto.text`) replaces the phone numbers in a note and the
*known names* of its record (the record's name values and their words). The engine's
``tokenize_many`` cannot pass known names, and a note's token is not one registry row but
the rows of the name and phone tokens inside it, so notes take this path:

**Responses** (:func:`tokenize_notes`): the engine's text tokenizer with the record's
names, the same settle loop as :func:`proxy.store.durable.tokenize_durably` (vault values
and, with several key versions, the registry rows of the pieces' tokens prefetched, vault
rows written and races settled, the pieces recorded in the registry and flushed) before
the note may leave. While the database is away, pieces queue and the note goes out, like
any token.

**Requests** (:func:`resolve_note`): a note that comes back holds tokens only where the
proxy put them, and a format-preserving token looks like any text, so only tokens that are
*known* are resolved:

- the name tokens of its own record: the record's name fields, resolved to their values,
  and the tokens of those values' words (exactly what the response put in the note) under
  the active key and under each key the record's name tokens were issued under (a note
  read before a rotation and saved after it holds the old key's; that key's vault tokens
  are looked up, never drawn);
- any other word of 5 letters or more that the registry knows as an FF1 name token (a
  random vault token of a short name could collide with an ordinary word; an FF1 token of 5
  letters cannot, in practice);
- the phone spans of the note that the registry knows as phone tokens.

Everything else in the note is what the agent typed and passes unchanged. Resolution runs
once per key the note's candidate tokens were issued under (newest version first; a
version's alternate key for a field's alternate token pasted into the note). A
candidate that two versions issued for different values (FF1 under two keys: two
permutations of one domain) is refused (`AmbiguousTokenError`): which version put it in the
note cannot be told, and the newest could write another customer's value into it.

Tokenizing goes through ``TokenEngine.tokenize_text``; the settle-and-flush loop around it
mirrors ``tokenize_durably``, which takes no known names (yet): when the store grows a
durable text call, this module shrinks to it. Resolving a note back has no engine or store
counterpart yet and lives here.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Sequence
from typing import Any

from proxy.crypto.engine import StaleTokenError, TokenEngine
from proxy.crypto.keyring import DataKey
from proxy.crypto.tokens import IssuedToken, Kind, Method
from proxy.crypto.vault import HeldOnly
from proxy.errors import KeyringError, TokenProxyError, VaultMissError
from proxy.store.db import DatabaseUnavailableError
from proxy.store.durable import MAX_SETTLE_ROUNDS, Store, prefetch_tokens

__all__ = ["name_words", "resolve_note", "tokenize_notes"]

_WORD = re.compile(r"[^\W\d_]{2,}")
_LONG_WORD = re.compile(r"[^\W\d_]{5,}")
FF1_WORD_LETTERS = 5


def name_words(names: Iterable[str]) -> list[str]:
    """The names and their words of 2 letters or more (what the text tokenizer replaces)."""
    out: dict[str, None] = {}
    for name in names:
        if name.strip():
            out[name] = None
            for word in _WORD.findall(name):
                out[word] = None
    return list(out)


def _text_tokenizer(engine: TokenEngine) -> Any:
    return engine.tokenizer(Kind.TEXT.value)


def _tokenize_all(engine: TokenEngine, items: Sequence[tuple[str, tuple[str, ...]]]) -> list[str]:
    """Notes tokenized with their names, the pieces recorded in the registry (memory)."""
    return [engine.tokenize_text(value, names) for value, names in items]


async def tokenize_notes(
    engine: TokenEngine, store: Store | None, items: Sequence[tuple[str, tuple[str, ...]]]
) -> tuple[list[str], bool]:
    """The tokens of ``(note, known names)`` items, recorded before they are returned.

    Returns ``(tokens, settled)``: ``settled`` is false when the database was away (the
    pieces are queued and a vault race could still change a short name's token).
    """
    if store is None:
        return _tokenize_all(engine, items), True
    health, vault = store.health, store.vault
    away = not health.healthy
    if not away:
        try:
            words = name_words(n for _, names in items for n in names)
            if words:
                await vault.prefetch_values(Kind.NAME.value, words, engine.keyring.active)
            # The registry rows of the pieces' tokens, so that a token another key version
            # issued is seen and the piece takes its alternate (as `tokenize_durably` does).
            for kind, tokens in engine.text_candidates(items).items():
                await store.registry.prefetch(kind, tokens)
        except DatabaseUnavailableError as exc:
            health.report_failure(exc)
            away = True
    for _ in range(MAX_SETTLE_ROUNDS):
        losses = vault.losses
        tokens = _tokenize_all(engine, items)
        if away:
            break
        try:
            lost = await vault.flush()
        except DatabaseUnavailableError as exc:
            health.report_failure(exc)
            away = True
            break
        for lost_kind, value in lost:
            engine.forget(lost_kind, value)
        if vault.losses == losses:
            break
    else:
        raise VaultMissError(
            f"could not settle the vault tokens of notes after {MAX_SETTLE_ROUNDS} rounds"
        )
    if not away:
        try:
            await store.registry.flush()
        except DatabaseUnavailableError as exc:
            health.report_failure(exc)
            away = True
    return tokens, not away


class _Recorder:
    """A ``known_phone_tokens`` that knows nothing and remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __contains__(self, item: object) -> bool:
        if isinstance(item, str):
            self.asked.append(item)
        return False


_Pass = tuple[int, bool]  # a key version, and its alternate key or not


def _pass(row: IssuedToken) -> _Pass:
    """The key that resolves ``row``'s token: its version's, or that version's alternate
    (a field's token pasted into the note may be one)."""
    return row.version, row.method is Method.ALTERNATE


class _Registered:
    """A ``known_phone_tokens`` backed by the registry rows of one key (`_Pass`)."""

    def __init__(self, engine: TokenEngine, key: _Pass) -> None:
        self.engine = engine
        self.key = key

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, str):
            return False
        rows = self.engine.registry.lookup(Kind.PHONE.value, item)
        return any(_pass(r) == self.key for r in rows)


def _one_value(engine: TokenEngine, kind: Kind, token: str, rows: Sequence[IssuedToken]) -> None:
    """Raise `AmbiguousTokenError` when key versions issued ``token`` for different values:
    which one put it in the note cannot be told, and resolving it with the newest could
    write another customer's value into it."""
    if len({row.version for row in rows}) > 1:
        engine.detokenize(kind.value, token)  # (raises when the versions disagree)


async def _word_tokens(
    engine: TokenEngine, store: Store | None, words: list[str], version: int
) -> list[str]:
    """The plain tokens the text tokenizer gives name ``words`` under key ``version``, as
    they are in a note (its vault asked, never drawn from: a word it holds no token of was
    not tokenized in a note under that key). A piece that took its version's alternate
    token instead is an FF1 word of 5 letters or more, found registered, or the record's
    own name field's token."""
    if not words:
        return []
    try:
        key = engine.keyring.get(version)
    except KeyringError:
        return []  # (retired: the note's tokens of it are refused below)
    if store is not None and store.health.healthy:
        try:
            await store.vault.prefetch_values(Kind.NAME.value, words, key)
        except DatabaseUnavailableError as exc:
            store.health.report_failure(exc)
    names, vault = engine.tokenizer(Kind.NAME.value), HeldOnly(engine.vault)
    out = []
    for word in words:
        with contextlib.suppress(VaultMissError):
            out.append(names.tokenize(word, key, vault).token)
    return out


async def _prefetch(engine: TokenEngine, store: Store | None, kind: str, values: list[str]) -> None:
    if store is None or not values:
        return
    try:
        await prefetch_tokens(
            engine, store.registry, store.vault, kind, values, offline=not store.health.healthy
        )
    except DatabaseUnavailableError as exc:
        store.health.report_failure(exc)
        raise


async def resolve_note(
    engine: TokenEngine,
    store: Store | None,
    note: str,
    record_names: Sequence[str],
) -> str:
    """``note`` with its known tokens resolved (module docstring). ``record_names`` are the
    record's name values as they came (tokens, or names the agent typed). Raises
    DatabaseUnavailableError when the database is away and a candidate is not cached."""
    tokenizer = _text_tokenizer(engine)
    active = engine.keyring.active
    # Phone spans as the tokenizer sees them, and long words: the registry candidates.
    recorder = _Recorder()
    tokenizer.detokenize(note, active, engine.vault, (), recorder)
    phones = list(dict.fromkeys(recorder.asked))
    words = list(dict.fromkeys(_LONG_WORD.findall(note)))
    names = [n for n in record_names if n.strip()]
    await _prefetch(engine, store, Kind.NAME.value, list(dict.fromkeys(names + words)))
    await _prefetch(engine, store, Kind.PHONE.value, phones)

    known: dict[_Pass, set[str]] = {}  # key -> name tokens in this note's reach
    real_names: list[str] = []
    issued: set[int] = set()  # the versions the record's name tokens were issued under
    for name in names:
        rows = engine.registry.lookup(Kind.NAME.value, name)
        if not rows:
            real_names.append(name)  # typed by the agent: its words are not tokens here
            continue
        try:
            real_names.append(engine.detokenize(Kind.NAME.value, name))
        except TokenProxyError:
            continue
        for row in rows:
            known.setdefault(_pass(row), set()).add(name)
            issued.add(row.version)
    for word in words:
        rows = engine.registry.lookup(Kind.NAME.value, word)
        _one_value(engine, Kind.NAME, word, rows)
        for row in rows:
            if row.method.ciphered:
                known.setdefault(_pass(row), set()).add(word)
    # The word tokens the response put in the note: tokens of the real names' words, under
    # the active key and under each key the record's names were issued under (a note
    # tokenized before a rotation holds the old key's).
    real_words = [
        w for w in name_words(real_names) if w not in names and _WORD.fullmatch(w) is not None
    ]
    for version in sorted(issued | {active.version}):
        for token in await _word_tokens(engine, store, real_words, version):
            if token in note:
                rows = engine.registry.lookup(Kind.NAME.value, token)
                _one_value(engine, Kind.NAME, token, rows)
                known.setdefault((version, False), set()).add(token)
                for row in rows:
                    known.setdefault(_pass(row), set()).add(token)
    for phone in phones:
        rows = engine.registry.lookup(Kind.PHONE.value, phone)
        _one_value(engine, Kind.PHONE, phone, rows)
        for row in rows:
            known.setdefault(_pass(row), set())
    result = note
    for version, alternate in sorted(known, reverse=True):
        try:
            key: DataKey = engine.keyring.get(version)
        except KeyringError:
            raise StaleTokenError(
                f"a note holds tokens of key version {version}, which is retired or not "
                "loaded here: reload the record"
            ) from None
        result = tokenizer.detokenize(
            result,
            key.alternate if alternate else key,
            engine.vault,
            sorted(known[version, alternate]),
            _Registered(engine, (version, alternate)),
        )
    return result
