"""The PostgreSQL store: pool, migrations, token registry, short-value vault, outage handling.

Start-up and the CLI use :func:`open_store`; front ends call :func:`tokenize_durably` (or
``Store.tokenize``) before tokens leave, and ``Store.resolve`` / ``Store.detokenize`` for
values coming back. See the modules for the design notes.
"""

from proxy.store.db import (
    DatabaseAuthError,
    DatabaseNotFoundError,
    DatabaseUnavailableError,
    SchemaError,
    StoreError,
    connect_pool,
)
from proxy.store.durable import (
    Store,
    StoreHealth,
    detokenize_many,
    open_store,
    prefetch_tokens,
    resolve_many,
    tokenize_durably,
)
from proxy.store.migrations import MigrationReport, check_schema, migrate
from proxy.store.registry import PgTokenRegistry
from proxy.store.vault import PgVault

__all__ = [
    "DatabaseAuthError",
    "DatabaseNotFoundError",
    "DatabaseUnavailableError",
    "MigrationReport",
    "PgTokenRegistry",
    "PgVault",
    "SchemaError",
    "Store",
    "StoreError",
    "StoreHealth",
    "check_schema",
    "connect_pool",
    "detokenize_many",
    "migrate",
    "open_store",
    "prefetch_tokens",
    "resolve_many",
    "tokenize_durably",
]
