"""The cancel keys the proxy gives clients, each standing for the upstream's real key.

A client cancels a query on a new connection, with the key from its session's
BackendKeyData. The proxy gives every session a key of its own (the real pid when free, a
fresh secret of the real one's length) and keeps what it stands for here::

    cancels = CancelRegistry(shared=CancelKeyTable(pool))   # shared: optional
    key = await cancels.issue(CancelTarget(host, port, pid, secret))  # sent to the client
    target = await cancels.find(pid, secret, tls_context)   # a CancelRequest came in
    cancels.release(key)                                    # the session ended
    await cancels.close()                                   # the listener stops

With ``shared`` (`proxy.store.cancel_keys`, one table for every proxy) the key is also
recorded for the other proxies before the client gets it, and a key this proxy did not
issue is looked up there: behind a load balancer, the cancel's connection lands on any
proxy. The shared table failing never stops a session: its cancels then go through its own
proxy only, and a warning says so; the sessions of the next few seconds do not wait on the
table again.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import structlog

from proxy.pg.messages import BackendKeyData
from proxy.store.cancel_keys import CancelKeyTable, SharedCancelKey
from proxy.store.db import StoreError

__all__ = ["CancelRegistry", "CancelTarget"]

log = structlog.get_logger("tokenproxy.pg")

_MAX_PID: Final = 2**31 - 1
_SHARE_ATTEMPTS: Final = 4  # pids tried in the shared table before a key stays local
_MAX_FINDING: Final = 4  # shared look-ups at once; more cancels of unknown keys are dropped
_CLOSE_TIMEOUT: Final = 5.0
_PAUSE: Final = 5.0  # seconds keys stay local after the shared table failed (no wait each)


@dataclass(frozen=True, slots=True)
class CancelTarget:
    """Where a session's query runs: the upstream, and the key its server issued."""

    host: str
    port: int
    pid: int
    secret_key: bytes = field(repr=False)
    tls_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)


class CancelRegistry:
    """The keys this proxy issued (and, with ``shared``, every proxy's)."""

    def __init__(self, shared: CancelKeyTable | None = None) -> None:
        self.shared = shared
        self._entries: dict[int, tuple[bytes, CancelTarget]] = {}
        self._recorded: set[int] = set()  # the pids in the shared table
        self._drops: set[asyncio.Task[None]] = set()
        self._finding = 0
        self._paused_until = 0.0  # (monotonic) a failed `put` spares the next sessions its wait

    def __len__(self) -> int:
        return len(self._entries)

    async def issue(self, target: CancelTarget) -> BackendKeyData:
        """A new key for ``target``: its pid when free (here and, with ``shared``, on
        every proxy), and a fresh secret of its length."""
        key = self._issue(target, target.pid)
        if self.shared is None or time.monotonic() < self._paused_until:
            return key
        real = SharedCancelKey(target.host, target.port, target.pid, target.secret_key,
                               tls=target.tls_context is not None)
        for _ in range(_SHARE_ATTEMPTS):
            try:
                if await self.shared.put(key.pid, key.secret_key, real):
                    self._recorded.add(key.pid)
                    return key
            except StoreError as exc:
                self._paused_until = time.monotonic() + _PAUSE
                log.warning("pg.cancel_key_not_shared", pid=key.pid, reason=type(exc).__name__,
                            paused_s=_PAUSE)
                return key
            except BaseException:  # the start-up was cancelled: the key was never given
                self._forget(key)
                raise
            self._forget(key)  # another proxy's session has this pid: a random one
            key = self._issue(target, 0)
        log.warning("pg.cancel_key_not_shared", pid=key.pid, reason="every pid tried was taken")
        return key

    def _issue(self, target: CancelTarget, pid: int) -> BackendKeyData:
        while pid in self._entries or not 0 < pid <= _MAX_PID:
            pid = secrets.randbelow(_MAX_PID) + 1
        key = secrets.token_bytes(len(target.secret_key))
        self._entries[pid] = (key, target)
        return BackendKeyData(pid, key)

    def lookup(self, pid: int, secret_key: bytes) -> CancelTarget | None:
        """The target of a key this proxy issued, or None; the secret is compared in
        constant time."""
        entry = self._entries.get(pid)
        if entry is None:
            return None
        key, target = entry
        return target if hmac.compare_digest(key, secret_key) else None

    async def find(
        self, pid: int, secret_key: bytes, tls_context: Callable[[], ssl.SSLContext]
    ) -> CancelTarget | None:
        """The target of a key this proxy or (with ``shared``) another one issued, or None.
        ``tls_context``: for an upstream another proxy reached over TLS."""
        target = self.lookup(pid, secret_key)
        if target is not None or self.shared is None:
            return target
        if self._finding >= _MAX_FINDING:  # a flood of unknown keys must not take the pool
            log.warning("pg.cancel_dropped", pid=pid, reason="too many look-ups at once")
            return None
        self._finding += 1
        try:
            found = await self.shared.find(pid, secret_key)
        except StoreError as exc:
            log.warning("pg.cancel_lookup_failed", pid=pid, reason=type(exc).__name__)
            return None
        finally:
            self._finding -= 1
        if found is None:
            return None
        return CancelTarget(found.host, found.port, found.pid, found.secret_key,
                            tls_context() if found.tls else None)

    def release(self, key: BackendKeyData) -> None:
        """Forget an issued key (the session ended); its shared row, if it has one, goes
        in the background."""
        entry = self._entries.get(key.pid)
        if entry is None or not hmac.compare_digest(entry[0], key.secret_key):
            return
        self._forget(key)
        if key.pid in self._recorded:
            self._recorded.discard(key.pid)
            task = asyncio.get_running_loop().create_task(self._drop(key))
            self._drops.add(task)
            task.add_done_callback(self._drops.discard)

    def _forget(self, key: BackendKeyData) -> None:
        del self._entries[key.pid]

    async def _drop(self, key: BackendKeyData) -> None:
        assert self.shared is not None
        try:
            await self.shared.drop(key.pid, key.secret_key)
        except StoreError as exc:
            log.warning("pg.cancel_key_not_dropped", pid=key.pid, reason=type(exc).__name__)

    async def close(self) -> None:
        """Wait for the shared rows being dropped, then drop this proxy's others (of
        sessions still open). Never raises."""
        if self.shared is None:
            return
        if self._drops:
            await asyncio.wait(set(self._drops), timeout=_CLOSE_TIMEOUT)
        try:
            left = await self.shared.drop_instance()
        except StoreError as exc:
            log.warning("pg.cancel_keys_not_dropped", reason=type(exc).__name__)
            return
        if left:
            log.info("pg.cancel_keys_dropped", keys=left)
