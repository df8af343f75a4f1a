"""The tamper-evident audit log: append-only, hash-chained, verifiable row by row.

Every reveal, denial, token resolution, key change and ticket change is one row of
``audit_log`` (schema: ``migrations/0002_tickets_audit.sql``). Rows carry ids and field names,
never a customer's value.

**The chain.** Row ``seq`` stores ``prev_hash`` (the hash of row ``seq - 1``; 32 zero bytes
for row 1) and ::

    hash = SHA-256(b"tokenproxy-audit-v1\\0" || seq (int64 BE) || at (int64 BE, microseconds
                   since 2000-01-01 UTC, PostgreSQL's own encoding) || prev_hash || digest)
    digest = SHA-256(b"tokenproxy-audit-content-v1\\0" || action || agent || ticket
                     || customer_ids || fields || route || request_id || instance || detail)

where each text is ``0x00`` for NULL or ``0x01 || uint32 BE length || UTF-8``, each list is
``uint32 BE count`` followed by its texts, and ``detail`` is canonical JSON (sorted keys, no
whitespace; str, int, bool, null, lists and objects only: floats are refused because jsonb
does not give them back byte for byte). The proxy computes ``digest``; the SQL function
``tokenproxy_audit_append`` locks the one-row ``audit_head``, assigns ``seq`` and ``at``,
chains, inserts and moves the head, all in one round trip, so concurrent proxies always
extend one chain and hold the lock only while the server runs that function (plus their
commit). :func:`verify` recomputes both hashes from the stored columns in Python.

**What it proves, and what not.** Triggers refuse UPDATE, DELETE and TRUNCATE, but the
table owner or a superuser can disable them. A plain hash chain detects an edit, a deletion,
an insertion or a reordering *unless the editor recomputes every later hash and the head*,
which anyone with write access can do. Hence anchors: ``audit tail`` prints the head
(``seq:hash``), the proxy logs it, and ``verify(anchors=...)`` checks that the stored chain
still passes through each anchor; keep anchors where the database's admins cannot write
(a log shipper, a ticket, a printout). Each proxy logs an ``audit.anchor`` line (at most
once a minute) for a row it knows committed. A keyed chain (HMAC under a key in keys/) would
stop the recomputation by anyone without the key; it is not done yet.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import asyncpg
import structlog
from tqdm import tqdm

from proxy.errors import InvalidInputError
from proxy.policy.tickets import customer_key

__all__ = [
    "GENESIS",
    "Anchor",
    "AuditAction",
    "AuditEntry",
    "AuditLog",
    "AuditRecord",
    "Problem",
    "VerifyReport",
    "append_entries",
    "chain_hash",
    "content_digest",
    "default_instance",
    "note_committed",
    "verify",
]

log = structlog.get_logger(__name__)

GENESIS = bytes(32)
HASH_PREFIX = b"tokenproxy-audit-v1\x00"
CONTENT_PREFIX = b"tokenproxy-audit-content-v1\x00"
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
MAX_TEXT = 1000  # characters in one audit text field (route, request id, ...)
ANCHOR_LOG_INTERVAL = 60.0  # seconds between two `audit.anchor` log lines of one process
REORDER_WINDOW = 64  # how far verify looks for the seq a misplaced row was written for
_ACTION = re.compile(r"[a-z][a-z0-9_]{0,39}")
_MICROSECOND = timedelta(microseconds=1)

class AuditAction(StrEnum):
    """The actions tokenproxy writes. ``AuditEntry.action`` also accepts other snake_case."""

    REVEAL = "reveal"
    DENY = "deny"
    RESOLVE_TOKEN = "resolve_token"  # noqa: S105  (an action name, not a secret)
    KEY_ROTATE = "key_rotate"
    KEY_RETIRE = "key_retire"
    TICKET_CHANGE = "ticket_change"
    ALERT = "alert"


def default_instance() -> str:
    """This proxy process's name in the log: ``host/pid``."""
    return f"{socket.gethostname()}/{os.getpid()}"


