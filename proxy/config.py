"""The TOML configuration: frozen dataclasses, every key with a default, and ``config check``.

``tokenproxy.example.toml`` is the contract: every key it shows, with the default it shows;
an empty file is a valid configuration of defaults. Route and table lists default to empty
(the examples in that file are examples).

- :func:`load_config` reads a file, applies the environment overrides and returns a
  :class:`Config`, or raises :class:`ConfigError` listing every problem, one per line, as
  ``file:line: key: message (suggestion)``.
- :func:`check_config` returns those problems as :class:`ConfigProblem` values (an empty list
  means the text is clean); :func:`format_problems` renders them for ``tokenproxy config
  check``, whose exit code is :func:`check_exit_code` (0 clean, 1 problems).

**Environment.** ``DATABASE_URL`` overrides ``database.url`` and ``TOKENPROXY_KEYS``
overrides ``keys.dir`` (when set and not empty). ``TOKENPROXY_KEK`` is read by the keystore,
not here. Secrets never live in the file: a ``*_env`` key holds the *name* of an environment
variable, and :func:`secret` reads its value when it is needed (so a rotated secret is picked
up by the next reader, and the config object holds nothing worth stealing).

**Line numbers.** ``tomllib`` gives none for keys, so :class:`_LineIndex` scans the text once
(a small TOML tokenizer that understands strings, comments, arrays, inline tables and arrays
of tables) and maps every key path (``http.routes[2].fields[0].kind``) to the line where it
appears; a problem without an exact entry takes the line of its closest enclosing key.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import math
import os
import re
import tomllib
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeAlias, cast
from urllib.parse import urlsplit

from proxy.crypto.tokens import Kind
from proxy.errors import InvalidInputError, TokenProxyError
from proxy.policy.fields import (
    DEFAULT_CUSTOMER_ID_FIELDS,
    DEFAULT_NAME_FIELDS,
    DEFAULT_PHONE_FIELDS,
    DEFAULT_TEXT_FIELDS,
    DefaultFields,
    FieldRule,
    compact_field_name,
)
from proxy.policy.jsonpath import JsonPath, JsonPathError, compile_path
from proxy.policy.routes import Route, RouteTable, parse_method, parse_pattern

__all__ = [
    "EXIT_CLEAN",
    "EXIT_PROBLEMS",
    "AdminConfig",
    "AdminToken",
    "BudgetConfig",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "DatabaseConfig",
    "DefaultsConfig",
    "HttpConfig",
    "IdentityConfig",
    "JustificationConfig",
    "KeysConfig",
    "LoggingConfig",
    "PgConfig",
    "PgTable",
    "TicketsConfig",
    "TokensConfig",
    "check_config",
    "check_exit_code",
    "check_file",
    "format_problems",
    "load_config",
    "secret",
]

EXIT_CLEAN = 0
EXIT_PROBLEMS = 1

KeyPath: TypeAlias = tuple[str | int, ...]

# ============================================================================
# The configuration
# ============================================================================


@dataclass(frozen=True, slots=True)
class KeysConfig:
    dir: str = "keys"  # env TOKENPROXY_KEYS overrides
    kek_file: str = ""  # "": the KEK comes from env TOKENPROXY_KEK


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str = "postgresql://tokenproxy@127.0.0.1:5432/tokenproxy"  # env DATABASE_URL overrides
    password_env: str = "TOKENPROXY_DATABASE_PASSWORD"  # noqa: S105  (a variable name)
    pool_min: int = 2
    pool_max: int = 10
    connect_timeout: float = 5.0
    migrate_on_start: bool = True


@dataclass(frozen=True, slots=True)
class TokensConfig:
    default_region: str = "ID"
    cache_size: int = 100_000


@dataclass(frozen=True, slots=True)
class TicketsConfig:
    cache_ttl: float = 2.0


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    per_hour: int = 20
    per_day: int = 100


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_secret_env: str = "TOKENPROXY_JWT_SECRET"  # noqa: S105  (a variable name)
    jwt_public_key_file: str = ""
    jwt_audience: str = "support-api"
    jwt_issuer: str = "https://sso.example.com/"
    agent_claim: str = "sub"
    leeway: float = 30.0
    trusted_header: str = "X-Authenticated-User"
    trusted_peers: tuple[str, ...] = ("127.0.0.1/32", "::1/128")


@dataclass(frozen=True, slots=True)
class JustificationConfig:
    ticket_header: str = "X-Ticket-Id"
    cookie_name: str = "tokenproxy_ticket"
    cookie_ttl: int = 900
    cookie_secret_env: str = "TOKENPROXY_COOKIE_SECRET"  # noqa: S105  (a variable name)


@dataclass(frozen=True)
class DefaultsConfig:
    name_fields: tuple[str, ...] = DEFAULT_NAME_FIELDS
    phone_fields: tuple[str, ...] = DEFAULT_PHONE_FIELDS
    text_fields: tuple[str, ...] = DEFAULT_TEXT_FIELDS
    customer_id_fields: tuple[str, ...] = DEFAULT_CUSTOMER_ID_FIELDS

    @cached_property
    def rule(self) -> DefaultFields:
        """The default rule as the policy layer uses it."""
        return DefaultFields(
            self.name_fields, self.phone_fields, self.text_fields, self.customer_id_fields
        )


@dataclass(frozen=True)
class HttpConfig:
    listen: str = "127.0.0.1:8080"
    upstream: str = "http://127.0.0.1:9000"
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_body_bytes: int = 67_108_864
    reserved_prefix: str = "/_tokenproxy/"
    tls_cert_file: str = ""
    tls_key_file: str = ""
    routes: tuple[Route, ...] = ()

    @cached_property
    def route_table(self) -> RouteTable:
        return RouteTable(self.routes)


@dataclass(frozen=True, slots=True)
class AdminToken:
    name: str
    sha256: str  # lower-case hex of the SHA-256 of the bearer token


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: str = "127.0.0.1:8081"
    tokens: tuple[AdminToken, ...] = ()
    metrics_public: bool = True  # /metrics without a bearer token (Prometheus scrapers)


@dataclass(frozen=True, slots=True)
class PgTable:
    table: str  # schema.table
    customer_id: str | None  # the column holding the customer id; None: none
    columns: Mapping[str, Kind]  # protected column -> kind


@dataclass(frozen=True, slots=True)
class PgConfig:
    enabled: bool = False  # the PostgreSQL listener runs
    listen: str = "127.0.0.1:6432"
    upstream: str = "127.0.0.1:5432"
    upstream_tls: bool = False
    upstream_ca_file: str = ""  # verify the upstream's certificate against this CA
    tls_cert_file: str = ""
    tls_key_file: str = ""
    catalog_user: str = "tokenproxy"  # reads the upstream's catalog (pg_class, views...)
    catalog_password_env: str = "TOKENPROXY_PG_CATALOG_PASSWORD"  # noqa: S105  (a name)
    tables: tuple[PgTable, ...] = ()


_Level = Literal["debug", "info", "warning", "error", "critical"]
_Format = Literal["json", "console"]


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: _Level = "info"
    format: _Format = "json"


@dataclass(frozen=True, slots=True)
class Config:
    keys: KeysConfig = field(default_factory=KeysConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    tokens: TokensConfig = field(default_factory=TokensConfig)
    tickets: TicketsConfig = field(default_factory=TicketsConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    justification: JustificationConfig = field(default_factory=JustificationConfig)
    defaults: DefaultsConfig = field(default_factory=DefaultsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    pg: PgConfig = field(default_factory=PgConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def secret(env_name: str, env: Mapping[str, str] | None = None) -> str | None:
    """The value of the environment variable a ``*_env`` key names; None if unset or empty.

    ``secret(config.database.password_env)``. Read when needed, never stored in the config.
    """
    if not env_name:
        return None
    value = (os.environ if env is None else env).get(env_name)
    return value or None


# ============================================================================
# Problems
# ============================================================================


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One mistake: where (file, 1-based line, key path), what, and what to write instead.

    ``line`` is 0 for a problem that has no place in the file (an environment variable).
    """

    file: str
    line: int
    key: str
    message: str
    suggestion: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        what = f"{self.key}: {self.message}" if self.key else self.message
        return f"{where}: {what} ({self.suggestion})" if self.suggestion else f"{where}: {what}"


