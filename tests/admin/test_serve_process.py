"""`tokenproxy serve` as a real process: serves from a config file, reloads on SIGHUP, drains
and exits 0 on SIGTERM with its queues written and nothing left listening."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from admin_env import (
    ADMIN_TOKEN,
    OTHER_TOKEN,
    SEED,
    TOKEN_NAME,
    config_text,
    free_port,
    make_keys,
    split_password,
)

from proxy import keystore


def tokenproxy_command() -> list[str]:
    script = Path(sys.executable).with_name("tokenproxy")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from proxy.cli import main; main()"]


def tail(path: Path, size: int = 3000) -> str:
    return path.read_text()[-size:]


def log_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) != 0


async def get_json(
    session: aiohttp.ClientSession, url: str, **kwargs: Any
) -> tuple[int, Any]:
    async with session.get(url, **kwargs) as resp:
        return resp.status, orjson.loads(await resp.read())


async def wait_until(check: Any, proc: asyncio.subprocess.Process, log: Path, what: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        if proc.returncode is not None:
            raise AssertionError(f"tokenproxy exited ({proc.returncode}):\n{tail(log)}")
        try:
            if await check():
                return
        except (aiohttp.ClientError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{tail(log)}")
        await asyncio.sleep(0.1)


async def test_serve_reloads_on_sighup_and_drains_on_sigterm(
    pg_dsn: str, tmp_path: Path, upstream: str
) -> None:
    keys_dir = tmp_path / "keys"
    kek = make_keys(keys_dir)
    dsn, password = split_password(pg_dsn)
    http_port, admin_port = free_port(), free_port()
    config = tmp_path / "tokenproxy.toml"
    settings = {"dsn": dsn, "keys_dir": keys_dir, "upstream": upstream,
                "http_port": http_port, "admin_port": admin_port}
    config.write_text(config_text(**settings))  # type: ignore[arg-type]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENPROXY_", "DATABASE_"))}
    env[keystore.KEK_ENV] = keystore.encode_kek(kek)
    if password:
        env["TOKENPROXY_DATABASE_PASSWORD"] = password
    log = tmp_path / "serve.log"
    proxy = f"http://127.0.0.1:{http_port}"
    admin = f"http://127.0.0.1:{admin_port}"
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            *tokenproxy_command(), "serve", "--config", str(config), "--drain-timeout", "5",
            env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr, cwd=tmp_path,
        )
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                status, body = await get_json(session, admin + "/readyz")
                return status == 200 and body["store"] == "ok"

            await wait_until(ready, proc, log, "/readyz")
            status, before = await get_json(session, proxy + "/customers")
            assert status == 200
            names = {c["full_name"] for c in before["customers"]}
            assert not names & {name for _, name, _ in SEED}

            # SIGHUP: a rotated keyring and a new admin token, without a restart
            keystore.rotate_keys(keys_dir, kek)
            config.write_text(
                config_text(
                    **settings,  # type: ignore[arg-type]
                    tokens=((TOKEN_NAME, ADMIN_TOKEN), ("ops", OTHER_TOKEN)),
                )
            )
            proc.send_signal(signal.SIGHUP)

            async def reloaded() -> bool:
                status, body = await get_json(
                    session, admin + "/keyring", headers={"Authorization": f"Bearer {OTHER_TOKEN}"}
                )
                return status == 200 and body["active"] == 2

            await wait_until(reloaded, proc, log, "the SIGHUP reload")
            status, after = await get_json(session, proxy + "/customers")
            new_names = {c["full_name"] for c in after["customers"]}
            assert new_names and not new_names & names and not new_names & {n for _, n, _ in SEED}
            status, body = await get_json(session, admin + "/audit/status", headers=auth)
            assert status == 200 and body["rows"] == 2  # key_rotate, policy_reload

            # SIGTERM with a request in flight: it finishes, then the process exits 0
            slow = asyncio.ensure_future(get_json(session, proxy + "/slow?s=1.0"))
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            status, doc = await asyncio.wait_for(slow, 10)
            assert status == 200 and doc["full_name"] != SEED[0][1]
            code = await asyncio.wait_for(proc.wait(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    lines = log_lines(log)
    assert code == 0, tail(log)
    events = [line.get("event") for line in lines]
    for event in ("runtime.opened", "runtime.listening", "runtime.keyring_swapped",
                  "runtime.policy_reloaded", "runtime.signal", "runtime.draining",
                  "runtime.stopped"):
        assert event in events, event
    stopped = next(line for line in lines if line.get("event") == "runtime.stopped")
    assert stopped["flushed"] is True and stopped["pending"] == 0
    assert events.index("runtime.stopped") > events.index("runtime.draining")
    assert refused(http_port) and refused(admin_port)
    text = log.read_text()
    for _, name, phone in SEED:  # the log names customers by id only
        assert name not in text and phone not in text

    # every token handed out is in the registry: the queues were written
    conn = await asyncpg.connect(pg_dsn)
    try:
        stored = {r["token"] for r in await conn.fetch("SELECT token FROM token_registry")}
    finally:
        await conn.close()
    assert names <= stored and new_names <= stored


async def test_serve_refuses_a_broken_config(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[http]\nlisten = "nowhere"\n')
    proc = await asyncio.create_subprocess_exec(
        *tokenproxy_command(), "serve", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"bad.toml:2: http.listen" in err
