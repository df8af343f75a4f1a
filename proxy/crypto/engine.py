"""The token engine: one keyring snapshot, the tokenizers of each kind, a vault and a registry.

Both front ends and the CLI go through here. ``tokenize`` makes a token under the active key
and records it in the registry (a token the registry holds as another version's is not
issued again: the value takes its version's alternate token, see `_unshared`);
``detokenize`` accepts only registered tokens, resolves them under the key (version, and
alternate or not) that issued them, and refuses a token two versions disagree on;
``resolve`` is what write-back uses: a registered token becomes its value, anything else is
a value the agent typed and passes unchanged.

The engine is synchronous and does no I/O. A registry or vault backed by a database records
into memory here and is flushed by the caller before any token leaves (see ``proxy.store``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from proxy.crypto.keyring import Keyring
from proxy.crypto.names import NameTokenizer
from proxy.crypto.phones import PhoneTokenizer
from proxy.crypto.registry import TokenRegistry
from proxy.crypto.text import TextTokenizer
from proxy.crypto.tokens import IssuedToken, Kind, Method, Tokenized, Tokenizer
from proxy.crypto.vault import HeldOnly, Unrecorded, Vault
from proxy.errors import InvalidInputError, KeyringError, NotATokenError, VaultMissError

CACHE_SIZE = 100_000


class UnresolvableTokenError(NotATokenError):
    """A token this proxy issued that cannot be resolved here and now. Refuse the request:
    passing it on as typed would store a token as data."""


class AmbiguousTokenError(UnresolvableTokenError):
    """Two key versions issued this token for different values: refuse, never guess."""


class StaleTokenError(UnresolvableTokenError):
    """The token was issued under a key version that is retired, or not loaded in this
    proxy yet (another proxy rotated first)."""


@dataclass(frozen=True, slots=True)
class Resolution:
    """What a value coming back in a request turned out to be."""

    value: str
    was_token: bool


class TokenEngine:
    """Tokenize and resolve values of every kind under one keyring snapshot."""

    def __init__(
        self,
        keyring: Keyring,
        tokenizers: Mapping[str, Tokenizer],
        vault: Vault,
        registry: TokenRegistry,
        *,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self.keyring = keyring
        self.vault = vault
        self.registry = registry
        self._tokenizers = dict(tokenizers)
        self._cache: OrderedDict[tuple[str, str], Tokenized] = OrderedDict()
        self._cache_size = cache_size
        # The same cache as plain value -> token maps per kind, for front ends that look
        # up many values in a tight loop (kept in step with _cache: same entries).
        self._by_kind: dict[str, dict[str, str]] = {}
        self.forgotten = 0  # tokens dropped by `forget` so far

    @classmethod
    def standard(
        cls,
        keyring: Keyring,
        vault: Vault,
        registry: TokenRegistry,
        *,
        default_region: str = "ID",
        cache_size: int = CACHE_SIZE,
    ) -> TokenEngine:
        """The engine with tokenproxy's name, phone and free-text tokenizers."""
        names, phones = NameTokenizer(), PhoneTokenizer(default_region)
        return cls(
            keyring,
            {Kind.NAME: names, Kind.PHONE: phones, Kind.TEXT: TextTokenizer(names, phones)},
            vault,
            registry,
            cache_size=cache_size,
        )

    def with_keyring(self, keyring: Keyring) -> TokenEngine:
        """A new engine on another keyring snapshot, sharing vault and registry."""
        return TokenEngine(
            keyring, self._tokenizers, self.vault, self.registry, cache_size=self._cache_size
        )

    def tokenizer(self, kind: str) -> Tokenizer:
        """The tokenizer of a kind; an unknown kind is an error, never a pass-through."""
        try:
            return self._tokenizers[kind]
        except KeyError:
            raise InvalidInputError(f"unknown field kind {kind!r}") from None

    def tokenize(self, kind: str, value: str) -> str:
        """The token of ``value`` under the active key, recorded in the registry."""
        cached = self._cache.get((kind, value))
        if cached is not None:
            self._cache.move_to_end((kind, value))
            return cached.token
        key = self.keyring.active
        result = self._unshared(kind, value, self.tokenizer(kind).tokenize(value, key, self.vault))
        self.registry.record(self._issued(kind, result, key.version))
        self._remember((kind, value), result)
        return result.token

    def cached_token(self, kind: str, value: str) -> str | None:
        """The token of ``value`` if this engine issued it recently (its cache); else None.

        A cached token was recorded when it was issued: a front end may send it without
        going through the store again."""
        return self._by_kind.get(kind, {}).get(value)

    def token_lookup(self, kind: str) -> Callable[[str], str | None]:
        """`cached_token` for one kind, as a bound ``dict.get`` (for tight loops)."""
        return self._by_kind.setdefault(kind, {}).get

    def tokenize_many(self, kind: str, values: Sequence[str]) -> list[str]:
        """Tokens of many values of one kind (the tokenizer batches FF1 where it can)."""
        key = self.keyring.active
        out: list[str | None] = []
        missing: dict[str, list[int]] = {}
        for i, value in enumerate(values):
            cached = self._cache.get((kind, value))
            out.append(cached.token if cached is not None else None)
            if cached is None:
                missing.setdefault(value, []).append(i)
        if missing:
            tokenizer = self.tokenizer(kind)
            batch = getattr(tokenizer, "tokenize_many", None)
            fresh = list(missing)
            if batch is not None:
                results: list[Tokenized] = batch(fresh, key, self.vault)
            else:
                results = [tokenizer.tokenize(v, key, self.vault) for v in fresh]
            results = [self._unshared(kind, v, r) for v, r in zip(fresh, results, strict=True)]
            issued: list[IssuedToken] = []
            for value, result in zip(fresh, results, strict=True):
                issued.extend(self._issued(kind, result, key.version))
                self._remember((kind, value), result)
                for i in missing[value]:
                    out[i] = result.token
            self.registry.record(issued)
        return [t for t in out if t is not None]

    def tokenize_text(self, value: str, known_names: Sequence[str] = ()) -> str:
        """A free-text note with its phones and the record's known names tokenized, exactly
        as the structured fields are; the tokens inside are recorded in the registry."""
        text = self.tokenizer(Kind.TEXT)
        if not isinstance(text, TextTokenizer):
            raise InvalidInputError("this engine has no free-text tokenizer")
        key = self.keyring.active
        result = text.tokenize(value, key, self.vault, known_names, self._unshared)
        self.registry.record(self._issued(Kind.TEXT, result, key.version))
        return result.token

    def detokenize(self, kind: str, token: str) -> str:
        """The value behind a token this proxy issued.

        Raises :class:`NotATokenError` for a value the registry does not know, and
        :class:`UnresolvableTokenError` for a registered token that cannot be resolved
        exactly: one of its key versions is retired or not loaded here, the versions
        disagree, or its vault entry is missing.
        """
        rows = self.registry.lookup(kind, token)
        if not rows:
            raise NotATokenError(f"not a {kind} token issued by this proxy")
        tokenizer = self.tokenizer(kind)
        values = set()
        for row in rows:
            try:
                key = self.keyring.get(row.version)
            except KeyringError:
                raise StaleTokenError(
                    f"{kind} token was issued under key version {row.version}, which is "
                    "retired or not loaded in this proxy: reload the record (or the keys)"
                ) from None
            if row.method is Method.ALTERNATE:
                key = key.alternate
            try:
                values.add(tokenizer.detokenize(token, key, self.vault))
            except NotATokenError as exc:
                raise UnresolvableTokenError(
                    f"{kind} token of key version {row.version} cannot be resolved: {exc}"
                ) from None
        if len(values) > 1:
            raise AmbiguousTokenError(
                f"{kind} token was issued under several key versions for different values; "
                "reload the record to get a current token"
            )
        return values.pop()

    def resolve(self, kind: str, value: str) -> Resolution:
        """Write-back: a registered token becomes its value; any other value passes as typed;
        a registered token that cannot be resolved raises (see :meth:`detokenize`)."""
        try:
            return Resolution(self.detokenize(kind, value), True)
        except UnresolvableTokenError:
            raise
        except NotATokenError:
            return Resolution(value, False)

    def forget(self, kind: str, value: str) -> None:
        """Drop a cached token (the vault lost a race to another proxy and took its token).
        Counted in `forgotten`: a copy of the cache made elsewhere is stale after one."""
        self._cache.pop((kind, value), None)
        self._by_kind.get(kind, {}).pop(value, None)
        self.forgotten += 1

    def candidates(self, kind: str, values: Sequence[str]) -> list[str]:
        """The FF1 tokens the active key would give the values not cached yet, with no
        vault token drawn and nothing recorded: what `_unshared` will look up (a caller
        with a database loads their registry rows first). Empty with one key version.
        (An alternate token's rows are not asked for: another proxy's row of it is the
        same value's, and any other would be a collision of two collisions.)"""
        if len(self.keyring.keys) < 2:
            return []
        key, tokenizer, draws = self.keyring.active, self.tokenizer(kind), HeldOnly(self.vault)
        out: list[str] = []
        for value in dict.fromkeys(values):
            if (kind, value) in self._cache:
                continue
            try:
                result = tokenizer.tokenize(value, key, draws)
            except (VaultMissError, InvalidInputError):
                continue  # (a vault token: unique across versions; or nothing to issue)
            if result.method is Method.FF1 and not result.pieces:
                out.append(result.token)
        return out

    def text_candidates(
        self, items: Sequence[tuple[str, Sequence[str]]]
    ) -> dict[str, list[str]]:
        """`candidates` of notes: per kind, the FF1 tokens the active key would give the
        pieces of each ``(note, known names)`` (its phones, names, their words and
        casings), with nothing drawn or recorded. Empty with one key version."""
        if len(self.keyring.keys) < 2:
            return {}
        text = self.tokenizer(Kind.TEXT)
        if not isinstance(text, TextTokenizer):
            raise InvalidInputError("this engine has no free-text tokenizer")
        out: dict[str, dict[str, None]] = {}

        def collect(kind: str, value: str, result: Tokenized) -> Tokenized:
            if result.method is Method.FF1 and not result.pieces:
                out.setdefault(kind, {})[result.token] = None
            return result

        key, dry = self.keyring.active, Unrecorded()
        for value, names in items:
            text.tokenize(value, key, dry, names, collect)
        return {kind: list(tokens) for kind, tokens in out.items()}

    # -- internals ---------------------------------------------------------------------

    def _unshared(self, kind: str, value: str, result: Tokenized) -> Tokenized:
        """``result``, or the value's token under the active version's alternate key when
        the registry holds ``result``'s token as another version's (or another method's):
        two versions' FF1 are two permutations of one domain, and a token they both issued
        could not be resolved (`AmbiguousTokenError`). Vault tokens are unique across
        versions. (A note's pieces too: `tokenize_text`.)"""
        if result.method is not Method.FF1 or result.pieces:
            return result
        key = self.keyring.active
        if not self._taken(kind, result.token, key.version, Method.FF1):
            return result
        other = self.tokenizer(kind).tokenize(value, key.alternate, self.vault)
        if other.method is not Method.FF1 or self._taken(
            kind, other.token, key.version, Method.ALTERNATE
        ):
            return result  # (taken twice: not seen in practice; refused on write-back)
        return Tokenized(other.token, Method.ALTERNATE)

    def _taken(self, kind: str, token: str, version: int, method: Method) -> bool:
        """Whether the registry holds ``token`` otherwise than as ``version``'s ``method``
        (which, for a bijection, is the same value's)."""
        return any(
            row.version != version or row.method is not method
            for row in self.registry.lookup(kind, token)
        )

    @staticmethod
    def _issued(kind: str, result: Tokenized, version: int) -> list[IssuedToken]:
        if result.pieces:
            return list(result.pieces)
        return [IssuedToken(kind, result.token, version, result.method)]

    def _remember(self, key: tuple[str, str], result: Tokenized) -> None:
        self._cache[key] = result
        self._by_kind.setdefault(key[0], {})[key[1]] = result.token
        if len(self._cache) > self._cache_size:
            (kind, value), _ = self._cache.popitem(last=False)
            self._by_kind[kind].pop(value, None)