class ConfigError(TokenProxyError):
    """The configuration cannot be used; ``problems`` lists every mistake found."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__(format_problems(self.problems))


def format_problems(problems: Sequence[ConfigProblem]) -> str:
    """One problem per line, ``file:line: key: message (suggestion)``; "" when clean."""
    return "\n".join(str(p) for p in problems)


def check_exit_code(problems: Sequence[ConfigProblem]) -> int:
    """The exit code of ``tokenproxy config check``: 0 clean, 1 problems."""
    return EXIT_PROBLEMS if problems else EXIT_CLEAN


def check_config(text: str, filename: str = "tokenproxy.toml") -> list[ConfigProblem]:
    """Every problem in the config ``text`` (without environment overrides)."""
    return _parse(text, filename)[1]


def check_file(path: str | os.PathLike[str]) -> list[ConfigProblem]:
    """Every problem in the config file at ``path`` (an unreadable file is one problem)."""
    try:
        text = _read(path)
    except ConfigError as exc:
        return list(exc.problems)
    return check_config(text, str(path))


def load_config(
    path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None
) -> Config:
    """The configuration at ``path`` (None: all defaults) with the environment overrides.

    Raises :class:`ConfigError` with every problem found.
    """
    environ = os.environ if env is None else env
    if path is None:
        config: Config | None = Config()
        problems: list[ConfigProblem] = []
    else:
        config, problems = _parse(_read(path), str(path))
    if problems or config is None:
        raise ConfigError(problems)
    overrides: dict[str, Any] = {}
    if url := environ.get("DATABASE_URL"):
        if urlsplit(url).scheme not in _PG_SCHEMES:
            raise ConfigError(
                [
                    ConfigProblem(
                        "environment", 0, "DATABASE_URL",
                        "is not a PostgreSQL URL",
                        "set it like postgresql://user@host:5432/dbname",
                    )
                ]
            )
        overrides["database"] = replace(config.database, url=url)
    if keys_dir := environ.get("TOKENPROXY_KEYS"):
        overrides["keys"] = replace(config.keys, dir=keys_dir)
    return replace(config, **overrides) if overrides else config


def _read(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            [ConfigProblem(str(path), 0, "", f"cannot read the config: {reason}",
                           "check the path, or copy tokenproxy.example.toml")]
        ) from None


# ============================================================================
# Line numbers: a small scanner over (already valid) TOML text
# ============================================================================


class _LineIndex:
    """Key path -> line of the first place it appears (tables, keys, array elements)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines: dict[KeyPath, int] = {}
        self._newlines = [i for i, c in enumerate(text) if c == "\n"]
        with contextlib.suppress(IndexError, ValueError):  # best effort: keep what was indexed
            self._document()

    def line_of(self, path: KeyPath) -> int:
        while path:
            line = self.lines.get(path)
            if line is not None:
                return line
            path = path[:-1]
        return 1

    def _line(self, pos: int) -> int:
        return bisect_left(self._newlines, pos) + 1

    def _mark(self, path: KeyPath, pos: int) -> None:
        self.lines.setdefault(path, self._line(pos))

    def _skip(self, i: int, newlines: bool) -> int:
        s, n = self.text, len(self.text)
        while i < n:
            c = s[i]
            if c in " \t\r" or (newlines and c == "\n"):
                i += 1
            elif c == "#":
                while i < n and s[i] != "\n":
                    i += 1
            else:
                break
        return i

    def _document(self) -> None:
        s, n = self.text, len(self.text)
        table: KeyPath = ()
        arrays: dict[KeyPath, int] = {}
        i = 0
        while True:
            i = self._skip(i, newlines=True)
            if i >= n:
                return
            start = i
            if s.startswith("[[", i):
                keys, i = self._keys(i + 2)
                i = self._skip(i, False) + 2  # ']]'
                parent = self._resolve(keys[:-1], arrays)
                full = (*parent, keys[-1])
                index = arrays.get(full, -1) + 1
                arrays[full] = index
                table = (*full, index)
                self._mark(full, start)
                self._mark(table, start)
            elif s[i] == "[":
                keys, i = self._keys(i + 1)
                i = self._skip(i, False) + 1  # ']'
                table = self._resolve(keys, arrays)
                self._mark(table, start)
            else:
                keys, i = self._keys(i)
                i = self._skip(i, False) + 1  # '='
                path = table + keys
                for k in range(len(table) + 1, len(path) + 1):
                    self._mark(path[:k], start)
                i = self._value(i, path)

    @staticmethod
    def _resolve(keys: KeyPath, arrays: dict[KeyPath, int]) -> KeyPath:
        out: KeyPath = ()
        for key in keys:
            out = (*out, key)
            if out in arrays:
                out = (*out, arrays[out])
        return out

    def _keys(self, i: int) -> tuple[KeyPath, int]:
        s = self.text
        keys: list[str] = []
        while True:
            i = self._skip(i, False)
            c = s[i]
            if c == '"':
                end = self._basic_string_end(i)
                keys.append(tomllib.loads(f"k = {s[i:end]}")["k"])
                i = end
            elif c == "'":
                end = s.index("'", i + 1)
                keys.append(s[i + 1 : end])
                i = end + 1
            else:
                m = _BARE_KEY.match(s, i)
                if m is None:
                    raise ValueError("not a key")
                keys.append(m.group())
                i = m.end()
            i = self._skip(i, False)
            if i < len(s) and s[i] == ".":
                i += 1
                continue
            return tuple(keys), i

    def _basic_string_end(self, i: int) -> int:
        s = self.text
        i += 1
        while s[i] != '"':
            i += 2 if s[i] == "\\" else 1
        return i + 1

    def _value(self, i: int, path: KeyPath) -> int:
        s, n = self.text, len(self.text)
        i = self._skip(i, False)
        if s.startswith('"""', i) or s.startswith("'''", i):
            quote = s[i : i + 3]
            i += 3
            while not s.startswith(quote, i):
                i += 2 if (quote == '"""' and s[i] == "\\") else 1
            i += 3
            while i < n and s[i] == quote[0]:  # up to two quotes may end the content
                i += 1
            return i
        if s[i] == '"':
            return self._basic_string_end(i)
        if s[i] == "'":
            return s.index("'", i + 1) + 1
        if s[i] == "[":
            i += 1
            index = 0
            while True:
                i = self._skip(i, True)
                if s[i] == "]":
                    return i + 1
                self._mark((*path, index), i)
                i = self._value(i, (*path, index))
                i = self._skip(i, True)
                if s[i] == ",":
                    i += 1
                index += 1
        if s[i] == "{":
            i += 1
            while True:
                i = self._skip(i, True)
                if s[i] == "}":
                    return i + 1
                start = i
                keys, i = self._keys(i)
                i = self._skip(i, False) + 1  # '='
                sub = path + keys
                for k in range(len(path) + 1, len(sub) + 1):
                    self._mark(sub[:k], start)
                i = self._value(i, sub)
                i = self._skip(i, True)
                if s[i] == ",":
                    i += 1
        while i < n and s[i] not in ",]}\n#":
            i += 1
        return i


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key_text(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if _BARE_KEY.fullmatch(part) else f'"{part}"'
            out += f".{name}" if out else name
    return out


# ============================================================================
# Reading and checking
# ============================================================================

_PG_SCHEMES = ("postgresql", "postgres")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # an RFC 9110 token
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?\Z")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_JWT_ALGORITHMS = (
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512",
    "PS256", "PS384", "PS512", "EdDSA",
)  # fmt: skip
_LEVELS = ("debug", "info", "warning", "error", "critical")
_FORMATS = ("json", "console")
_KINDS = tuple(k.value for k in Kind)
_SECTIONS = (
    "keys", "database", "tokens", "tickets", "budget", "identity", "justification",
    "defaults", "http", "admin", "pg", "logging",
)  # fmt: skip
_TOML_LINE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*\Z")

