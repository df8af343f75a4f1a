"""The running proxy: what ``tokenproxy serve`` builds, serves, reloads and drains.

:meth:`Runtime.open` wires everything together from the config file:

1. the config (:func:`proxy.config.load_config`, environment overrides applied);
2. the KEK (``--kek-file``, else ``keys.kek_file``, else ``TOKENPROXY_KEK``), held in memory
   for the life of the process so that the keyring can be re-read without it being given
   again, and the keyring (``--keys``, else ``keys.dir``);
3. the HTTP settings (secrets read from the variables the ``*_env`` keys name);
4. the store (:func:`proxy.store.open_store`, migrating first when
   ``database.migrate_on_start``). **A database that does not answer at start-up does not
   stop the proxy**: tokenization goes on from the keys in memory (issued tokens queue),
   reveals are denied, ``/readyz`` says ``"store": "degraded"``, and a background task
   retries until the database answers, checks (or migrates) the schema and only then starts
   the store's health loop and the tickets listener. Any other database problem (wrong
   password, no such database, wrong schema without ``migrate_on_start``) is a
   configuration mistake and stops the start;
5. the tickets store, the audit log, the token engine over the store's registry and vault,
   the Prometheus metrics, the front end's :class:`~proxy.http.app.HttpContext`, and the
   admin API (:func:`proxy.admin.app.build_admin_app`).

:meth:`Runtime.run` listens on ``http.listen`` and ``admin.listen`` and serves until
SIGTERM or SIGINT, then drains (:meth:`Runtime.shutdown`): ``/readyz`` turns 503, the front
end stops accepting and finishes the requests in flight (up to ``drain_timeout``), the
tickets listener stops, the store writes what it has queued and closes its pool, and the
admin listener closes last. The exit status is 0 when every queued row was written, 1 when
rows were left (the log says how many). SIGHUP reloads the keyring and the policy.

**Reloads.** :meth:`Runtime.reload_keyring` re-reads ``keys/`` with the KEK held in memory
and swaps a new engine in atomically (requests running keep their snapshot); a changed
keyring writes one audit row (``key_rotate`` when the active version changed, else
``key_retire`` when a version was retired, else ``key_reload``). A keyring that does not
load (corrupt file, rewrapped under another KEK) keeps the old one.
:meth:`Runtime.reload_policy` re-reads the config file and applies what can change while
running (see :data:`RELOADABLE`); a file with problems keeps the old settings and raises
:class:`ReloadError` with them. Keys read only at start-up (listen addresses, upstream,
timeouts, TLS, the database, keys, tokens, pg, logging) are reported as
``restart_required``. An applied change writes a ``policy_reload`` audit row.
Reloads run one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import os
import random
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import structlog
from aiohttp import web

from proxy import keystore
from proxy.admin.metrics import ProxyMetrics
from proxy.admin.pg_listener import PgListener
from proxy.config import AdminToken, Config, ConfigError, load_config, secret
from proxy.crypto.engine import TokenEngine
from proxy.crypto.keyring import Keyring, KeyState
from proxy.errors import KeyStoreError, TokenProxyError
from proxy.http.app import HttpContext, build_app, ssl_context_for
from proxy.http.settings import HttpSettings, settings_from_config
from proxy.store.audit import AuditEntry, AuditLog
from proxy.store.db import (
    DEFAULT_TIMEOUT,
    DatabaseUnavailableError,
    describe_dsn,
    is_unavailable,
)
from proxy.store.durable import Store, open_store
from proxy.store.migrations import check_schema, migrate
from proxy.store.tickets import TicketStore

__all__ = [
    "RELOADABLE",
    "AdminSettings",
    "KeyringReload",
    "PolicyReload",
    "ReloadError",
    "Runtime",
    "RuntimeOptions",
    "RuntimeState",
]

log = structlog.get_logger("tokenproxy.runtime")

RELOADABLE = frozenset(
    {
        "identity",
        "justification",
        "defaults",
        "budget",
        "tickets",
        "http.routes",
        "http.max_body_bytes",
        "http.reserved_prefix",
        "admin.tokens",
        "admin.metrics_public",
    }
)
"""Config keys a policy reload applies; a change anywhere else needs a restart."""

Address = tuple[str, int]


class RuntimeState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


class ReloadError(TokenProxyError):
    """A reload found problems and changed nothing; ``problems`` lists them."""

    def __init__(self, what: str, problems: list[str]) -> None:
        self.what = what
        self.problems = problems
        super().__init__(f"{what} reload refused, nothing changed: " + "; ".join(problems))


@dataclass(frozen=True)
class RuntimeOptions:
    """How to start. ``keys_dir``/``kek_file`` override the config (``serve --keys``,
    ``--kek-file``); ``http_listen``/``admin_listen``/``pg_listen`` override the listen
    addresses (port 0: any free port; for tests). ``env`` is where secrets and overrides are
    read (default: the process environment)."""

    config_path: Path
    keys_dir: Path | None = None
    kek_file: Path | None = None
    env: Mapping[str, str] | None = None
    config: Config | None = None  # already loaded from config_path (serve loads it first)
    drain_timeout: float = 10.0
    health_interval: float = 1.0
    health_min_backoff: float = 0.1
    health_max_backoff: float = 10.0
    http_listen: Address | None = None
    admin_listen: Address | None = None
    pg_listen: Address | None = None
    handle_signals: bool = True


@dataclass(frozen=True)
class AdminSettings:
    """The reloadable part of ``[admin]``."""

    tokens: tuple[AdminToken, ...] = ()
    metrics_public: bool = True


@dataclass(frozen=True)
class KeyringReload:
    """What a keyring reload did (versions only)."""

    changed: bool
    action: str | None
    active: int
    previous_active: int
    added: tuple[int, ...] = ()
    retired: tuple[int, ...] = ()
    states: dict[int, str] = field(default_factory=dict)
    audited: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "action": self.action,
            "active": self.active,
            "previous_active": self.previous_active,
            "added": list(self.added),
            "retired": list(self.retired),
            "versions": {str(v): s for v, s in sorted(self.states.items())},
            "audited": self.audited,
        }


@dataclass(frozen=True)
class PolicyReload:
    """What a policy reload applied, and what it could not (needs a restart)."""

    applied: tuple[str, ...]
    restart_required: tuple[str, ...]
    audited: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.applied)

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "applied": list(self.applied),
            "restart_required": list(self.restart_required),
            "audited": self.audited,
        }


def _split_listen(listen: str) -> Address:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def database_dsn(config: Config, env: Mapping[str, str]) -> str:
    """``database.url`` with the password from ``database.password_env`` when the URL has
    none (the driver scrubs it from every error message)."""
    url = config.database.url
    parts = urlsplit(url)
    password = secret(config.database.password_env, env)
    if parts.password is not None or password is None:
        return url
    user = quote(parts.username or "", safe="")
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


def _keyring_states(keyring: Keyring) -> dict[int, str]:
    return {k.version: str(k.state) for k in keyring.keys}


def _config_changes(old: Config, new: Config) -> list[str]:
    """The config keys (sections, and single keys of [http] and [admin]) that differ."""
    out: list[str] = []
    for f in dataclasses.fields(Config):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if f.name in ("http", "admin"):
            out.extend(
                f"{f.name}.{g.name}"
                for g in dataclasses.fields(a)
                if getattr(a, g.name) != getattr(b, g.name)
            )
        elif a != b:
            out.append(f.name)
    return out


class Runtime:
    """One running proxy: config, keys, store, front end, admin API. See the module notes."""

    def __init__(
        self,
        options: RuntimeOptions,
        config: Config,
        kek: bytes,
        keys_dir: Path,
        store: Store,
        tickets: TicketStore,
        audit: AuditLog,
        ctx: HttpContext,
        metrics: ProxyMetrics,
        *,
        schema_ready: bool,
    ) -> None:
        self.options = options
        self.config = config
        self._kek = kek  # never logged, never shown; kek_id names it
        self.keys_dir = keys_dir
        self.store = store
        self.tickets = tickets
        self.audit = audit
        self.ctx = ctx
        self.metrics = metrics
        self.admin = AdminSettings(config.admin.tokens, config.admin.metrics_public)
        self.state = RuntimeState.STARTING
        self.schema_ready = schema_ready
        self.started_at = datetime.now(UTC)
        self.keyring_loaded_at = self.started_at
        self.policy_loaded_at = self.started_at
        self.addresses: dict[str, list[Address]] = {}
        self._reload_lock = asyncio.Lock()
        self._bootstrap: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._proxy_runner: web.AppRunner | None = None
        self._admin_runner: web.AppRunner | None = None
        self.pg: PgListener | None = None
        if config.pg.enabled:
            self.pg = PgListener(
                config.pg,
                os.environ if options.env is None else options.env,
                engine=lambda: ctx.engines.current,
                store=store,
                tickets=tickets,
                audit=audit,
                limits=lambda: ctx.settings.current.budget,
            )
        self._shutdown: asyncio.Task[bool] | None = None
        metrics.watch(
            store=self._store_snapshot, keyring=lambda: self.keyring, state=lambda: self.state
        )

    # ------------------------------------------------------------------ opening

    @classmethod
    async def open(cls, options: RuntimeOptions) -> Runtime:
        """Load everything and connect (or start degraded); nothing listens yet."""
        env = os.environ if options.env is None else options.env
        config = options.config
        if config is None:
            config = await asyncio.to_thread(load_config, options.config_path, env)
        keys_dir = options.keys_dir or Path(config.keys.dir)
        kek_file = options.kek_file or (
            Path(config.keys.kek_file) if config.keys.kek_file else None
        )
        kek = keystore.resolve_kek(kek_file, env, keys_dir=keys_dir)
        keyring = await asyncio.to_thread(keystore.load_keyring, keys_dir, kek)
        try:
            settings = await asyncio.to_thread(_settings, config, env, None)
        except OSError as exc:
            raise TokenProxyError(
                f"cannot read {exc.filename or 'a file the config names'}: "
                f"{exc.strerror or exc}"
            ) from None

        dsn = database_dsn(config, env)
        db = config.database
        try:
            store = await open_store(
                dsn,
                run_migrations=db.migrate_on_start,
                min_size=db.pool_min,
                max_size=db.pool_max,
                timeout=db.connect_timeout,
                start=False,
            )
            schema_ready = True
        except DatabaseUnavailableError as exc:
            store = await _degraded_store(dsn, db.pool_max, db.connect_timeout, exc)
            schema_ready = False
        try:
            runtime = await cls._assemble(options, config, kek, keys_dir, keyring, settings,
                                          store, schema_ready)
        except BaseException:
            await store.close(timeout=1.0)
            raise
        log.info(
            "runtime.opened",
            config=str(options.config_path),
            keys=str(keys_dir),
            kek_id=keystore.kek_id(kek),
            active_key=keyring.active.version,
            database=store.where,
            store="ok" if schema_ready else "degraded",
            routes=len(config.http.routes),
        )
        return runtime

    @classmethod
    async def _assemble(
        cls,
        options: RuntimeOptions,
        config: Config,
        kek: bytes,
        keys_dir: Path,
        keyring: Keyring,
        settings: HttpSettings,
        store: Store,
        schema_ready: bool,
    ) -> Runtime:
        health = store.health
        health.interval = options.health_interval
        health.min_backoff = options.health_min_backoff
        health.max_backoff = options.health_max_backoff

        tickets = TicketStore(store.pool, cache_ttl=config.tickets.cache_ttl)
        audit = AuditLog(store.pool)
        engine = TokenEngine.standard(
            keyring,
            store.vault,
            store.registry,
            default_region=config.tokens.default_region,
            cache_size=max(1, config.tokens.cache_size),
        )
        metrics = ProxyMetrics()
        ctx = HttpContext.create(
            settings, engine, store=store, tickets=tickets, audit=audit, metrics=metrics
        )
        health.on_lost = ctx.on_vault_lost
        runtime = cls(
            options, config, kek, keys_dir, store, tickets, audit, ctx, metrics,
            schema_ready=schema_ready,
        )
        ctx.reload = runtime._reload_from_signal
        if schema_ready:
            store.start()
            await tickets.start()
        else:
            runtime._bootstrap = asyncio.create_task(
                runtime._wait_for_database(), name="tokenproxy-store-bootstrap"
            )
        return runtime

    async def _wait_for_database(self) -> None:
        """Degraded start: retry until the database answers, then check (or migrate) the
        schema and start the health loop and the tickets listener."""
        backoff = self.options.health_min_backoff
        pool = self.store.pool
        while True:
            try:
                if self.config.database.migrate_on_start:
                    await migrate(pool)
                await check_schema(pool)
                break
            except Exception as exc:
                if is_unavailable(exc):
                    self.store.health.report_failure(exc)
                else:
                    log.error(
                        "runtime.database_schema_problem",
                        error=type(exc).__name__,
                        detail=str(exc)[:300],
                    )
                    backoff = self.options.health_max_backoff
            await asyncio.sleep(backoff * (0.5 + random.random()))  # noqa: S311  (jitter)
            backoff = min(backoff * 2, self.options.health_max_backoff)
        self.schema_ready = True
        log.info("runtime.database_ready", database=self.store.where)
        self.store.start()  # its first check writes the queue and reports the database back
        await self.tickets.start()

    # ------------------------------------------------------------------ state

    @property
    def keyring(self) -> Keyring:
        """The keyring in force (of the current engine)."""
        return self.ctx.engines.current.keyring

    @property
    def settings(self) -> HttpSettings:
        return self.ctx.settings.current

    @property
    def kek_id(self) -> str:
        return keystore.kek_id(self._kek)

    @property
    def store_ok(self) -> bool:
        """Whether reveals can be recorded now (database answers, schema checked)."""
        return self.schema_ready and self.store.health.healthy

    def _store_snapshot(self) -> dict[str, Any]:
        snap = self.store.health.snapshot()
        if not self.schema_ready:
            snap["database"] = "unavailable"
        return snap

    def store_status(self) -> dict[str, Any]:
        """The store's part of /healthz and /readyz (no address, no password, no reason
        text: the reason is in the log)."""
        snap = self._store_snapshot()
        snap.pop("reason", None)
        snap["schema_checked"] = self.schema_ready
        snap["tickets_listening"] = self.tickets.listening
        return snap

    # ------------------------------------------------------------------ reloads

    async def reload_keyring(self, *, actor: str, trigger: str) -> KeyringReload:
        """Re-read ``keys/`` with the KEK held in memory; swap a new engine in if it changed."""
        async with self._reload_lock:
            try:
                result = await self._reload_keyring(actor, trigger)
            except ReloadError:
                self.metrics.reload_done("keyring", "error")
                raise
            self.metrics.reload_done("keyring", "changed" if result.changed else "unchanged")
            return result

    async def _reload_keyring(self, actor: str, trigger: str) -> KeyringReload:
        old = self.keyring
        try:
            new = await asyncio.to_thread(keystore.load_keyring, self.keys_dir, self._kek)
        except KeyStoreError as exc:
            log.error("runtime.keyring_reload_failed", trigger=trigger, actor=actor,
                      detail=str(exc))
            raise ReloadError("keyring", [str(exc)]) from None
        before = {k.version: k for k in old.keys}
        replaced = sorted(
            k.version
            for k in new.keys
            if k.version in before
            and not hmac.compare_digest(k.material, before[k.version].material)
        )
        if replaced:
            problem = (
                f"key version(s) {', '.join(map(str, replaced))} in {self.keys_dir}/ hold other "
                "key material than the proxy uses: keys/ was replaced (another keyring, or an "
                "old backup); tokens of those versions would resolve wrong. Restore keys/ or "
                "restart the proxy on purpose"
            )
            log.error("runtime.keyring_reload_failed", trigger=trigger, actor=actor,
                      replaced=replaced)
            raise ReloadError("keyring", [problem])
        missing = sorted(set(before) - {k.version for k in new.keys})
        if missing:
            problem = (
                f"key version(s) {', '.join(map(str, missing))} are gone from "
                f"{self.keys_dir}/: key files are never deleted (retire them instead); "
                "restore them from a backup"
            )
            log.error("runtime.keyring_reload_failed", trigger=trigger, actor=actor,
                      missing=missing)
            raise ReloadError("keyring", [problem])
        old_states, new_states = _keyring_states(old), _keyring_states(new)
        if old_states == new_states:
            log.info("runtime.keyring_unchanged", trigger=trigger, actor=actor,
                     active=old.active.version)
            return KeyringReload(False, None, old.active.version, old.active.version,
                                 states=new_states)
        added = tuple(sorted(set(new_states) - set(old_states)))
        retired = tuple(
            sorted(
                v for v, s in new_states.items()
                if s == KeyState.RETIRED and old_states.get(v) != KeyState.RETIRED
            )
        )
        if new.active.version != old.active.version:
            action = "key_rotate"
        elif retired:
            action = "key_retire"
        else:
            action = "key_reload"
        # The swap: one attribute store; requests already running keep their engine.
        self.ctx.swap_engine(self.ctx.engines.current.with_keyring(new))
        self.keyring_loaded_at = datetime.now(UTC)
        detail = {
            "trigger": trigger,
            "active": new.active.version,
            "previous_active": old.active.version,
            "added": list(added),
            "retired": list(retired),
            "versions": {str(v): s for v, s in sorted(new_states.items())},
            "kek_id": self.kek_id,
        }
        audited = await self._audit(action, actor, detail)
        log.info("runtime.keyring_swapped", action=action, actor=actor, audited=audited,
                 **{k: v for k, v in detail.items() if k != "versions"})
        return KeyringReload(True, action, new.active.version, old.active.version, added,
                             retired, new_states, audited)

    async def reload_policy(self, *, actor: str, trigger: str) -> PolicyReload:
        """Re-read the config file and apply what can change while running."""
        async with self._reload_lock:
            try:
                result = await self._reload_policy(actor, trigger)
            except ReloadError:
                self.metrics.reload_done("policy", "error")
                raise
            self.metrics.reload_done("policy", "changed" if result.changed else "unchanged")
            return result

    async def _reload_policy(self, actor: str, trigger: str) -> PolicyReload:
        env = os.environ if self.options.env is None else self.options.env
        path = self.options.config_path
        try:
            text = await asyncio.to_thread(Path(path).read_bytes)
            config = await asyncio.to_thread(load_config, path, env)
            settings = await asyncio.to_thread(_settings, config, env, self.settings)
        except ConfigError as exc:
            problems = [str(p) for p in exc.problems]
            log.error("runtime.policy_reload_refused", trigger=trigger, actor=actor,
                      problems=problems)
            raise ReloadError("policy", problems) from None
        except (OSError, TokenProxyError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            log.error("runtime.policy_reload_refused", trigger=trigger, actor=actor,
                      problems=[reason])
            raise ReloadError("policy", [reason]) from None
        changes = _config_changes(self.config, config)
        applied = tuple(c for c in changes if c in RELOADABLE)
        restart = tuple(c for c in changes if c not in RELOADABLE)
        if restart:
            log.warning("runtime.policy_restart_required", keys=list(restart))
        if not applied:
            log.info("runtime.policy_unchanged", trigger=trigger, actor=actor)
            return PolicyReload((), restart)
        # Keep what is read only at start-up as it is in force, apply the rest.
        kept = dataclasses.replace(
            config,
            keys=self.config.keys,
            database=self.config.database,
            tokens=self.config.tokens,
            pg=self.config.pg,
            logging=self.config.logging,
            http=dataclasses.replace(
                self.config.http,
                routes=config.http.routes,
                max_body_bytes=config.http.max_body_bytes,
                reserved_prefix=config.http.reserved_prefix,
            ),
            admin=dataclasses.replace(
                self.config.admin,
                tokens=config.admin.tokens,
                metrics_public=config.admin.metrics_public,
            ),
        )
        self.ctx.apply_settings(settings)
        self.tickets.cache_ttl = kept.tickets.cache_ttl
        self.admin = AdminSettings(kept.admin.tokens, kept.admin.metrics_public)
        self.config = kept
        self.policy_loaded_at = datetime.now(UTC)
        detail = {
            "trigger": trigger,
            "applied": list(applied),
            "restart_required": list(restart),
            "routes": len(kept.http.routes),
            "config_sha256": hashlib.sha256(text).hexdigest(),
        }
        audited = await self._audit("policy_reload", actor, detail)
        log.info("runtime.policy_reloaded", actor=actor, audited=audited, **detail)
        return PolicyReload(applied, restart, audited)

    async def reload_all(self, *, actor: str, trigger: str) -> None:
        """Keyring, then policy (SIGHUP). A failure of one does not stop the other."""
        for name, reload in (("keyring", self.reload_keyring), ("policy", self.reload_policy)):
            try:
                await reload(actor=actor, trigger=trigger)
            except ReloadError:
                pass  # logged; the old one stays
            except Exception as exc:  # a reload must never take the proxy down
                log.exception("runtime.reload_crashed", what=name, error=type(exc).__name__)

    async def _reload_from_signal(self) -> None:
        await self.reload_all(actor="signal", trigger="sighup")

    async def _audit(self, action: str, actor: str, detail: dict[str, Any]) -> bool:
        """Best effort: a key or policy change takes effect even with the database away
        (a retire must not wait for it); the log says it was not audited."""
        try:
            await asyncio.wait_for(
                self.audit.append(AuditEntry(action, agent=actor, detail=detail)),
                timeout=DEFAULT_TIMEOUT,
            )
        except Exception as exc:
            if is_unavailable(exc):
                self.store.health.report_failure(exc)
            log.error("runtime.audit_failed", action=action, actor=actor,
                      error=type(exc).__name__)
            return False
        return True

    # ------------------------------------------------------------------ serving

    async def start(self) -> dict[str, list[Address]]:
        """Listen on the front end's and the admin API's addresses; returns them."""
        from proxy.admin.app import build_admin_app  # (app.py imports this module)

        options = self.settings.options
        host, port = self.options.http_listen or options.host_port()
        admin_host, admin_port = self.options.admin_listen or _split_listen(
            self.config.admin.listen
        )
        self._admin_runner = web.AppRunner(
            build_admin_app(self), access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        await self._admin_runner.setup()
        await _listen(self._admin_runner, admin_host, admin_port, "admin.listen")
        self._proxy_runner = web.AppRunner(
            build_app(self.ctx),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self.options.drain_timeout,
        )
        await self._proxy_runner.setup()
        await _listen(self._proxy_runner, host, port, "http.listen",
                      ssl=ssl_context_for(options))
        self.addresses = {
            "http": _bound(self._proxy_runner),
            "admin": _bound(self._admin_runner),
        }
        if self.pg is not None:
            try:
                self.addresses["pg"] = await self.pg.start(self.options.pg_listen)
            except OSError as exc:
                raise TokenProxyError(
                    f"cannot listen on {self.config.pg.listen} (pg.listen): "
                    f"{exc.strerror or exc}"
                ) from None
        self.state = RuntimeState.READY
        log.info(
            "runtime.listening",
            **{k: [f"{h}:{p}" for h, p in v] for k, v in self.addresses.items()},
            tls=options.tls,
        )
        return self.addresses

    async def run(
        self,
        *,
        stop: asyncio.Event | None = None,
        ready: Callable[[dict[str, list[Address]]], None] | None = None,
    ) -> int:
        """Serve until ``stop`` is set (or SIGTERM/SIGINT), then drain and close.

        Returns the exit status: 0 when every queued row was written, 1 otherwise.
        """
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []

        def on_stop(sig: signal.Signals) -> None:
            if stop.is_set():
                log.info("runtime.already_draining", signal=sig.name)
                return
            log.info("runtime.signal", signal=sig.name)
            stop.set()

        def on_hup() -> None:
            if self.state is not RuntimeState.READY:
                return
            self._spawn(self._reload_from_signal())

        try:
            if self.options.handle_signals:
                for sig, callback in (
                    (signal.SIGTERM, lambda: on_stop(signal.SIGTERM)),
                    (signal.SIGINT, lambda: on_stop(signal.SIGINT)),
                    (signal.SIGHUP, on_hup),
                ):
                    with contextlib.suppress(NotImplementedError, RuntimeError):
                        loop.add_signal_handler(sig, callback)
                        installed.append(sig)
            addresses = await self.start()
            if ready is not None:
                ready(addresses)
            await stop.wait()
        finally:
            try:
                flushed = await self.shutdown()
            finally:
                for sig in installed:
                    loop.remove_signal_handler(sig)
        return 0 if flushed else 1

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def shutdown(self) -> bool:
        """Drain and close (idempotent). Returns whether every queued row was written."""
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._drain())
        return await asyncio.shield(self._shutdown)

    async def _drain(self) -> bool:
        self.state = RuntimeState.DRAINING
        log.info("runtime.draining", timeout=self.options.drain_timeout)
        if self._proxy_runner is not None:
            # Stops accepting, closes idle keep-alive connections, waits for requests in
            # flight up to drain_timeout, then runs the app's cleanup (the forwarder).
            await self._proxy_runner.cleanup()
        if self.pg is not None:
            await self.pg.close(self.options.drain_timeout)
        for task in [self._bootstrap, *self._background]:
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.tickets.stop()
        await self.store.close(timeout=max(1.0, self.options.drain_timeout))
        pending = self.store.health.pending
        self.state = RuntimeState.STOPPED
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        counts = {
            "pending": pending,
            "pending_registry": self.store.registry.pending,
            "pending_vault": self.store.vault.pending,
            "dropped": self.store.health.dropped,
        }
        if pending:
            log.error("runtime.stopped", flushed=False, **counts)
        else:
            log.info("runtime.stopped", flushed=True, **counts)
        return pending == 0


def _settings(
    config: Config, env: Mapping[str, str], current: HttpSettings | None
) -> HttpSettings:
    """The front end's settings of ``config``; on a reload, what is read only at start-up
    (listen, upstream, timeouts, TLS) stays as it is in force."""
    settings = settings_from_config(config, env)
    if current is None:
        return settings
    old, new = current.options, settings.options
    options = dataclasses.replace(
        old, max_body_bytes=new.max_body_bytes, reserved_prefix=new.reserved_prefix
    )
    return dataclasses.replace(settings, options=options)


async def _degraded_store(
    dsn: str, max_size: int, connect_timeout: float, exc: DatabaseUnavailableError
) -> Store:
    """A store over a pool that connects on demand: the database did not answer at start.

    Equivalent to ``open_store`` without its first connection and schema check (which
    :meth:`Runtime._wait_for_database` does later); the health loop is not started.
    """
    where = describe_dsn(dsn)
    log.warning(
        "runtime.database_unavailable_at_start",
        database=where,
        reason=str(exc),
        detail="starting degraded: tokenizing from keys in memory, queueing issued tokens, "
        "denying reveals; retrying in the background",
    )
    pool = await asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=max_size,
        timeout=connect_timeout,
        command_timeout=DEFAULT_TIMEOUT,
    )
    store = Store.over(pool, where)
    store.health.report_failure(exc)
    return store


async def _listen(
    runner: web.AppRunner, host: str, port: int, key: str, *, ssl: Any = None
) -> None:
    site = web.TCPSite(runner, host, port, ssl_context=ssl, backlog=1024)
    try:
        await site.start()
    except OSError as exc:  # the runner is cleaned up by the shutdown that follows
        raise TokenProxyError(
            f"cannot listen on {host}:{port} ({key}): {exc.strerror or exc}; is another "
            "process using it?"
        ) from None


def _bound(runner: web.AppRunner) -> list[Address]:
    return [(str(a[0]), int(a[1])) for a in runner.addresses]
