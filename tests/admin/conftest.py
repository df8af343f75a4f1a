"""Fixtures of the admin tests (helpers in ``admin_env.py``).

``admin_env``: a running runtime (front end and admin API) on a fresh database, with its
keys and config file in ``tmp_path`` and an upstream customer API, all on the session loop.
``env_factory``: the same, started when the test says (after stopping PostgreSQL, say).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from admin_env import AdminEnv, running_upstream, start_env


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    async with running_upstream() as url:
        yield url


@pytest.fixture
async def env_factory(
    pg_dsn: str, tmp_path: Path, upstream: str
) -> AsyncIterator[Callable[..., Awaitable[AdminEnv]]]:
    stack = contextlib.AsyncExitStack()

    async def make(**config_kwargs: Any) -> AdminEnv:
        return await start_env(stack, pg_dsn, tmp_path, upstream, **config_kwargs)

    try:
        yield make
    finally:
        await stack.aclose()


@pytest.fixture
async def admin_env(env_factory: Callable[..., Awaitable[AdminEnv]]) -> AdminEnv:
    return await env_factory()