Check = Callable[[str], "tuple[str, str] | None"]  # value -> (message, suggestion) or None


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def _did_you_mean(word: str, choices: Sequence[str], fmt: str = "'{}'") -> str:
    folded = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(folded), n=1, cutoff=0.6)
    if close:
        return f"did you mean {fmt.format(folded[close[0]])}?"
    return "expected one of " + ", ".join(fmt.format(c) for c in choices)


def _one_of(what: str, choices: Sequence[str]) -> Check:
    def check(value: str) -> tuple[str, str] | None:
        if value in choices:
            return None
        return (
            f"{what} must be one of {', '.join(choices)}, got {value!r}",
            _did_you_mean(value, choices),
        )

    return check


class _Checker:
    def __init__(self, text: str, filename: str) -> None:
        self.file = filename
        self.problems: list[ConfigProblem] = []
        self.index = _LineIndex(text)

    def problem(self, path: KeyPath, message: str, suggestion: str = "") -> None:
        self.problems.append(
            ConfigProblem(self.file, self.index.line_of(path), _key_text(path), message,
                          suggestion)
        )

    def line(self, path: KeyPath) -> int:
        return self.index.line_of(path)


class _Table:
    """One TOML table being read: typed getters that report problems and fall back."""

    def __init__(self, chk: _Checker, data: Mapping[str, Any], path: KeyPath, title: str):
        self.chk = chk
        self.data = data
        self.path = path
        self.title = title
        self.known: list[str] = []

    def _get(self, key: str) -> tuple[bool, Any]:
        self.known.append(key)
        return key in self.data, self.data.get(key)

    def _wrong(self, key: str, value: object, expected: str, example: str) -> None:
        self.chk.problem(
            (*self.path, key), f"expected {expected}, got {_toml_type(value)}",
            f"write it like {key} = {example}",
        )

    def string(
        self, key: str, default: str, check: Check | None = None, *, empty_ok: bool = False
    ) -> str:
        """A string; ``check`` runs on it (on "" too, unless ``empty_ok``: "" means none)."""
        present, value = self._get(key)
        if not present:
            return default
        if not isinstance(value, str):
            self._wrong(key, value, "a string in quotes", f'"{default}"' if default else '"..."')
            return default
        if not value and not empty_ok and check is not None:
            self.chk.problem((*self.path, key), f"{key} is empty",
                             f'write it like {key} = "{default}"' if default else "")
            return default
        if check is not None and value:
            bad = check(value)
            if bad is not None:
                self.chk.problem((*self.path, key), *bad)
                return default
        return value

    def env_name(self, key: str, default: str) -> str:
        def check(value: str) -> tuple[str, str] | None:
            if _ENV_NAME.match(value):
                return None
            return (
                "must name an environment variable (letters, digits and _), not hold the "
                "secret itself",
                f'write it like {key} = "{default or "TOKENPROXY_SECRET"}" and put the '
                "secret in that variable",
            )

        return self.string(key, default, check, empty_ok=True)

    def integer(self, key: str, default: int, minimum: int | None = None) -> int:
        present, value = self._get(key)
        if not present:
            return default
        if isinstance(value, float) and value.is_integer() and not isinstance(value, bool):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            self._wrong(key, value, "a whole number", str(default))
            return default
        if minimum is not None and value < minimum:
            self.chk.problem(
                (*self.path, key), f"must be at least {minimum}, got {value}",
                f"write it like {key} = {max(default, minimum)}",
            )
            return default
        return value

    def seconds(self, key: str, default: float, *, zero: bool = False) -> float:
        present, value = self._get(key)
        if not present:
            return default
        if not isinstance(value, int | float) or isinstance(value, bool):
            self.chk.problem(
                (*self.path, key), f"expected a number of seconds, got {_toml_type(value)}",
                f"write it like {key} = {float(default)}",
            )
            return default
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            self.chk.problem(
                (*self.path, key),
                f"must be {'zero or more' if zero else 'more than zero'} seconds, got {value}",
                f"write it like {key} = {float(default)}",
            )
            return default
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        present, value = self._get(key)
        if not present:
            return default
        if not isinstance(value, bool):
            hint = (
                f"write {value.lower()} without quotes"
                if isinstance(value, str) and value.lower() in ("true", "false")
                else f"write it like {key} = {str(default).lower()}"
            )
            self.chk.problem((*self.path, key), f"expected true or false, got {_toml_type(value)}",
                             hint)
            return default
        return value

    def strings(
        self, key: str, default: tuple[str, ...], check: Check | None = None
    ) -> tuple[str, ...]:
        present, value = self._get(key)
        if not present:
            return default
        example = "[" + ", ".join(f'"{d}"' for d in default[:2]) + "]" if default else '["..."]'
        if not isinstance(value, list):
            self._wrong(key, value, "an array of strings", example)
            return default
        out: list[str] = []
        ok = True
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                self.chk.problem(
                    (*self.path, key, i),
                    f"expected a non-empty string, got {_toml_type(item)}",
                    f"write it like {key} = {example}",
                )
                ok = False
                continue
            if check is not None:
                bad = check(item)
                if bad is not None:
                    self.chk.problem((*self.path, key, i), *bad)
                    ok = False
                    continue
            out.append(item)
        return tuple(out) if ok else default

    def table(self, key: str, title: str) -> _Table | None:
        present, value = self._get(key)
        if not present:
            return None
        if not isinstance(value, dict):
            self._wrong(key, value, "a table", "{ ... }")
            return None
        return _Table(self.chk, value, (*self.path, key), title)

    def tables(self, key: str, title: str) -> list[_Table]:
        present, value = self._get(key)
        if not present:
            return []
        if not isinstance(value, list):
            self.chk.problem(
                (*self.path, key), f"expected an array of tables, got {_toml_type(value)}",
                f"write each as its own [[{_key_text((*self.path, key))}]] table",
            )
            return []
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                self.chk.problem(
                    (*self.path, key, i), f"expected a table, got {_toml_type(item)}",
                    "write it like { key = \"value\" }",
                )
                continue
            out.append(_Table(self.chk, item, (*self.path, key, i), f"{title} #{i + 1}"))
        return out

    def required(self, key: str, what: str, example: str) -> str | None:
        present, value = self._get(key)
        if not present:
            self.chk.problem(self.path, f"{what} is missing ({key} is required)",
                             f"add {key} = {example}")
            return None
        if not isinstance(value, str) or not value:
            self._wrong(key, value, "a non-empty string", example)
            return None
        return value

    def finish(self) -> None:
        for key in self.data:
            if key not in self.known:
                self.chk.problem(
                    (*self.path, key), f"unknown key {key!r} in {self.title}",
                    _did_you_mean(key, self.known),
                )