# ------------------------------------------------------------------ canonical encoding


def _check_text(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"audit {what} must be a string, not {type(value).__name__}")
    if len(value) > MAX_TEXT or "\x00" in value:
        raise InvalidInputError(f"audit {what} must be at most {MAX_TEXT} characters, no NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"audit {what} is not valid Unicode") from None
    return value


def _check_json(value: object, path: str = "detail") -> None:
    if value is None or isinstance(value, str | bool | int):
        if isinstance(value, str):
            _check_text(value, path)
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_json(item, path)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInputError(f"audit {path} keys must be strings")
            _check_text(key, path)
            _check_json(item, f"{path}.{key}")
        return
    raise InvalidInputError(
        f"audit {path} holds a {type(value).__name__}: only str, int, bool, None, "
        "lists and objects are allowed (floats do not survive jsonb byte for byte)"
    )


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 as is: the form that is hashed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _text(out: list[bytes], value: str | None) -> None:
    if value is None:
        out.append(b"\x00")
    else:
        raw = value.encode("utf-8")
        out.append(b"\x01" + len(raw).to_bytes(4, "big") + raw)


def _texts(out: list[bytes], values: Sequence[str]) -> None:
    out.append(len(values).to_bytes(4, "big"))
    for value in values:
        _text(out, value)


def content_digest(
    *,
    action: str,
    agent: str | None,
    ticket: str | None,
    customer_ids: Sequence[str],
    fields: Sequence[str],
    route: str | None,
    request_id: str | None,
    instance: str | None,
    detail_json: str,
) -> bytes:
    """SHA-256 of a row's content: everything but seq, at and the chain (module docstring)."""
    out = [CONTENT_PREFIX]
    for value in (action, agent, ticket):
        _text(out, value)
    _texts(out, customer_ids)
    _texts(out, fields)
    for value in (route, request_id, instance, detail_json):
        _text(out, value)
    return hashlib.sha256(b"".join(out)).digest()


def chain_hash(seq: int, at: datetime, prev_hash: bytes, digest: bytes) -> bytes:
    """A row's hash, as ``tokenproxy_audit_append`` computes it in SQL."""
    micros = (at - PG_EPOCH) // _MICROSECOND
    return hashlib.sha256(
        HASH_PREFIX
        + seq.to_bytes(8, "big", signed=True)
        + micros.to_bytes(8, "big", signed=True)
        + prev_hash
        + digest
    ).digest()


# ------------------------------------------------------------------------- entries


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """What a caller asks to record. Customer ids are normalised (``customer_key``), sorted
    and de-duplicated; field names sorted and de-duplicated; ``detail`` is small JSON."""

    action: str
    agent: str | None
    ticket: str | None
    customer_ids: tuple[str, ...]
    fields: tuple[str, ...]
    route: str | None
    request_id: str | None
    detail_json: str

    def __init__(
        self,
        action: AuditAction | str,
        *,
        agent: str | None = None,
        ticket: str | None = None,
        customer_ids: Iterable[str | int] = (),
        fields: Iterable[str] = (),
        route: str | None = None,
        request_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        set_ = object.__setattr__
        action = str(action)
        if not _ACTION.fullmatch(action):
            raise InvalidInputError("an audit action is 1..40 characters of [a-z0-9_]")
        set_(self, "action", action)
        set_(self, "agent", _check_text(agent, "agent"))
        set_(self, "ticket", _check_text(ticket, "ticket"))
        if isinstance(customer_ids, str) or isinstance(fields, str):
            raise InvalidInputError("audit customer_ids and fields are collections, not a str")
        set_(self, "customer_ids", tuple(sorted({customer_key(c) for c in customer_ids})))
        names = {_check_text(f, "field name") for f in fields}
        set_(self, "fields", tuple(sorted(n for n in names if n is not None)))
        set_(self, "route", _check_text(route, "route"))
        set_(self, "request_id", _check_text(request_id, "request_id"))
        detail = dict(detail or {})
        _check_json(detail)
        set_(self, "detail_json", canonical_json(detail))

    def digest(self, instance: str | None) -> bytes:
        """This entry's content digest as written by ``instance``."""
        return content_digest(
            action=self.action,
            agent=self.agent,
            ticket=self.ticket,
            customer_ids=self.customer_ids,
            fields=self.fields,
            route=self.route,
            request_id=self.request_id,
            instance=instance,
            detail_json=self.detail_json,
        )


@dataclass(frozen=True, slots=True)
class Anchor:
    """A point the chain must pass through: row ``seq`` has hash ``hash``. Text form
    ``"seq:hexhash"``, as printed by ``audit tail`` and logged by the proxy."""

    seq: int
    hash: bytes

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash.hex()}"

    @classmethod
    def parse(cls, text: str) -> Anchor:
        seq, sep, digest = text.strip().partition(":")
        try:
            if not sep or not seq.isdigit():
                raise ValueError
            raw = bytes.fromhex(digest)
            if len(raw) != 32:
                raise ValueError
        except ValueError:
            raise InvalidInputError(
                "an anchor is SEQ:HASH, the hash in 64 hex digits (as printed by `audit tail`)"
            ) from None
        return cls(int(seq), raw)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One stored row."""

    seq: int
    at: datetime
    action: str
    agent: str | None
    ticket: str | None
    customer_ids: tuple[str, ...]
    fields: tuple[str, ...]
    route: str | None
    request_id: str | None
    instance: str | None
    detail_json: str
    prev_hash: bytes
    hash: bytes

    @property
    def anchor(self) -> Anchor:
        return Anchor(self.seq, self.hash)

    @property
    def detail(self) -> dict[str, Any]:
        value = json.loads(self.detail_json)
        return value if isinstance(value, dict) else {"value": value}

    def digest(self) -> bytes:
        """The content digest recomputed from the stored columns."""
        return content_digest(
            action=self.action,
            agent=self.agent,
            ticket=self.ticket,
            customer_ids=self.customer_ids,
            fields=self.fields,
            route=self.route,
            request_id=self.request_id,
            instance=self.instance,
            detail_json=self.detail_json,
        )

    def hash_as(self, seq: int) -> bytes:
        """The hash this row's stored content would have at ``seq``."""
        return chain_hash(seq, self.at, self.prev_hash, self.digest())

    def to_json(self) -> dict[str, Any]:
        """The row as JSON-ready data (for ``audit export`` and ``audit tail``)."""
        return {
            "seq": self.seq,
            "at": self.at.astimezone(UTC).isoformat(),
            "action": self.action,
            "agent": self.agent,
            "ticket": self.ticket,
            "customer_ids": list(self.customer_ids),
            "fields": list(self.fields),
            "route": self.route,
            "request_id": self.request_id,
            "instance": self.instance,
            "detail": self.detail,
            "prev_hash": self.prev_hash.hex(),
            "hash": self.hash.hex(),
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AuditRecord:
        detail = row["detail"]
        if not isinstance(detail, str):  # a pool with a jsonb codec hands back objects
            detail = json.dumps(detail)
        try:
            detail_json = canonical_json(json.loads(detail))
        except ValueError:
            detail_json = detail
        return cls(
            seq=row["seq"],
            at=row["at"],
            action=row["action"],
            agent=row["agent"],
            ticket=row["ticket"],
            customer_ids=tuple(row["customer_ids"] or ()),
            fields=tuple(row["fields"] or ()),
            route=row["route"],
            request_id=row["request_id"],
            instance=row["instance"],
            detail_json=detail_json,
            prev_hash=bytes(row["prev_hash"]),
            hash=bytes(row["hash"]),
        )


_COLUMNS = (
    "seq, at, action, agent, ticket, customer_ids, fields, route, request_id, instance, "
    "detail::text AS detail, prev_hash, hash"
)

# _COLUMNS is a constant: the f-strings below hold no outside input (hence the S608 noqa).
_SELECT = f"SELECT {_COLUMNS} FROM audit_log"  # noqa: S608
_TAIL = f"SELECT * FROM ({_SELECT} ORDER BY seq DESC LIMIT $1) t ORDER BY seq"  # noqa: S608
_AFTER = f"{_SELECT} WHERE seq > $1 ORDER BY seq LIMIT 1000"
_SINCE = f"{_SELECT} WHERE at >= $1 AND ($2::timestamptz IS NULL OR at < $2) ORDER BY seq"

_APPEND = """
SELECT o_seq, o_at, o_prev_hash, o_hash FROM tokenproxy_audit_append(
    $1::text, $2::text[], $3::text[], $4::text[], $5::text[], $6::int[], $7::text[],
    $8::int[], $9::text[], $10::text[], $11::text[]::jsonb[], $12::bytea[])
"""


# ------------------------------------------------------------------------ appending

_last_anchor_log = float("-inf")


def note_committed(records: Sequence[AuditRecord]) -> None:
    """Log the newest of ``records`` as an anchor, at most every ``ANCHOR_LOG_INTERVAL``.

    Call only once the rows are committed: an anchor of a row that rolled back would make
    ``verify`` report a rewrite. The log line goes wherever the proxy's logs go, out of the
    database admins' reach, which is what makes it an anchor.
    """
    global _last_anchor_log
    if not records:
        return
    now = time.monotonic()
    if now - _last_anchor_log < ANCHOR_LOG_INTERVAL:
        return
    _last_anchor_log = now
    log.info("audit.anchor", anchor=str(max(records, key=lambda r: r.seq).anchor))



async def append_entries(
    conn: asyncpg.Connection, entries: Sequence[AuditEntry], instance: str | None
) -> list[AuditRecord]:
    """Append ``entries`` in one round trip on ``conn`` (in its transaction, if any).

    Inside a transaction, the chain head stays locked until it ends: append last, commit
    soon. Returns the stored rows, in order.
    """
    if not entries:
        return []
    instance = _check_text(instance, "instance")
    rows = await conn.fetch(
        _APPEND,
        instance,
        [e.agent for e in entries],
        [e.ticket for e in entries],
        [e.action for e in entries],
        [c for e in entries for c in e.customer_ids],
        [len(e.customer_ids) for e in entries],
        [f for e in entries for f in e.fields],
        [len(e.fields) for e in entries],
        [e.route for e in entries],
        [e.request_id for e in entries],
        [e.detail_json for e in entries],
        [e.digest(instance) for e in entries],
    )
    records = [
        AuditRecord(
            seq=row["o_seq"],
            at=row["o_at"],
            action=e.action,
            agent=e.agent,
            ticket=e.ticket,
            customer_ids=e.customer_ids,
            fields=e.fields,
            route=e.route,
            request_id=e.request_id,
            instance=instance,
            detail_json=e.detail_json,
            prev_hash=bytes(row["o_prev_hash"]),
            hash=bytes(row["o_hash"]),
        )
        for row, e in zip(rows, entries, strict=True)
    ]
    log.debug(
        "audit.appended",
        first_seq=records[0].seq,
        last_seq=records[-1].seq,
        actions=sorted({r.action for r in records}),
    )
    if not conn.is_in_transaction():  # autocommit: committed on return
        note_committed(records)
    return records


# ----------------------------------------------------------------------- verifying


class Problem(StrEnum):
    """What verify found at the first bad row."""

    MODIFIED = "modified"  # the row's content no longer matches its hash (or the next link)
    DELETED = "deleted"  # rows missing: a gap in seq, or the log ends before the head
    INSERTED = "inserted"  # a row that is not part of the chain (or beyond the head)
    REORDERED = "reordered"  # a genuine row at another seq than the one it was written at
    REWRITTEN = "rewritten"  # the chain is self-consistent but misses an anchor: recomputed


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of :func:`verify`."""

    ok: bool
    rows: int  # rows read
    head: Anchor | None  # the chain head the log should end at (from audit_head)
    first_bad_seq: int | None = None
    problem: Problem | None = None
    detail: str = ""

    @property
    def message(self) -> str:
        if self.ok:
            where = f"head {self.head}" if self.head else "empty"
            return f"audit log intact: {self.rows} rows verified, {where}"
        return (
            f"audit log tampered at seq {self.first_bad_seq}: {self.problem}"
            f" ({self.detail})"
        )


@dataclass
class _Failure:
    seq: int | None
    problem: Problem
    detail: str


class ChainVerifier:
    """Checks rows fed in seq order against the chain; stops at the first problem.

    Holds one row back: classifying a bad row sometimes needs the next one (does the chain
    go on from this row, or skip it?). Memory is constant. Used by :func:`verify`; usable
    directly on rows from anywhere (a backup, an export).
    """

    def __init__(self, head: Anchor | None, anchors: Iterable[Anchor] = ()) -> None:
        self.head = head
        self.anchors = {a.seq: a.hash for a in anchors}
        self.rows = 0
        self.failure: _Failure | None = None
        self._pending: AuditRecord | None = None
        self._last_seq = 0
        self._last_hash = GENESIS
        self._before_last: bytes | None = None  # hash of the row before the last good one

    @property
    def done(self) -> bool:
        return self.failure is not None

    def feed(self, row: AuditRecord) -> None:
        if self.failure is not None:
            return
        self.rows += 1
        if self._pending is not None:
            self._check(self._pending, row)
        self._pending = row

    def finish(self) -> VerifyReport:
        if self.failure is None and self._pending is not None:
            self._check(self._pending, None)
            self._pending = None
        if self.failure is None:
            self._finish_checks()
        if self.failure is not None:
            return VerifyReport(
                False,
                self.rows,
                self.head,
                self.failure.seq,
                self.failure.problem,
                self.failure.detail,
            )
        return VerifyReport(True, self.rows, self.head)

    def _fail(self, seq: int | None, problem: Problem, detail: str) -> None:
        if self.failure is None:
            self.failure = _Failure(seq, problem, detail)

    def _finish_checks(self) -> None:
        last = self._last_seq
        if self.head is None:
            self._fail(None, Problem.DELETED, "the audit_head row is missing")
            return
        if last < self.head.seq:
            self._fail(
                last + 1,
                Problem.DELETED,
                f"the log ends at seq {last} but the chain head is at seq {self.head.seq}",
            )
            return
        if last and self._last_hash != self.head.hash:
            self._fail(last, Problem.MODIFIED, "the last row does not match the chain head")
            return
        for seq in sorted(self.anchors):
            if seq > last:
                self._fail(
                    last + 1,
                    Problem.DELETED,
                    f"the log ends at seq {last} but anchor {seq} lies beyond it",
                )
                return

    def _check(self, row: AuditRecord, nxt: AuditRecord | None) -> None:
        seq, expected = row.seq, self._last_seq + 1
        if seq < expected:
            self._fail(seq, Problem.INSERTED, f"seq {seq} appears again or out of range")
            return
        if self.head is not None and expected > self.head.seq:
            self._fail(
                seq, Problem.INSERTED, f"a row beyond the chain head (seq {self.head.seq})"
            )
            return
        if seq > expected:
            self._fail(expected, Problem.DELETED, f"rows {expected}..{seq - 1} are missing")
            return
        digest = row.digest()
        content_ok = row.hash == chain_hash(seq, row.at, row.prev_hash, digest)
        link_ok = row.prev_hash == self._last_hash
        if content_ok and link_ok:
            anchored = self.anchors.get(seq)
            if anchored is not None and anchored != row.hash:
                self._fail(
                    seq,
                    Problem.REWRITTEN,
                    "the chain does not pass through the anchor at this seq: rows up to "
                    "here were changed and the hashes recomputed",
                )
                return
            self._before_last, self._last_hash, self._last_seq = (
                self._last_hash,
                row.hash,
                seq,
            )
            return
        self._classify(row, nxt, digest, content_ok)

    def _classify(
        self, row: AuditRecord, nxt: AuditRecord | None, digest: bytes, content_ok: bool
    ) -> None:
        seq = row.seq
        skips_previous = self._before_last is not None and row.prev_hash == self._before_last
        skipped_by_next = (
            nxt is not None and nxt.seq == seq + 1 and nxt.prev_hash == self._last_hash
        )
        if content_ok:  # self-consistent, but it does not link to the row before it
            if skipped_by_next:
                self._fail(
                    seq,
                    Problem.INSERTED,
                    f"row {seq + 1} links past row {seq}: row {seq} is not in the chain",
                )
            elif skips_previous:
                self._fail(
                    seq - 1,
                    Problem.INSERTED,
                    f"row {seq} links past row {seq - 1}: row {seq - 1} is not in the chain",
                )
            elif seq > 1:
                self._fail(
                    seq - 1,
                    Problem.MODIFIED,
                    f"row {seq} links to another hash: row {seq - 1} was rewritten",
                )
            else:
                self._fail(seq, Problem.MODIFIED, "the first row does not start the chain")
            return
        written_as = self._written_as(row, digest)
        if written_as is not None and written_as < seq:
            if skips_previous or written_as == seq - 1:
                self._fail(
                    seq - 1 if skips_previous else written_as,
                    Problem.INSERTED,
                    f"row {seq} was written as seq {written_as}: rows were inserted before it",
                )
            else:
                self._fail(
                    seq, Problem.REORDERED, f"row {seq} was written as seq {written_as}"
                )
            return
        if written_as is not None:  # written for a later seq: rows removed, or a swap
            if nxt is None or nxt.prev_hash == row.hash:
                self._fail(
                    seq,
                    Problem.DELETED,
                    f"row {seq} was written as seq {written_as}: rows were removed and the "
                    "rest renumbered",
                )
            else:
                self._fail(
                    seq, Problem.REORDERED, f"row {seq} was written as seq {written_as}"
                )
            return
        if skipped_by_next:
            self._fail(
                seq,
                Problem.INSERTED,
                f"row {seq + 1} links past row {seq}: row {seq} is not in the chain",
            )
            return
        self._fail(seq, Problem.MODIFIED, "the row's content does not match its hash")

    @staticmethod
    def _written_as(row: AuditRecord, digest: bytes) -> int | None:
        """The seq this row's stored hash was computed for, if near its current seq."""
        for delta in range(1, REORDER_WINDOW + 1):
            for candidate in (row.seq - delta, row.seq + delta):
                if candidate >= 1 and row.hash == chain_hash(
                    candidate, row.at, row.prev_hash, digest
                ):
                    return candidate
        return None


async def verify(
    pool: asyncpg.Pool,
    *,
    progress: bool | None = None,
    anchors: Iterable[Anchor] = (),
    batch: int = 2000,
) -> VerifyReport:
    """Walk the whole log in seq order and report the first row that breaks the chain.

    Streams rows through a server-side cursor in one REPEATABLE READ snapshot (memory stays
    constant; appends meanwhile are not seen and do not disturb). ``progress``: a tqdm bar
    on stderr; ``None`` shows it only when stderr is a terminal. ``anchors``: points the
    chain must pass through (see the module docstring).
    """
    show = sys.stderr.isatty() if progress is None else progress
    checker = ChainVerifier(None, anchors)
    async with pool.acquire() as conn, conn.transaction(
        isolation="repeatable_read", readonly=True
    ):
        head_row = await conn.fetchrow("SELECT seq, hash FROM audit_head WHERE id")
        checker.head = Anchor(head_row["seq"], bytes(head_row["hash"])) if head_row else None
        total = checker.head.seq if checker.head else None
        with tqdm(
            total=total,
            unit="row",
            unit_scale=True,
            desc="verifying audit log",
            file=sys.stderr,
            disable=not show,
            mininterval=0.5,
        ) as bar:
            unreported = 0
            cursor = conn.cursor(f"{_SELECT} ORDER BY seq", prefetch=batch)
            async for row in cursor:
                checker.feed(AuditRecord.from_row(row))
                unreported += 1
                if unreported >= 1000:
                    bar.update(unreported)
                    unreported = 0
                if checker.done:
                    break
            bar.update(unreported)
    report = checker.finish()
    if report.ok:
        log.info("audit.verified", rows=report.rows, head=str(report.head))
    else:
        log.warning(
            "audit.tampered",
            rows=report.rows,
            first_bad_seq=report.first_bad_seq,
            problem=str(report.problem),
        )
    return report


# ---------------------------------------------------------------------- the log


class AuditLog:
    """The audit log of one proxy instance, on an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool, *, instance: str | None = None) -> None:
        self.pool = pool
        self.instance = instance or default_instance()

    async def append(
        self, entry: AuditEntry, *, conn: asyncpg.Connection | None = None
    ) -> AuditRecord:
        """Append one entry; committed on return unless ``conn`` is in a transaction."""
        return (await self.append_many([entry], conn=conn))[0]

    async def append_many(
        self, entries: Sequence[AuditEntry], *, conn: asyncpg.Connection | None = None
    ) -> list[AuditRecord]:
        """Append entries in one round trip. Without ``conn``, the call is its own
        transaction and has committed on return. With ``conn`` in a transaction, it commits
        with that transaction (and holds the chain head until then)."""
        if conn is not None:
            return await append_entries(conn, entries, self.instance)
        async with self.pool.acquire() as own:
            return await append_entries(own, entries, self.instance)

    async def head(self) -> Anchor:
        """The current chain head (``seq`` 0 with zero hash on an empty log)."""
        row = await self.pool.fetchrow("SELECT seq, hash FROM audit_head WHERE id")
        if row is None:
            raise InvalidInputError("audit_head is missing: run `tokenproxy audit verify`")
        return Anchor(row["seq"], bytes(row["hash"]))

    async def tail(
        self, n: int = 20, *, follow: bool = False, poll_interval: float = 1.0
    ) -> AsyncIterator[AuditRecord]:
        """The last ``n`` rows, oldest first; with ``follow``, then every new row as it
        is committed (polling every ``poll_interval`` seconds), until cancelled."""
        if n < 0:
            raise InvalidInputError("tail needs n >= 0")
        rows = await self.pool.fetch(_TAIL, n)
        last = 0
        for row in rows:
            record = AuditRecord.from_row(row)
            last = record.seq
            yield record
        if not follow:
            return
        if not rows:
            last = (await self.head()).seq
        while True:
            await asyncio.sleep(poll_interval)
            rows = await self.pool.fetch(_AFTER, last)
            for row in rows:
                record = AuditRecord.from_row(row)
                last = record.seq
                yield record

    async def export(
        self, since: datetime, until: datetime | None = None, *, batch: int = 2000
    ) -> AsyncIterator[dict[str, Any]]:
        """Rows with ``since <= at < until``, in seq order, as JSON-ready dicts (ids and
        field names only: the log holds no customer value). Streams with a cursor."""
        if since.tzinfo is None or (until is not None and until.tzinfo is None):
            raise InvalidInputError("export needs timezone-aware times (e.g. 2024-05-01T00:00Z)")
        async with self.pool.acquire() as conn, conn.transaction(
            isolation="repeatable_read", readonly=True
        ):
            async for row in conn.cursor(_SINCE, since, until, prefetch=batch):
                yield AuditRecord.from_row(row).to_json()

    async def verify(
        self, *, progress: bool | None = None, anchors: Iterable[Anchor] = ()
    ) -> VerifyReport:
        """See :func:`verify`."""
        return await verify(self.pool, progress=progress, anchors=anchors)
