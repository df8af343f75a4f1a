"""Fixtures of the HTTP front end tests (the environment itself: http_env.py)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from http_env import Env, EnvFactory, build_env


@pytest.fixture(scope="session")
async def shared_env(pg_server: Any) -> AsyncIterator[Env]:
    """One database, upstream and proxy for the tests that only read customers (creating a
    database costs ~0.5 s). Tests on it use their own agents and ticket ids, and find their
    audit rows by request id."""
    name = f"http_{secrets.token_hex(6)}"
    dsn = pg_server.create_database(name)
    stack = contextlib.AsyncExitStack()
    try:
        yield await build_env(dsn, stack, extra_customers=1000)
    finally:
        await stack.aclose()
        with contextlib.suppress(Exception):
            pg_server.drop_database(name)


@pytest.fixture
def http_env(shared_env: Env) -> Env:
    """The shared environment (see ``shared_env``)."""
    return shared_env


@pytest.fixture
async def http_env_factory(pg_dsn: str) -> AsyncIterator[EnvFactory]:
    """A fresh environment on a fresh database, with settings overrides (tests that change
    customers, stop the database or need another upstream)."""
    stack = contextlib.AsyncExitStack()

    async def make(**kwargs: Any) -> Env:
        return await build_env(pg_dsn, stack, **kwargs)

    try:
        yield make
    finally:
        await stack.aclose()

