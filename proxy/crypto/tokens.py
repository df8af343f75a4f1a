"""What every tokenizer promises, and the record of a token once issued."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from proxy.crypto.keyring import DataKey
from proxy.crypto.vault import Vault


class Kind(StrEnum):
    """The field kinds tokenproxy protects. The kind is part of every FF1 tweak."""

    NAME = "name"
    PHONE = "phone"
    TEXT = "text"


class Method(StrEnum):
    """How a token was made: FF1 over a large enough domain, or the short-value vault."""

    FF1 = "ff1"
    VAULT = "vault"
    MIXED = "mixed"  # several pieces, some of each (digit runs of an unparseable phone)
    ALTERNATE = "ff1-alt"  # FF1 under the version's alternate key (`DataKey.alternate`)

    @property
    def ciphered(self) -> bool:
        """Made by FF1 alone (under either key of its version): no vault row behind it."""
        return self is Method.FF1 or self is Method.ALTERNATE


@dataclass(frozen=True, slots=True)
class Tokenized:
    """A token and how it was made. ``pieces`` lists the tokens inside a free-text token."""

    token: str
    method: Method
    pieces: tuple[IssuedToken, ...] = ()


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """One row of the token registry: this token, of this kind, was made under this key."""

    kind: str
    token: str
    version: int
    method: Method


class Tokenizer(Protocol):
    """A format-preserving, deterministic, reversible transform of one field kind."""

    kind: Kind

    def tokenize(self, value: str, key: DataKey, vault: Vault) -> Tokenized:
        """The token of ``value`` under ``key``; short values go through ``vault``."""
        ...

    def detokenize(self, token: str, key: DataKey, vault: Vault) -> str:
        """The value whose token under ``key`` is ``token``."""
        ...
