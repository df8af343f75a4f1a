"""The immutable keyring: versioned data keys, their states, and the subkeys derived from them.

A running proxy holds one :class:`Keyring` and swaps in a new one atomically on rotation;
every request takes one snapshot. Nothing here reads or writes files (that is
``proxy.keystore``); nothing here ever prints key material.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from hashlib import sha256

from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF

from proxy.crypto.ff1 import FF1
from proxy.errors import KeyringError

DATA_KEY_BYTES = 32


class KeyState(StrEnum):
    """A data key's life: new tokens, old tokens only, or nothing at all."""

    ACTIVE = "active"
    DECRYPT_ONLY = "decrypt-only"
    RETIRED = "retired"


@dataclass(frozen=True, eq=False)
class DataKey:
    """One version of the data key. The material never appears in repr or logs."""

    version: int
    material: bytes = field(repr=False)
    state: KeyState = KeyState.ACTIVE
    created_at: str = ""
    _ff1: dict[int, FF1] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.material) != DATA_KEY_BYTES:
            raise KeyringError(f"data key v{self.version} must be {DATA_KEY_BYTES} bytes")
        if self.version < 1:
            raise KeyringError("key versions start at 1")

    def subkey(self, purpose: str) -> bytes:
        """A 32-byte key for one purpose (HKDF-SHA256), so no two uses share a key."""
        out = HKDF(self.material, 32, b"tokenproxy/v1", SHA256, context=purpose.encode())
        assert isinstance(out, bytes)
        return out

    @cached_property
    def ff1_key(self) -> bytes:
        """The AES-256 key under which FF1 tokens are made."""
        return self.subkey("ff1")

    @cached_property
    def mac_key(self) -> bytes:
        """The HMAC key that indexes the short-value vault."""
        return self.subkey("vault-mac")

    @cached_property
    def seal_key(self) -> bytes:
        """The AES-GCM key that encrypts values held in the vault."""
        return self.subkey("vault-seal")

    def ff1(self, radix: int) -> FF1:
        """The (cached) FF1 cipher of this key for a radix."""
        cipher = self._ff1.get(radix)
        if cipher is None:
            cipher = self._ff1[radix] = FF1(self.ff1_key, radix)
        return cipher

    def mac(self, data: bytes) -> bytes:
        """Keyed HMAC-SHA256 of data under this key's vault MAC key."""
        return hmac.new(self.mac_key, data, sha256).digest()

    def with_state(self, state: KeyState) -> DataKey:
        """A copy of this key in another state."""
        return DataKey(self.version, self.material, state, self.created_at)

    @cached_property
    def alternate(self) -> DataKey:
        """This version's second key (derived: nothing more to keep): its FF1 token of a
        value stands in for the first key's when another version issued that token too
        (`proxy.crypto.engine`)."""
        return DataKey(self.version, self.subkey("alternate"), self.state, self.created_at)


@dataclass(frozen=True)
class Keyring:
    """An immutable set of data key versions with exactly one active version."""

    keys: tuple[DataKey, ...]

    def __post_init__(self) -> None:
        versions = [k.version for k in self.keys]
        if len(set(versions)) != len(versions):
            raise KeyringError("the keyring holds a key version twice")
        active = [k for k in self.keys if k.state is KeyState.ACTIVE]
        if len(active) != 1:
            raise KeyringError(
                f"the keyring must have exactly one active key, it has {len(active)}: "
                "run `tokenproxy keys rotate` or restore keys/"
            )

    @cached_property
    def _by_version(self) -> dict[int, DataKey]:
        return {k.version: k for k in self.keys}

    @cached_property
    def active(self) -> DataKey:
        """The key that makes new tokens."""
        return next(k for k in self.keys if k.state is KeyState.ACTIVE)

    def get(self, version: int) -> DataKey:
        """A key that may still decrypt: active or decrypt-only; retired and unknown refuse."""
        key = self._by_version.get(version)
        if key is None:
            raise KeyringError(f"key version {version} is not in the keyring")
        if key.state is KeyState.RETIRED:
            raise KeyringError(f"key version {version} is retired")
        return key

    def usable(self) -> tuple[DataKey, ...]:
        """Every key that may still decrypt, newest first."""
        live = [k for k in self.keys if k.state is not KeyState.RETIRED]
        return tuple(sorted(live, key=lambda k: k.version, reverse=True))

    @classmethod
    def single(cls, material: bytes, version: int = 1) -> Keyring:
        """A one-key keyring, for tests and scripts."""
        return cls((DataKey(version, material),))