# -- value checks ---------------------------------------------------------------------


def _check_listen(value: str) -> tuple[str, str] | None:
    return _check_address(value, "a listen address")


def _check_address(value: str, what: str) -> tuple[str, str] | None:
    example = "like 127.0.0.1:8080, [::1]:8080 or localhost:8080"
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            return f"{what} must be host:port, got {value!r}", f"write it {example}"
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{what} has an invalid IPv6 address {host!r}", f"write it {example}"
    else:
        host, sep, port = value.rpartition(":")
        if not sep or not host:
            return f"{what} must be host:port, got {value!r}", f"write it {example}"
        if ":" in host:
            return (
                f"{what}: an IPv6 address needs brackets, got {value!r}",
                f"write it like [{host}]:{port}",
            )
        if not _HOSTNAME.match(host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                return f"{what} has an invalid host {host!r}", f"write it {example}"
    if not port.isdigit() or not 0 < int(port) < 65536:
        return f"{what} has an invalid port {port!r}", "a port is a number from 1 to 65535"
    return None


def _check_upstream_url(value: str) -> tuple[str, str] | None:
    parts = urlsplit(value)
    example = "write it like http://127.0.0.1:9000"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"upstream must be an http:// or https:// URL, got {value!r}", example
    try:
        parts.port  # noqa: B018  (raises for a bad port)
    except ValueError:
        return f"upstream has an invalid port in {value!r}", example
    if parts.query or parts.fragment:
        return "upstream must not have a query or fragment", example
    return None


def _check_database_url(value: str) -> tuple[str, str] | None:
    parts = urlsplit(value)
    if parts.scheme not in _PG_SCHEMES:
        return (
            "database url must be a PostgreSQL URL",
            "write it like postgresql://tokenproxy@127.0.0.1:5432/tokenproxy",
        )
    if parts.password:
        return (
            "database url carries a password: secrets never go in the config file",
            "remove it from the URL and put it in the variable named by password_env, "
            "or set DATABASE_URL in the environment",
        )
    return None


def _check_header(value: str) -> tuple[str, str] | None:
    if _HEADER.match(value):
        return None
    return f"{value!r} is not a valid HTTP header name", 'write it like "X-Ticket-Id"'


def _check_cookie(value: str) -> tuple[str, str] | None:
    if _HEADER.match(value):
        return None
    return f"{value!r} is not a valid cookie name", 'write it like "tokenproxy_ticket"'


def _check_peer(value: str) -> tuple[str, str] | None:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        try:
            fixed = ipaddress.ip_network(value, strict=False)
        except ValueError:
            return f"{value!r} is not an IP network", 'write it like "10.0.0.0/8" or "::1/128"'
        return f"{value!r} has host bits set", f'write "{fixed}"'
    return None


def _check_region(value: str) -> tuple[str, str] | None:
    try:
        import phonenumbers
    except ImportError:  # pragma: no cover - a dependency
        return None
    regions = sorted(phonenumbers.SUPPORTED_REGIONS)
    if value in regions:
        return None
    if value.upper() in regions:
        return f"region {value!r} must be upper case", f'write "{value.upper()}"'
    return (
        f"{value!r} is not a phone region (an ISO 3166 two-letter code)",
        _did_you_mean(value.upper(), regions, '"{}"') if len(value) == 2 else 'like "ID"',
    )


def _check_prefix(value: str) -> tuple[str, str] | None:
    if value.startswith("/") and value.endswith("/") and len(value) > 2:
        return None
    return "reserved_prefix must start and end with '/'", 'write it like "/_tokenproxy/"'


def _check_field_entry(value: str) -> tuple[str, str] | None:
    if "*" in value and not re.fullmatch(r"[A-Za-z0-9_\-*]+", value):
        return (
            f"{value!r}: a glob may use only letters, digits, '_', '-' and '*'",
            'write it like "*_phone"',
        )
    return None


def _check_table_name(value: str) -> tuple[str, str] | None:
    parts = value.split(".")
    if len(parts) == 2 and all(_IDENT.match(p) for p in parts):
        return None
    if len(parts) == 1 and _IDENT.match(value):
        return (
            f"table must be written schema.table, got {value!r}",
            f'write "public.{value}", or the table\'s own schema',
        )
    return f"table must be written schema.table, got {value!r}", 'write it like "public.customers"'


def _check_column(value: str) -> tuple[str, str] | None:
    if _IDENT.match(value):
        return None
    return f"{value!r} is not a column name", 'write it like "id"'


def _json_path(table: _Table, key: str) -> JsonPath | None:
    present, value = table._get(key)
    if not present or value == "":
        return None
    if not isinstance(value, str):
        table._wrong(key, value, "a JSON path in quotes", '"$.customers[*].id"')
        return None
    try:
        return compile_path(value)
    except JsonPathError as exc:
        table.chk.problem(
            (*table.path, key),
            f"bad JSON path {value!r}: {exc.problem} at position {exc.position}",
            exc.hint or "write it like $.customers[*].id",
        )
        return None


# -- sections -------------------------------------------------------------------------


def _parse(text: str, filename: str) -> tuple[Config | None, list[ConfigProblem]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        m = _TOML_LINE.search(message)
        line = int(m.group(1)) if m else max(1, text.count("\n") + (not text.endswith("\n")))
        message = _TOML_LINE.sub("", message)
        return None, [ConfigProblem(filename, line, "", f"TOML syntax error: {message}",
                                    _toml_hint(message))]
    chk = _Checker(text, filename)
    top = _Table(chk, data, (), "the file")
    sections: dict[str, _Table | None] = {}
    for name in _SECTIONS:
        sections[name] = top.table(name, f"[{name}]")
    for key in data:
        if key not in _SECTIONS:
            chk.problem((key,), f"unknown section [{key}]", _did_you_mean(key, _SECTIONS, "[{}]"))

    def section(name: str) -> _Table:
        return sections[name] or _Table(chk, {}, (name,), f"[{name}]")

    config = Config(
        keys=_keys(section("keys")),
        database=_database(section("database")),
        tokens=_tokens(section("tokens")),
        tickets=_tickets(section("tickets")),
        budget=_budget(section("budget")),
        identity=_identity(section("identity")),
        justification=_justification(section("justification")),
        defaults=_defaults(section("defaults")),
        http=_http(section("http")),
        admin=_admin(section("admin")),
        pg=_pg(section("pg")),
        logging=_logging(section("logging")),
    )
    chk.problems.sort(key=lambda p: p.line)
    return (None if chk.problems else config), chk.problems


def _toml_hint(message: str) -> str:
    lower = message.lower()
    if "overwrite" in lower or "duplicate" in lower:
        return "each key may appear once per table; remove or rename one"
    if "invalid value" in lower:
        return 'strings need quotes: write key = "value"'
    if "expected '='" in lower:
        return "a key is followed by = and a value"
    if "after a statement" in lower:
        return 'one key = value per line; strings need quotes: write key = "value"'
    if "unclosed" in lower or "end of" in lower:
        return "close the string, array or table that starts here"
    return "check quotes, brackets and commas on this line"


def _keys(t: _Table) -> KeysConfig:
    d = KeysConfig()
    c = KeysConfig(dir=t.string("dir", d.dir), kek_file=t.string("kek_file", d.kek_file))
    if not c.dir:
        t.chk.problem((*t.path, "dir"), "dir is empty", 'write it like dir = "keys"')
    t.finish()
    return c


def _database(t: _Table) -> DatabaseConfig:
    d = DatabaseConfig()
    c = DatabaseConfig(
        url=t.string("url", d.url, _check_database_url),
        password_env=t.env_name("password_env", d.password_env),
        pool_min=t.integer("pool_min", d.pool_min, minimum=0),
        pool_max=t.integer("pool_max", d.pool_max, minimum=1),
        connect_timeout=t.seconds("connect_timeout", d.connect_timeout),
        migrate_on_start=t.boolean("migrate_on_start", d.migrate_on_start),
    )
    if c.pool_min > c.pool_max:
        t.chk.problem((*t.path, "pool_min"),
                      f"pool_min ({c.pool_min}) is above pool_max ({c.pool_max})",
                      "make pool_min at most pool_max")
    t.finish()
    return c


def _tokens(t: _Table) -> TokensConfig:
    d = TokensConfig()
    c = TokensConfig(
        default_region=t.string("default_region", d.default_region, _check_region),
        cache_size=t.integer("cache_size", d.cache_size, minimum=0),
    )
    t.finish()
    return c


def _tickets(t: _Table) -> TicketsConfig:
    c = TicketsConfig(cache_ttl=t.seconds("cache_ttl", TicketsConfig().cache_ttl, zero=True))
    t.finish()
    return c


def _budget(t: _Table) -> BudgetConfig:
    d = BudgetConfig()
    c = BudgetConfig(
        per_hour=t.integer("per_hour", d.per_hour, minimum=0),
        per_day=t.integer("per_day", d.per_day, minimum=0),
    )
    t.finish()
    return c


def _identity(t: _Table) -> IdentityConfig:
    d = IdentityConfig()
    c = IdentityConfig(
        jwt_algorithms=t.strings(
            "jwt_algorithms", d.jwt_algorithms, _one_of("a JWT algorithm", _JWT_ALGORITHMS)
        ),
        jwt_secret_env=t.env_name("jwt_secret_env", d.jwt_secret_env),
        jwt_public_key_file=t.string("jwt_public_key_file", d.jwt_public_key_file),
        jwt_audience=t.string("jwt_audience", d.jwt_audience),
        jwt_issuer=t.string("jwt_issuer", d.jwt_issuer),
        agent_claim=t.string("agent_claim", d.agent_claim),
        leeway=t.seconds("leeway", d.leeway, zero=True),
        trusted_header=t.string("trusted_header", d.trusted_header, _check_header,
                                empty_ok=True),
        trusted_peers=t.strings("trusted_peers", d.trusted_peers, _check_peer),
    )
    algs = set(c.jwt_algorithms)
    symmetric = {a for a in algs if a.startswith("HS")}
    if not c.jwt_algorithms and "jwt_algorithms" in t.data:
        t.chk.problem((*t.path, "jwt_algorithms"), "jwt_algorithms is empty",
                      'write it like jwt_algorithms = ["HS256"]')
    if symmetric and algs - symmetric:
        t.chk.problem(
            (*t.path, "jwt_algorithms"),
            "mixing HMAC (HS*) and public-key algorithms invites algorithm confusion",
            "pick one family",
        )
    if symmetric and not c.jwt_secret_env:
        t.chk.problem((*t.path, "jwt_secret_env"), f"{min(symmetric)} needs a secret",
                      'set jwt_secret_env = "TOKENPROXY_JWT_SECRET"')
    if algs - symmetric and not c.jwt_public_key_file:
        t.chk.problem((*t.path, "jwt_algorithms"),
                      f"{min(algs - symmetric)} needs jwt_public_key_file",
                      'set jwt_public_key_file = "/etc/tokenproxy/sso.pem"')
    if not c.agent_claim:
        t.chk.problem((*t.path, "agent_claim"), "agent_claim is empty",
                      'write it like agent_claim = "sub"')
    t.finish()
    return c


def _justification(t: _Table) -> JustificationConfig:
    d = JustificationConfig()
    c = JustificationConfig(
        ticket_header=t.string("ticket_header", d.ticket_header, _check_header),
        cookie_name=t.string("cookie_name", d.cookie_name, _check_cookie),
        cookie_ttl=t.integer("cookie_ttl", d.cookie_ttl, minimum=1),
        cookie_secret_env=t.env_name("cookie_secret_env", d.cookie_secret_env),
    )
    t.finish()
    return c


def _defaults(t: _Table) -> DefaultsConfig:
    d = DefaultsConfig()
    lists = {
        "name_fields": t.strings("name_fields", d.name_fields, _check_field_entry),
        "phone_fields": t.strings("phone_fields", d.phone_fields, _check_field_entry),
        "text_fields": t.strings("text_fields", d.text_fields, _check_field_entry),
        "customer_id_fields": t.strings("customer_id_fields", d.customer_id_fields),
    }
    seen: dict[str, tuple[str, int]] = {}
    for key, entries in lists.items():
        for i, entry in enumerate(entries):
            if key == "customer_id_fields" and "*" in entry:
                t.chk.problem((*t.path, key, i), f"{entry!r}: customer id fields cannot be globs",
                              "name the key exactly, like \"customer_id\"")
                continue
            norm = entry.lower().replace("-", "_") if "*" in entry else compact_field_name(entry)
            first = seen.setdefault(norm, (key, i))
            if first[0] != key:
                # point at the entry the file wrote (the other may be a default)
                where = (key, i) if key in t.data or first[0] not in t.data else first
                t.chk.problem(
                    (*t.path, *where), f"{entry!r} is in both {first[0]} and {key}",
                    "keep it in one list: a key has one kind"
                    if "customer_id_fields" not in (key, first[0])
                    else "keep it in one list: a customer id is never tokenized",
                )
    c = DefaultsConfig(**lists)
    t.finish()
    if not any(p.key.startswith("defaults") for p in t.chk.problems):
        try:
            c.rule  # noqa: B018  (validates)
        except InvalidInputError as exc:
            t.chk.problem(t.path, str(exc))
    return c


def _http(t: _Table) -> HttpConfig:
    d = HttpConfig()
    listen = t.string("listen", d.listen, _check_listen)
    upstream = t.string("upstream", d.upstream, _check_upstream_url)
    connect_timeout = t.seconds("connect_timeout", d.connect_timeout)
    read_timeout = t.seconds("read_timeout", d.read_timeout)
    max_body_bytes = t.integer("max_body_bytes", d.max_body_bytes, minimum=1)
    prefix = t.string("reserved_prefix", d.reserved_prefix, _check_prefix)
    cert = t.string("tls_cert_file", d.tls_cert_file)
    key = t.string("tls_key_file", d.tls_key_file)
    _tls_pair(t, cert, key)
    routes: list[Route] = []
    seen: dict[tuple[str, str], int] = {}
    for rt in t.tables("routes", "[[http.routes]]"):
        route = _route(rt, prefix)
        rt.finish()
        if route is None:
            continue
        first = seen.get(route.key)
        if first is not None:
            rt.chk.problem(
                rt.path,
                f"duplicate route {route.method} {route.compiled.shape}: the same method and "
                f"path as the route at line {first}",
                "merge their fields into one [[http.routes]]",
            )
            continue
        seen[route.key] = rt.chk.line(rt.path)
        routes.append(route)
    t.finish()
    return HttpConfig(listen, upstream, connect_timeout, read_timeout, max_body_bytes, prefix,
                      cert, key, tuple(routes))


def _tls_pair(t: _Table, cert: str, key: str) -> None:
    if bool(cert) != bool(key):
        missing = "tls_key_file" if cert else "tls_cert_file"
        t.chk.problem((*t.path, missing), f"{missing} is missing: TLS needs both files",
                      "set tls_cert_file and tls_key_file, or neither")


def _route(t: _Table, reserved_prefix: str) -> Route | None:
    ok = True
    present, method = t._get("method")
    if not present:
        method = "*"
    if not isinstance(method, str):
        t._wrong("method", method, "an HTTP method in quotes", '"GET"')
        ok = False
    else:
        try:
            method = parse_method(method)
        except InvalidInputError as exc:
            t.chk.problem((*t.path, "method"), str(exc), 'write it like method = "GET"')
            ok = False
    pattern = t.required("path", "the route's path", '"/customers/{id}"')
    if pattern is None:
        ok = False
    else:
        try:
            parse_pattern(pattern)
        except InvalidInputError as exc:
            t.chk.problem((*t.path, "path"), str(exc))
            ok = False
        else:
            if (pattern.rstrip("/") + "/").startswith(reserved_prefix):
                t.chk.problem(
                    (*t.path, "path"),
                    f"{pattern!r} is under reserved_prefix {reserved_prefix!r}, which the proxy "
                    "serves itself",
                    "route a path outside it, or change reserved_prefix",
                )
                ok = False
    if "customer_id" in t.data:
        customer_id = _json_path(t, "customer_id")
        ok = ok and (customer_id is not None or t.data.get("customer_id") == "")
    else:
        t.known.append("customer_id")
        customer_id = None
    fields: list[FieldRule] = []
    for ft in t.tables("fields", "a field"):
        ft.title = f"{_key_text(ft.path)}"
        path = (
            _json_path(ft, "path")
            if "path" in ft.data
            else ft.required("path", "the field's JSON path", '"$.customers[*].phone"')
        )
        kind = _kind(ft)
        ft.finish()
        if isinstance(path, JsonPath) and kind is not None:
            fields.append(FieldRule(path, kind))
        else:
            ok = False
    on_unparseable = t.string(
        "on_unparseable", "refuse", _one_of("on_unparseable", ("refuse", "pass"))
    )
    if not ok or not isinstance(method, str) or pattern is None:
        return None
    return Route(method, pattern, customer_id, tuple(fields),
                 "pass" if on_unparseable == "pass" else "refuse")


def _kind(t: _Table) -> Kind | None:
    present, value = t._get("kind")
    if not present:
        t.chk.problem(t.path, "kind is missing", 'add kind = "name", "phone" or "text"')
        return None
    return _kind_value(t, (*t.path, "kind"), value, "kind")


def _kind_value(t: _Table, path: KeyPath, value: object, key: str) -> Kind | None:
    if isinstance(value, str) and value in _KINDS:
        return Kind(value)
    if isinstance(value, str):
        t.chk.problem(path, f"kind must be one of {', '.join(_KINDS)}, got {value!r}",
                      _did_you_mean(value, _KINDS))
    else:
        t.chk.problem(path, f"kind must be one of {', '.join(_KINDS)}, got {_toml_type(value)}",
                      f'write it like {key} = "name"')
    return None


def _admin(t: _Table) -> AdminConfig:
    d = AdminConfig()
    listen = t.string("listen", d.listen, _check_listen)
    metrics_public = t.boolean("metrics_public", d.metrics_public)
    tokens: list[AdminToken] = []
    names: set[str] = set()
    for tt in t.tables("tokens", "an admin token"):
        tt.title = _key_text(tt.path)
        name = tt.required("name", "the token's name", '"helpdesk-webhook"')
        digest = tt.required("sha256", "the token's SHA-256", '"<64 hex digits>"')
        tt.finish()
        if digest is not None and not _SHA256.match(digest):
            tt.chk.problem((*tt.path, "sha256"), "sha256 must be 64 lower-case hex digits",
                           "make it with `tokenproxy admin hash-token`")
            continue
        if name is not None and name in names:
            tt.chk.problem((*tt.path, "name"), f"admin token {name!r} is listed twice",
                           "give each token its own name")
            continue
        if name is not None and digest is not None:
            names.add(name)
            tokens.append(AdminToken(name, digest))
    t.finish()
    return AdminConfig(listen, tuple(tokens), metrics_public)


def _pg(t: _Table) -> PgConfig:
    d = PgConfig()
    enabled = t.boolean("enabled", d.enabled)
    listen = t.string("listen", d.listen, _check_listen)
    upstream = t.string("upstream", d.upstream,
                        lambda v: _check_address(v, "the upstream address"))
    upstream_tls = t.boolean("upstream_tls", d.upstream_tls)
    upstream_ca = t.string("upstream_ca_file", d.upstream_ca_file)
    cert = t.string("tls_cert_file", d.tls_cert_file)
    key = t.string("tls_key_file", d.tls_key_file)
    _tls_pair(t, cert, key)
    catalog_user = t.string("catalog_user", d.catalog_user, _check_column)
    catalog_password_env = t.env_name("catalog_password_env", d.catalog_password_env)
    tables: list[PgTable] = []
    seen: dict[str, int] = {}
    for tt in t.tables("tables", "[[pg.tables]]"):
        name = tt.required("table", "the table", '"public.customers"')
        if name is not None:
            bad = _check_table_name(name)
            if bad is not None:
                tt.chk.problem((*tt.path, "table"), *bad)
                name = None
        customer_id = tt.string("customer_id", "", _check_column, empty_ok=True) or None
        columns: dict[str, Kind] = {}
        ct = tt.table("columns", f"{_key_text(tt.path)}.columns")
        if ct is None and "columns" not in tt.data:
            tt.chk.problem(tt.path, "columns is missing",
                           'add columns = { full_name = "name", phone = "phone" }')
        ok = ct is not None
        if ct is not None:
            for column, value in ct.data.items():
                ct.known.append(column)
                bad_column = _check_column(column)
                if bad_column is not None:
                    ct.chk.problem((*ct.path, column), *bad_column)
                    ok = False
                    continue
                kind = _kind_value(ct, (*ct.path, column), value, column)
                if kind is None:
                    ok = False
                else:
                    columns[column] = kind
            if customer_id is not None and customer_id in columns:
                tt.chk.problem((*tt.path, "customer_id"),
                               f"column {customer_id!r} is both the customer id and protected",
                               "the customer id column cannot be tokenized; remove it from "
                               "columns")
                ok = False
        tt.finish()
        if name is None or not ok:
            continue
        if name in seen:
            tt.chk.problem((*tt.path, "table"),
                           f"table {name!r} is listed twice (first at line {seen[name]})",
                           "merge its columns into one [[pg.tables]]")
            continue
        seen[name] = tt.chk.line(tt.path)
        tables.append(PgTable(name, customer_id, MappingProxyType(columns)))
    t.finish()
    return PgConfig(
        enabled, listen, upstream, upstream_tls, upstream_ca, cert, key, catalog_user,
        catalog_password_env, tuple(tables),
    )


def _logging(t: _Table) -> LoggingConfig:
    level = t.string("level", "info", _one_of("level", _LEVELS))
    fmt = t.string("format", "json", _one_of("format", _FORMATS))
    t.finish()
    return LoggingConfig(
        cast(_Level, level if level in _LEVELS else "info"),
        cast(_Format, fmt if fmt in _FORMATS else "json"),
    )
