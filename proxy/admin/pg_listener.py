"""The PostgreSQL front end as ``tokenproxy serve`` runs it, built from ``[pg]``.

The listener shares the HTTP front end's engine holder (a keyring reload swaps both), the
store, tickets and audit log; its cancel keys are in the store too, for every proxy. The
upstream's catalog is read as ``pg.catalog_user`` (its password from
``pg.catalog_password_env``), one connection per database clients use.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg
import structlog

from proxy.config import PgConfig, secret
from proxy.crypto.engine import TokenEngine
from proxy.pg.cancels import CancelRegistry
from proxy.pg.catalog import Catalogs
from proxy.pg.server import PgFrontEnd
from proxy.pg.session import PgContext, run_session
from proxy.pg.startup import Established, PgSettings, client_tls_context
from proxy.policy.columns import ColumnPolicy
from proxy.store.audit import AuditLog
from proxy.store.budget import BudgetLimits
from proxy.store.cancel_keys import CancelKeyTable
from proxy.store.durable import Store
from proxy.store.tickets import TicketStore

__all__ = ["PgListener", "column_policy"]

log = structlog.get_logger("tokenproxy.pg")


def column_policy(pg: PgConfig) -> ColumnPolicy:
    """The protected columns of ``[[pg.tables]]``."""
    return ColumnPolicy.from_config((t.table, t.customer_id, t.columns) for t in pg.tables)


def _split(address: str, default_port: int) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host:
        return address.strip("[]"), default_port
    return host.strip("[]"), int(port)


class PgListener:
    """The PostgreSQL listener of one running proxy."""

    def __init__(
        self,
        pg: PgConfig,
        env: Mapping[str, str],
        *,
        engine: Callable[[], TokenEngine],
        store: Store,
        tickets: TicketStore,
        audit: AuditLog,
        limits: Callable[[], BudgetLimits],
        connect_timeout: float = 10.0,
    ) -> None:
        self.config = pg
        host, port = _split(pg.upstream, 5432)
        client_tls = (
            client_tls_context(pg.tls_cert_file, pg.tls_key_file)
            if pg.tls_cert_file and pg.tls_key_file
            else None
        )
        self.settings = PgSettings(
            upstream_host=host,
            upstream_port=port,
            upstream_tls=pg.upstream_tls,
            upstream_ca_file=pg.upstream_ca_file,
            client_tls=client_tls,
            connect_timeout=connect_timeout,
        )
        password = secret(pg.catalog_password_env, env)
        upstream_ssl: ssl.SSLContext | None = self.settings.upstream_context

        async def connect_for(database: str) -> Any:
            return await asyncpg.connect(
                host=host,
                port=port,
                user=pg.catalog_user,
                password=password,
                database=database,
                ssl=upstream_ssl if pg.upstream_tls else False,
                timeout=connect_timeout,
                server_settings={"application_name": "tokenproxy-catalog"},
            )

        policy = column_policy(pg)
        self.catalogs = Catalogs(policy, connect_for)
        self.context = PgContext(
            engine=engine,
            store=store,
            tickets=tickets,
            audit=audit,
            catalogs=self.catalogs,
            policy=policy,
            limits=limits,
        )
        # Cancel keys in the store: a cancel may reach another proxy than its session's.
        cancels = CancelRegistry(shared=CancelKeyTable(store.pool, where=store.where))
        self.front_end = PgFrontEnd(self.settings, session=self._session, cancels=cancels)

    async def _session(self, est: Established) -> None:
        await run_session(self.context, est)

    async def start(self, listen: tuple[str, int] | None = None) -> list[tuple[str, int]]:
        host, port = listen or _split(self.config.listen, 6432)
        bound = await self.front_end.start(host, port)
        log.info("pg.tables", tables=[t.qualified for t in self.context.policy])
        return bound

    async def close(self, timeout: float) -> None:  # noqa: ASYNC109  (a drain budget)
        await self.front_end.close(timeout)
        await self.catalogs.close()
