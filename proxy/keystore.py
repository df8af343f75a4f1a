"""keys/: the wrapped data keys on disk, and the key-encryption key (KEK) that unwraps them.

This module is the only code that reads or writes the keys directory. It imports nothing of
the project but ``proxy.crypto`` and ``proxy.errors``; it never logs or prints key material,
and no error message it raises contains any.

The KEK
-------
32 random bytes, given as ``TOKENPROXY_KEK`` (their base64) or ``--kek-file`` (a file of
mode 0600 or stricter holding the 32 raw bytes or their base64), never stored in the keys
directory. Its *id* is the first 8 bytes, in hex, of HMAC-SHA256(KEK, "tokenproxy-kek-id"):
a fingerprint that names a KEK without revealing it, so that "wrong KEK" is a clear message.
Data keys are wrapped under HMAC-SHA256(KEK, "tokenproxy-kek-wrap-v1"), never the KEK itself.

File format (``format`` 1)
--------------------------
One file per data key version, ``key-0001.json``, ``key-0002.json``..., mode 0600::

    {"format": 1, "version": 2, "state": "active", "created_at": "2026-11-28T17:01:00Z",
     "kek_id": "3f2a9c0d1e2b4a5f", "alg": "A256GCM",
     "nonce": "<base64, 12 bytes>", "wrapped_key": "<base64, 32-byte key + 16-byte tag>"}

The data key is sealed with AES-256-GCM under a fresh random nonce each time the file is
written. The associated data is every other field (format, version, state, created_at,
kek_id, alg) as canonical JSON, so *all* metadata is authenticated: editing the state (say,
un-retiring a key), the version, or renaming or swapping files fails authentication (the
version must also match the file name). A state change rewrites the whole file, resealed.
Files whose ``format`` is newer than :data:`FORMAT` are refused ("upgrade tokenproxy").
Other files in the directory (README.md, ``.lock``, ``.tmp-*`` left by a crash) are ignored.

Crash safety
------------
Every file is written whole to ``.tmp-<name>-<random>`` in the same directory (O_EXCL, mode
0600), fsynced, renamed over its target with ``os.replace`` and the directory fsynced. A
file is therefore always either its old or its new content; a crash leaves at most a stray
temporary file, which loading ignores and the next changing command removes.

``rotate`` writes the new key *as active first*, then demotes the old active key to
decrypt-only. A crash between the two leaves two files that say active, so the load rule
is: **if several files say active, the highest version is active and the others are
decrypt-only**. That is exactly the state a finished rotation would leave; ``keys list``
shows the difference and the next ``rotate`` or ``retire`` rewrites the stale file. No key
is ever deleted, so no crash can lose key material.

``rewrap`` verifies every file first, then rewrites them one by one under the new KEK. A
crash midway leaves a directory under two KEKs; loading it with either KEK alone is an error
that says to run ``keys rewrap`` again with both, which finishes the job (files already
under the new KEK are skipped). Changing commands hold an exclusive ``flock`` on
``<keys>/.lock``; readers take no lock (each file is replaced atomically).

Each changing function returns a :class:`KeyChange` saying what was written, for the audit
log (``key_rotate``, ``key_retire``...) and for a running proxy to swap in the new keyring.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hmac
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from hashlib import sha256
from pathlib import Path
from typing import Any

from Crypto.Cipher import AES

from proxy.crypto.keyring import DATA_KEY_BYTES, DataKey, Keyring, KeyState
from proxy.errors import KeyringError, KeyStoreError

__all__ = [
    "FORMAT",
    "KEK_BYTES",
    "KEK_ENV",
    "NEW_KEK_ENV",
    "KeyAction",
    "KeyChange",
    "KeyInfo",
    "decode_key_file",
    "encode_kek",
    "encode_key_file",
    "generate_kek",
    "init_keyring",
    "kek_id",
    "key_file_name",
    "list_keys",
    "load_keyring",
    "parse_kek",
    "read_kek_file",
    "resolve_kek",
    "retire_key",
    "rewrap_keys",
    "rotate_keys",
    "write_kek_file",
]

FORMAT = 1
"""The newest key file format this code reads and the one it writes."""

KEK_BYTES = 32
KEK_ENV = "TOKENPROXY_KEK"
NEW_KEK_ENV = "TOKENPROXY_NEW_KEK"
WRAP_ALG = "A256GCM"
LOCK_NAME = ".lock"

_NONCE_BYTES = 12
_TAG_BYTES = 16
_MAX_KEY_FILE = 64 * 1024
_MAX_KEK_FILE = 4096
_KEY_NAME = re.compile(r"key-(\d{4,})\.json")
_TMP_PREFIX = ".tmp-"
_AAD_LABEL = b"tokenproxy key file\x00"
_KEK_ID_LABEL = b"tokenproxy-kek-id"
_KEK_WRAP_LABEL = b"tokenproxy-kek-wrap-v1"
_FIELDS = ("format", "version", "state", "created_at", "kek_id", "alg", "nonce", "wrapped_key")
_GROUP_OTHER = 0o077
_DIR_UNSAFE = 0o022
_KEK_HINT = (
    f"set {KEK_ENV} to the base64 of {KEK_BYTES} bytes "
    "(`tokenproxy keys generate-kek` makes one), or pass --kek-file"
)


# --------------------------------------------------------------------------- the KEK


def generate_kek() -> bytes:
    """A fresh random key-encryption key."""
    return secrets.token_bytes(KEK_BYTES)


def encode_kek(kek: bytes) -> str:
    """The base64 text form of a KEK, as ``TOKENPROXY_KEK`` and KEK files hold it."""
    _check_kek(kek)
    return base64.b64encode(kek).decode("ascii")


def kek_id(kek: bytes) -> str:
    """The public fingerprint of a KEK: 16 hex digits, safe to print and to store."""
    _check_kek(kek)
    return hmac.new(kek, _KEK_ID_LABEL, sha256).digest()[:8].hex()


def parse_kek(text: str | bytes, source: str = KEK_ENV) -> bytes:
    """A KEK from its base64 text (surrounding whitespace allowed). The value is never echoed."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    raw = raw.strip()
    if not raw:
        raise KeyStoreError(f"{source} is empty: {_KEK_HINT}")
    try:
        kek = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise KeyStoreError(
            f"{source} is not valid base64: it must be the base64 of {KEK_BYTES} random bytes "
            "(`tokenproxy keys generate-kek` makes one)"
        ) from None
    if len(kek) != KEK_BYTES:
        raise KeyStoreError(
            f"{source} decodes to {len(kek)} bytes, a KEK is {KEK_BYTES}: "
            "`tokenproxy keys generate-kek` makes one"
        )
    return kek


