"""The short-value vault: tokens for values whose domain is too small for FF1.

FF1 is only secure over at least 10^6 possible values. A mononym ("Budi", "Li") or a
four-digit extension is below that, and a deterministic cipher over so small a domain could
be inverted by encrypting every candidate. Such values get a *random* token of the same
format instead, assigned once per (kind, key version) and reused:

- the token carries no information about the value (it is drawn uniformly from the format,
  and redrawn on collision so that it is unique per kind);
- the value is stored encrypted (AES-256-GCM under a subkey of the data key);
- entries are found by HMAC-SHA256 of (kind, value) under another subkey, never an unkeyed
  hash: a stolen vault table cannot be brute-forced over all names or phone numbers without
  the data key, which never leaves the keyring.

This module defines the interface and an in-memory implementation. The PostgreSQL one
(shared by every proxy, so that two proxies agree on one token) lives in ``proxy.store``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from secrets import token_bytes
from typing import Protocol

from Crypto.Cipher import AES

from proxy.crypto.keyring import DataKey, Keyring
from proxy.errors import KeyringError, NotATokenError, VaultMissError

MAX_DRAWS = 64  # redraws before giving up on a random token (only a nearly full format fails)
NONCE = 12


class Vault(Protocol):
    """Assigns and resolves random tokens for short values."""

    def token_for(
        self, kind: str, value: str, key: DataKey, draw: Callable[[], str]
    ) -> str:
        """The token already assigned to (kind, value) under ``key``, or a new one from
        ``draw`` (a random token of the value's format), unique among the kind's tokens.
        Raises :class:`VaultMissError` when no token can be assigned."""
        ...

    def value_for(self, kind: str, token: str, keyring: Keyring) -> str:
        """The value behind a vault token. Raises :class:`NotATokenError` if unknown or
        if its key version is retired."""
        ...


class HeldOnly:
    """A vault's tokens as it holds them, none drawn: tokens looked up (an older key's, or
    the ones a value would get), never issued."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    def token_for(self, kind: str, value: str, key: DataKey, draw: Callable[[], str]) -> str:
        """The token held for the value under ``key``; VaultMissError if none."""
        return self.vault.token_for(kind, value, key, _no_draw)

    def value_for(self, kind: str, token: str, keyring: Keyring) -> str:
        """See :meth:`Vault.value_for`."""
        return self.vault.value_for(kind, token, keyring)


class Unrecorded:
    """Throwaway draws, nothing held or stored: a dry run's vault, for which only the FF1
    tokens of the run matter (`TokenEngine.text_candidates`)."""

    def token_for(self, kind: str, value: str, key: DataKey, draw: Callable[[], str]) -> str:
        return draw()

    def value_for(self, kind: str, token: str, keyring: Keyring) -> str:
        raise NotATokenError("a dry run's vault resolves nothing")


def _no_draw() -> str:
    raise VaultMissError("no token of this value is held under this key version")


def fresh_token(
    kind: str, value: str, draw: Callable[[], str], taken: Callable[[str], bool]
) -> str:
    """A new random token for ``value`` from ``draw``: not ``taken``, and never the value
    itself (a two-letter name has a 1 in 676 chance of drawing itself, a one-letter name 1
    in 26), unless every draw gives the value: a format with nothing random in it, which
    hides nothing either way. Raises :class:`VaultMissError` when none is free."""
    only_itself = True
    for _ in range(MAX_DRAWS):
        token = draw()
        if token == value:
            continue
        only_itself = False
        if not taken(token):
            return token
    if only_itself and not taken(value):
        return value
    raise VaultMissError(f"no free {kind} token of this format is left in the vault")


def vault_index(kind: str, value: str, key: DataKey) -> bytes:
    """The keyed lookup index of a value: HMAC over (kind, value), never a bare hash."""
    return key.mac(kind.encode() + b"\x00" + value.encode("utf-8", "surrogatepass"))


def seal(value: str, kind: str, key: DataKey) -> bytes:
    """AES-256-GCM ciphertext of a vault value (nonce || ciphertext || tag), bound to kind."""
    nonce = token_bytes(NONCE)
    cipher = AES.new(key.seal_key, AES.MODE_GCM, nonce=nonce)
    cipher.update(kind.encode())
    body, tag = cipher.encrypt_and_digest(value.encode("utf-8", "surrogatepass"))
    return nonce + body + tag


def unseal(sealed: bytes, kind: str, key: DataKey) -> str:
    """Inverse of :func:`seal`; a tampered entry raises :class:`NotATokenError`."""
    cipher = AES.new(key.seal_key, AES.MODE_GCM, nonce=sealed[:NONCE])
    cipher.update(kind.encode())
    try:
        plain = cipher.decrypt_and_verify(sealed[NONCE:-16], sealed[-16:])
    except ValueError:
        raise NotATokenError("vault entry failed authentication") from None
    return plain.decode("utf-8", "surrogatepass")


@dataclass(frozen=True, slots=True)
class VaultEntry:
    """One vault row: the token, its key version, and the sealed value."""

    kind: str
    token: str
    version: int
    sealed: bytes


class MemoryVault:
    """The vault in a dict: for tests, scripts and a proxy without a database."""

    def __init__(self) -> None:
        self._by_index: dict[tuple[int, bytes], VaultEntry] = {}
        self._by_token: dict[tuple[str, str], VaultEntry] = {}

    def token_for(
        self, kind: str, value: str, key: DataKey, draw: Callable[[], str]
    ) -> str:
        """See :meth:`Vault.token_for`."""
        index = (key.version, vault_index(kind, value, key))
        entry = self._by_index.get(index)
        if entry is not None:
            return entry.token
        token = fresh_token(kind, value, draw, lambda t: (kind, t) in self._by_token)
        entry = VaultEntry(kind, token, key.version, seal(value, kind, key))
        self._by_index[index] = entry
        self._by_token[(kind, token)] = entry
        return token

    def value_for(self, kind: str, token: str, keyring: Keyring) -> str:
        """See :meth:`Vault.value_for`."""
        entry = self._by_token.get((kind, token))
        if entry is None:
            raise NotATokenError(f"{kind} token is not in the vault")
        try:
            key = keyring.get(entry.version)
        except KeyringError as exc:
            raise NotATokenError(str(exc)) from None
        return unseal(entry.sealed, kind, key)

    def __len__(self) -> int:
        return len(self._by_token)
