"""The token registry: which tokens this proxy issued, of which kind, under which key.

A format-preserving token cannot say which key made it, and any string of the right format
decrypts to *something*. So a value coming back in a request is a token only if the registry
says so; then its key version says which key resolves it. A value that is not registered is
a real value typed by the agent and passes unchanged. Tokens of a retired key version stop
resolving. The PostgreSQL registry lives in ``proxy.store``; this is the interface and an
in-memory implementation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from proxy.crypto.tokens import IssuedToken, Method


class TokenRegistry(Protocol):
    """Records issued tokens and answers whether a value is one."""

    def record(self, issued: Iterable[IssuedToken]) -> None:
        """Remember tokens before they leave the proxy."""
        ...

    def lookup(self, kind: str, token: str) -> tuple[IssuedToken, ...]:
        """Every registry row of ``token`` (one per key version); empty if not a token."""
        ...


class MemoryRegistry:
    """The registry in a dict, for tests, scripts and the CLI without a database."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], dict[int, IssuedToken]] = {}

    def record(self, issued: Iterable[IssuedToken]) -> None:
        """See :meth:`TokenRegistry.record`."""
        for row in issued:
            self._rows.setdefault((row.kind, row.token), {})[row.version] = row

    def lookup(self, kind: str, token: str) -> tuple[IssuedToken, ...]:
        """See :meth:`TokenRegistry.lookup`."""
        return tuple(self._rows.get((kind, token), {}).values())

    def __len__(self) -> int:
        return len(self._rows)


class AssumedRegistry:
    """Takes every value for a token of one key version, recording nothing.

    For ``tokenproxy detokenize`` without a database, where no registry exists: the admin
    vouches that the input is tokens. Never used by the proxy itself.
    """

    def __init__(self, version: int) -> None:
        self.version = version

    def record(self, issued: Iterable[IssuedToken]) -> None:
        """Nothing is kept."""

    def lookup(self, kind: str, token: str) -> tuple[IssuedToken, ...]:
        """Every value is a token of ``version``."""
        return (IssuedToken(kind, token, self.version, Method.FF1),)