def read_kek_file(
    path: str | os.PathLike[str], *, keys_dir: str | os.PathLike[str] | None = None
) -> bytes:
    """A KEK from a file holding the 32 raw bytes or their base64.

    Refused: a file readable or writable by group or others (like ssh refuses a private key),
    and a file inside the keys directory (the KEK is never stored beside what it wraps).
    """
    p = Path(path)
    if keys_dir is not None and _inside(p, Path(keys_dir)):
        raise KeyStoreError(
            f"the KEK file {p} is inside the keys directory {keys_dir}: the KEK must never be "
            "stored beside the keys it wraps; move it elsewhere"
        )
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise KeyStoreError(f"cannot read the KEK file {p}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyStoreError(f"the KEK file {p} is not a regular file")
        if st.st_mode & _GROUP_OTHER:
            raise KeyStoreError(
                f"the KEK file {p} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}): run `chmod 600 {p}`"
            )
        data = os.read(fd, _MAX_KEK_FILE + 1)
    except OSError as exc:
        raise KeyStoreError(f"cannot read the KEK file {p}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) == KEK_BYTES:
        return data
    if len(data) > _MAX_KEK_FILE:
        raise KeyStoreError(f"the KEK file {p} is too large to be a KEK")
    try:
        return parse_kek(data, f"the KEK file {p}")
    except KeyStoreError:
        raise KeyStoreError(
            f"the KEK file {p} must hold {KEK_BYTES} raw bytes or their base64 "
            f"({len(encode_kek(bytes(KEK_BYTES)))} characters); it holds neither"
        ) from None


def write_kek_file(
    path: str | os.PathLike[str], kek: bytes, *, keys_dir: str | os.PathLike[str] | None = None
) -> None:
    """Write a KEK's base64 to a new file of mode 0600; an existing file is never overwritten."""
    p = Path(path)
    if keys_dir is not None and _inside(p, Path(keys_dir)):
        raise KeyStoreError(
            f"{p} is inside the keys directory {keys_dir}: the KEK must never be stored "
            "beside the keys it wraps"
        )
    data = (encode_kek(kek) + "\n").encode("ascii")
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise KeyStoreError(f"{p} already exists: refusing to overwrite a KEK file") from None
    except OSError as exc:
        raise KeyStoreError(f"cannot create {p}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        _write_all(fd, data)
        os.fsync(fd)
    except OSError as exc:
        raise KeyStoreError(f"cannot write {p}: {exc.strerror}") from None
    finally:
        os.close(fd)


def resolve_kek(
    kek_file: str | os.PathLike[str] | None,
    env: Mapping[str, str],
    *,
    keys_dir: str | os.PathLike[str] | None = None,
    env_var: str = KEK_ENV,
    option: str = "--kek-file",
) -> bytes:
    """The KEK from ``kek_file`` if given, else from ``env[env_var]``; else a clear error.

    ``env_var``/``option`` name where a *new* KEK comes from for ``keys rewrap``.
    """
    if kek_file is not None:
        return read_kek_file(kek_file, keys_dir=keys_dir)
    text = env.get(env_var)
    if text is None or not text.strip():
        if env_var == KEK_ENV:
            raise KeyStoreError(f"no key-encryption key: {_KEK_HINT}")
        raise KeyStoreError(
            f"no KEK given: set {env_var} to the base64 of {KEK_BYTES} bytes "
            f"(`tokenproxy keys generate-kek` makes one), or pass {option}"
        )
    return parse_kek(text, env_var)


def _check_kek(kek: bytes) -> None:
    if not isinstance(kek, bytes) or len(kek) != KEK_BYTES:
        raise KeyStoreError(f"a KEK is {KEK_BYTES} bytes")


def _wrap_key(kek: bytes) -> bytes:
    _check_kek(kek)
    return hmac.new(kek, _KEK_WRAP_LABEL, sha256).digest()


def _inside(path: Path, directory: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve())


# --------------------------------------------------------------------- one key file


def key_file_name(version: int) -> str:
    """The file name of a data key version: ``key-0001.json``."""
    return f"key-{version:04d}.json"


@dataclass(frozen=True, slots=True)
class _Header:
    """A parsed, not yet authenticated key file."""

    format: int
    version: int
    state: KeyState
    created_at: str
    kek_id: str
    alg: str
    nonce: bytes = field(repr=False)
    wrapped: bytes = field(repr=False)

    def aad(self) -> bytes:
        return _aad(self.format, self.version, self.state, self.created_at, self.kek_id, self.alg)


def _aad(fmt: int, version: int, state: KeyState, created_at: str, kid: str, alg: str) -> bytes:
    meta = {
        "format": fmt,
        "version": version,
        "state": str(state),
        "created_at": created_at,
        "kek_id": kid,
        "alg": alg,
    }
    canonical = json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return _AAD_LABEL + canonical.encode("ascii")


def encode_key_file(key: DataKey, kek: bytes) -> bytes:
    """The bytes of a key file holding ``key`` wrapped under ``kek`` (a fresh nonce each call)."""
    kid = kek_id(kek)
    nonce = secrets.token_bytes(_NONCE_BYTES)
    cipher = AES.new(_wrap_key(kek), AES.MODE_GCM, nonce=nonce, mac_len=_TAG_BYTES)
    cipher.update(_aad(FORMAT, key.version, key.state, key.created_at, kid, WRAP_ALG))
    sealed, tag = cipher.encrypt_and_digest(key.material)
    doc = {
        "format": FORMAT,
        "version": key.version,
        "state": str(key.state),
        "created_at": key.created_at,
        "kek_id": kid,
        "alg": WRAP_ALG,
        "nonce": base64.b64encode(nonce).decode("ascii"),
        "wrapped_key": base64.b64encode(sealed + tag).decode("ascii"),
    }
    return (json.dumps(doc, indent=2) + "\n").encode("ascii")


def decode_key_file(data: bytes, kek: bytes, *, name: str = "the key file") -> DataKey:
    """The data key in a key file, authenticated under ``kek``; ``name`` is used in errors.

    The state returned is the one stored in the file (see the load rule for several actives).
    """
    header = _parse(data, name)
    given = kek_id(kek)
    if header.kek_id != given:
        raise KeyStoreError(
            f"{name} is wrapped under KEK id {header.kek_id}, but the KEK given has id "
            f"{given}: wrong KEK ({_KEK_HINT})"
        )
    return _unwrap(header, kek, name)


def _parse(data: bytes, name: str) -> _Header:
    corrupt = f"{name} is corrupted or truncated"
    fix = "restore it from a backup"
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise KeyStoreError(f"{corrupt} (not valid JSON): {fix}") from None
    if not isinstance(doc, dict):
        raise KeyStoreError(f"{corrupt} (not a JSON object): {fix}")
    fmt = doc.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise KeyStoreError(f"{corrupt} (no valid `format` field): {fix}")
    if fmt > FORMAT:
        raise KeyStoreError(
            f"{name} has format {fmt}, written by a newer tokenproxy (this one reads format "
            f"{FORMAT} and older): upgrade tokenproxy"
        )
    extra = sorted(set(doc) - set(_FIELDS))
    missing = [f for f in _FIELDS if f not in doc]
    if extra or missing:
        what = f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(extra)}"
        raise KeyStoreError(f"{corrupt} ({what}): {fix}")
    version, state, created_at = doc["version"], doc["state"], doc["created_at"]
    kid, alg = doc["kek_id"], doc["alg"]
    if not _is_int(version) or version < 1:
        raise KeyStoreError(f"{corrupt} (bad `version`): {fix}")
    if state not in {s.value for s in KeyState}:
        raise KeyStoreError(f"{corrupt} (unknown state {str(state)[:20]!r}): {fix}")
    if not isinstance(created_at, str) or not isinstance(kid, str):
        raise KeyStoreError(f"{corrupt} (bad `created_at` or `kek_id`): {fix}")
    if alg != WRAP_ALG:
        raise KeyStoreError(f"{corrupt} (unknown wrapping {str(alg)[:20]!r}): {fix}")
    nonce = _b64(doc["nonce"])
    wrapped = _b64(doc["wrapped_key"])
    if nonce is None or len(nonce) != _NONCE_BYTES:
        raise KeyStoreError(f"{corrupt} (bad `nonce`): {fix}")
    if wrapped is None or len(wrapped) != DATA_KEY_BYTES + _TAG_BYTES:
        raise KeyStoreError(f"{corrupt} (bad `wrapped_key`): {fix}")
    return _Header(fmt, version, KeyState(state), created_at, kid, alg, nonce, wrapped)


def _unwrap(header: _Header, kek: bytes, name: str) -> DataKey:
    cipher = AES.new(_wrap_key(kek), AES.MODE_GCM, nonce=header.nonce, mac_len=_TAG_BYTES)
    cipher.update(header.aad())
    sealed, tag = header.wrapped[:-_TAG_BYTES], header.wrapped[-_TAG_BYTES:]
    try:
        material = cipher.decrypt_and_verify(sealed, tag)
    except ValueError:
        raise KeyStoreError(
            f"{name} fails authentication under KEK id {header.kek_id}: the file was modified "
            "or corrupted; restore it from a backup"
        ) from None
    assert isinstance(material, bytes)
    return DataKey(header.version, material, header.state, header.created_at)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _b64(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None


# ------------------------------------------------------------------------ the directory


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What ``keys list`` shows of one key version: never any material."""

    version: int
    state: KeyState
    """The state in force (see the load rule: a stale ``active`` reads as decrypt-only)."""
    stored_state: KeyState
    """The state written in the file."""
    created_at: str
    kek_id: str
    path: Path

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "state": str(self.state),
            "stored_state": str(self.stored_state),
            "created_at": self.created_at,
            "kek_id": self.kek_id,
            "file": str(self.path),
        }


class KeyAction(StrEnum):
    """What a changing command did, named as the audit log names it."""

    INIT = "key_init"
    ROTATE = "key_rotate"
    RETIRE = "key_retire"
    REWRAP = "key_rewrap"


@dataclass(frozen=True)
class KeyChange:
    """What a changing command wrote, for the audit log and for a running proxy to swap in."""

    action: KeyAction
    keyring: Keyring
    """The keyring as it is on disk now."""
    kek_id: str
    """The KEK the keyring is wrapped under now."""
    created: int | None = None
    demoted: tuple[int, ...] = ()
    """Versions rewritten from active to decrypt-only."""
    retired: tuple[int, ...] = ()
    rewrapped: tuple[int, ...] = ()
    previous_kek_id: str | None = None

    @property
    def changed(self) -> bool:
        """Whether any file was written."""
        return bool(self.created or self.demoted or self.retired or self.rewrapped)

    def audit_detail(self) -> dict[str, Any]:
        """The fields of the audit row: versions and KEK ids only, never material."""
        return {
            "action": str(self.action),
            "active": self.keyring.active.version,
            "created": self.created,
            "demoted": list(self.demoted),
            "retired": list(self.retired),
            "rewrapped": list(self.rewrapped),
            "kek_id": self.kek_id,
            "previous_kek_id": self.previous_kek_id,
        }


@dataclass(frozen=True, slots=True)
class _Entry:
    path: Path
    kek_id: str
    key: DataKey  # with the state stored in the file


def load_keyring(directory: str | os.PathLike[str], kek: bytes) -> Keyring:
    """The keyring in ``directory``, every file authenticated under ``kek``."""
    d = Path(directory)
    return _keyring(d, _load(d, {kek_id(kek): kek}))


def list_keys(directory: str | os.PathLike[str], kek: bytes) -> tuple[KeyInfo, ...]:
    """Every key version in ``directory``, authenticated under ``kek``, oldest first."""
    d = Path(directory)
    entries = _load(d, {kek_id(kek): kek})
    effective = _effective(entries)
    return tuple(
        KeyInfo(
            e.key.version, effective[e.key.version], e.key.state, e.key.created_at, e.kek_id, e.path
        )
        for e in entries
    )


def init_keyring(directory: str | os.PathLike[str], kek: bytes) -> KeyChange:
    """Create ``directory`` (mode 0700) if needed and its first data key, version 1, active.

    Refused if the directory already holds a key version.
    """
    d = Path(directory)
    kid = kek_id(kek)
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyStoreError(f"cannot create the keys directory {d}: {exc.strerror}") from None
    with _locked(d):
        existing = _scan(d)
        if existing:
            versions = ", ".join(str(v) for v, _ in existing)
            raise KeyStoreError(
                f"{d}/ already holds key versions {versions}: `tokenproxy keys init` makes the "
                "first key only; use `tokenproxy keys rotate` for a new one"
            )
        key = DataKey(1, secrets.token_bytes(DATA_KEY_BYTES), KeyState.ACTIVE, _now())
        _write_atomic(d, key_file_name(1), encode_key_file(key, kek))
        return KeyChange(KeyAction.INIT, load_keyring(d, kek), kid, created=1)


def rotate_keys(directory: str | os.PathLike[str], kek: bytes) -> KeyChange:
    """A new active data key; the previous active one becomes decrypt-only.

    The new file is written (as active) before the old one is demoted: see the module's
    crash-safety rule. Refused if no key is active (the newest file was lost): a new key
    could then reuse the lost version's number, and tokens made under it would resolve wrong.
    """
    d = Path(directory)
    kid = kek_id(kek)
    with _locked(d):
        entries = _load(d, {kid: kek})
        _keyring(d, entries)  # refuses a keyring without an active key
        version = max(e.key.version for e in entries) + 1
        key = DataKey(version, secrets.token_bytes(DATA_KEY_BYTES), KeyState.ACTIVE, _now())
        _write_atomic(d, key_file_name(version), encode_key_file(key, kek))
        demoted = _demote_stale(d, entries, kek, keep=version)
        return KeyChange(
            KeyAction.ROTATE, load_keyring(d, kek), kid, created=version, demoted=demoted
        )


def retire_key(directory: str | os.PathLike[str], kek: bytes, version: int) -> KeyChange:
    """Retire a decrypt-only version: tokens made under it can no longer be resolved.

    The active version is refused; an already retired one is left as it is (nothing written).
    """
    d = Path(directory)
    kid = kek_id(kek)
    with _locked(d):
        entries = _load(d, {kid: kek})
        active = _keyring(d, entries).active.version
        effective = _effective(entries)
        state = effective.get(version)
        if state is None:
            have = ", ".join(str(e.key.version) for e in entries)
            raise KeyStoreError(f"there is no key version {version} in {d}/ (it has {have})")
        if state is KeyState.ACTIVE:
            raise KeyStoreError(
                f"key version {version} is the active key and cannot be retired: run "
                "`tokenproxy keys rotate` first, then retire it once its tokens are no longer "
                "needed"
            )
        demoted = _demote_stale(
            d, [e for e in entries if e.key.version != version], kek, keep=active
        )
        retired: tuple[int, ...] = ()
        entry = next(e for e in entries if e.key.version == version)
        if entry.key.state is not KeyState.RETIRED:
            data = encode_key_file(entry.key.with_state(KeyState.RETIRED), kek)
            _write_atomic(d, entry.path.name, data)
            retired = (version,)
        return KeyChange(
            KeyAction.RETIRE, load_keyring(d, kek), kid, demoted=demoted, retired=retired
        )


def rewrap_keys(directory: str | os.PathLike[str], kek: bytes, new_kek: bytes) -> KeyChange:
    """Rewrap every key file under ``new_kek``: the data keys, and so every token, stay the same.

    Files already under ``new_kek`` are skipped, so re-running an interrupted rewrap with the
    same two KEKs finishes it. Every file is authenticated before any is rewritten.
    """
    d = Path(directory)
    old_id, new_id = kek_id(kek), kek_id(new_kek)
    if old_id == new_id:
        raise KeyStoreError("the new KEK is the same as the current one: nothing to rewrap")
    with _locked(d):
        entries = _load(d, {old_id: kek, new_id: new_kek})
        _keyring(d, entries)  # a keyring that cannot load is restored, not rewrapped
        rewrapped: list[int] = []
        for e in entries:
            if e.kek_id == old_id:
                _write_atomic(d, e.path.name, encode_key_file(e.key, new_kek))
                rewrapped.append(e.key.version)
        return KeyChange(
            KeyAction.REWRAP,
            load_keyring(d, new_kek),
            new_id,
            rewrapped=tuple(rewrapped),
            previous_kek_id=old_id,
        )


def _effective(entries: list[_Entry]) -> dict[int, KeyState]:
    """The load rule: of several files that say active, the highest version is active."""
    actives = [e.key.version for e in entries if e.key.state is KeyState.ACTIVE]
    top = max(actives, default=None)
    return {
        e.key.version: (
            KeyState.DECRYPT_ONLY
            if e.key.state is KeyState.ACTIVE and e.key.version != top
            else e.key.state
        )
        for e in entries
    }


def _keyring(d: Path, entries: list[_Entry]) -> Keyring:
    effective = _effective(entries)
    keys = tuple(e.key.with_state(effective[e.key.version]) for e in entries)
    try:
        return Keyring(keys)
    except KeyringError:
        states = ", ".join(f"v{k.version} {k.state}" for k in keys)
        raise KeyStoreError(
            f"{d}/ has no active key ({states}): the newest key file was probably deleted; "
            "restore it from a backup"
        ) from None


def _demote_stale(d: Path, entries: list[_Entry], kek: bytes, *, keep: int) -> tuple[int, ...]:
    """Rewrite as decrypt-only every file that still says active but is not ``keep``."""
    demoted = []
    for e in entries:
        if e.key.state is KeyState.ACTIVE and e.key.version != keep:
            data = encode_key_file(e.key.with_state(KeyState.DECRYPT_ONLY), kek)
            _write_atomic(d, e.path.name, data)
            demoted.append(e.key.version)
    return tuple(demoted)


def _check_dir(d: Path) -> None:
    try:
        st = d.stat()
    except FileNotFoundError:
        raise KeyStoreError(
            f"the keys directory {d} does not exist: run `tokenproxy keys init` (or pass "
            "--keys / set TOKENPROXY_KEYS)"
        ) from None
    except OSError as exc:
        raise KeyStoreError(f"cannot read the keys directory {d}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise KeyStoreError(f"the keys directory {d} is not a directory")
    if st.st_mode & _DIR_UNSAFE:
        raise KeyStoreError(
            f"the keys directory {d} is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}): run `chmod go-w {d}`"
        )


def _scan(d: Path) -> list[tuple[int, Path]]:
    """The key files in ``d``, by version; anything else in the directory is ignored."""
    _check_dir(d)
    try:
        names = os.listdir(d)
    except OSError as exc:
        raise KeyStoreError(f"cannot list the keys directory {d}: {exc.strerror}") from None
    found = []
    for name in names:
        m = _KEY_NAME.fullmatch(name)
        if m is not None:
            version = int(m.group(1))
            if name != key_file_name(version):
                raise KeyStoreError(
                    f"{d / name} is not a key file name tokenproxy writes (expected "
                    f"{key_file_name(version)}): rename it back"
                )
            found.append((version, d / name))
    return sorted(found)


def _read_key_file(path: Path) -> bytes:
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise KeyStoreError(
                f"{path} is not a regular file (a symlink?): replace it with the key file itself"
            )
        if st.st_mode & _GROUP_OTHER:
            raise KeyStoreError(
                f"{path} is accessible by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}): run `chmod 600 {path}`"
            )
        if st.st_size > _MAX_KEY_FILE:
            raise KeyStoreError(f"{path} is too large to be a key file: restore it from a backup")
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            chunks = []
            while chunk := os.read(fd, _MAX_KEY_FILE + 1):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
    except OSError as exc:
        raise KeyStoreError(f"cannot read {path}: {exc.strerror}") from None


def _load(d: Path, keks: Mapping[str, bytes]) -> list[_Entry]:
    """Every key file in ``d``, parsed, checked and authenticated under the KEK it names."""
    files = _scan(d)
    if not files:
        raise KeyStoreError(f"there are no key files in {d}/: run `tokenproxy keys init`")
    headers = [(path, _parse(_read_key_file(path), str(path))) for _, path in files]
    for (version, _), (path, header) in zip(files, headers, strict=True):
        if header.version != version:
            raise KeyStoreError(
                f"{path} holds key version {header.version}, not {version}: key files were "
                "renamed or swapped; restore them from a backup"
            )
    ids = sorted({h.kek_id for _, h in headers})
    unknown = [i for i in ids if i not in keks]
    if unknown:
        given = ("KEKs given have ids " if len(keks) > 1 else "KEK given has id ") + ", ".join(
            sorted(keks)
        )
        if len(ids) > 1:
            raise KeyStoreError(
                f"the key files in {d}/ are wrapped under several KEKs (ids {', '.join(ids)}): a "
                "`tokenproxy keys rewrap` was interrupted; run it again with the old KEK "
                f"(--kek-file or {KEK_ENV}) and the new one (--new-kek-file or {NEW_KEK_ENV}) "
                "to finish it"
            )
        raise KeyStoreError(
            f"the key files in {d}/ are wrapped under KEK id {ids[0]}, but the {given}: "
            "wrong KEK (after a `keys rewrap`, use the new one)"
        )
    entries = []
    for path, header in headers:
        key = _unwrap(header, keks[header.kek_id], str(path))
        entries.append(_Entry(path, header.kek_id, key))
    return entries


# --------------------------------------------------------------------------- writing


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(d: Path, name: str, data: bytes) -> None:
    """Replace ``d/name`` with ``data`` so that it is always the old or the new content, 0600."""
    tmp = d / f"{_TMP_PREFIX}{name}-{secrets.token_hex(4)}"
    try:
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, d / name)
    except BaseException as exc:
        with suppress(OSError):  # else the next changing command sweeps it
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise KeyStoreError(f"cannot write {d / name}: {exc.strerror}") from None
        raise
    try:
        _fsync_dir(d)
    except OSError as exc:
        raise KeyStoreError(
            f"wrote {d / name} but could not sync {d}: {exc.strerror}; check the disk"
        ) from None


def _sweep_temp(d: Path) -> None:
    """Remove temporary files a crash left behind (only under the lock, so none is in use)."""
    for name in os.listdir(d):
        if name.startswith(_TMP_PREFIX + "key-"):
            with suppress(OSError):
                (d / name).unlink()


@contextmanager
def _locked(d: Path) -> Iterator[None]:
    """Hold the keys directory's exclusive lock: one changing command at a time."""
    _check_dir(d)
    try:
        fd = os.open(d / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise KeyStoreError(f"cannot lock {d}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise KeyStoreError(
                f"another `tokenproxy keys` command is changing {d}/: wait for it, then retry"
            ) from None
        _sweep_temp(d)
        yield
    finally:
        os.close(fd)
