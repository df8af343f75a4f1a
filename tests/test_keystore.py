"""proxy.keystore on real files: format, KEK handling, errors that leave files alone, crashes."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import keystore
from proxy.crypto.keyring import DataKey, KeyState
from proxy.errors import KeyringError, KeyStoreError
from proxy.keystore import (
    FORMAT,
    KeyAction,
    decode_key_file,
    encode_kek,
    encode_key_file,
    generate_kek,
    init_keyring,
    kek_id,
    list_keys,
    load_keyring,
    parse_kek,
    read_kek_file,
    resolve_kek,
    retire_key,
    rewrap_keys,
    rotate_keys,
    write_kek_file,
)

KEK = bytes(range(32))
OTHER_KEK = bytes(range(1, 33))


class Crash(BaseException):
    """A simulated process death: not an Exception, so nothing may swallow it."""


@pytest.fixture
def kdir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def ring3(kdir: Path) -> Path:
    """v1 retired, v2 decrypt-only, v3 active."""
    init_keyring(kdir, KEK)
    rotate_keys(kdir, KEK)
    rotate_keys(kdir, KEK)
    retire_key(kdir, KEK, 1)
    return kdir


def snapshot(d: Path) -> dict[str, tuple[bytes, int]]:
    """Every file in d (name -> bytes and mode), to prove a refusal touched nothing."""
    if not d.exists():
        return {}
    return {
        p.name: (p.read_bytes(), stat.S_IMODE(p.lstat().st_mode))
        for p in sorted(d.iterdir())
        if p.is_file() and not p.is_symlink()
    }


def materials(d: Path, kek: bytes = KEK) -> dict[int, bytes]:
    return {k.version: k.material for k in load_keyring(d, kek).keys}


def crash_at(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Make the n-th os.replace (1-based) die before it renames anything."""
    real = os.replace
    calls = 0

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        nonlocal calls
        calls += 1
        if calls == n:
            raise Crash(f"crash at replace #{n}")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def count_replaces(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append(Path(dst).name)
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return seen


# ------------------------------------------------------------------------------ the KEK


def test_kek_id_is_a_stable_fingerprint() -> None:
    assert kek_id(KEK) == kek_id(bytes(KEK))
    assert len(kek_id(KEK)) == 16
    int(kek_id(KEK), 16)
    assert kek_id(KEK) != kek_id(OTHER_KEK)
    assert KEK.hex()[:16] not in kek_id(KEK)


def test_generate_and_parse_kek() -> None:
    kek = generate_kek()
    assert len(kek) == 32
    text = encode_kek(kek)
    assert len(text) == 44
    assert parse_kek(text) == kek
    assert parse_kek(f"  {text}\n") == kek


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "is empty"),
        ("not base64!!", "not valid base64"),
        (base64.b64encode(b"x" * 16).decode(), "decodes to 16 bytes"),
        (base64.b64encode(b"x" * 33).decode(), "decodes to 33 bytes"),
    ],
)
def test_parse_kek_refuses_bad_values_without_echoing_them(text: str, needle: str) -> None:
    with pytest.raises(KeyStoreError, match=needle) as err:
        parse_kek(text)
    if text:
        assert text not in str(err.value)


def test_resolve_kek_missing_says_what_to_do(kdir: Path) -> None:
    with pytest.raises(KeyStoreError) as err:
        resolve_kek(None, {}, keys_dir=kdir)
    assert "set TOKENPROXY_KEK to the base64 of 32 bytes" in str(err.value)
    assert "--kek-file" in str(err.value)
    with pytest.raises(KeyStoreError, match=r"TOKENPROXY_NEW_KEK.*--new-kek-file"):
        resolve_kek(None, {}, env_var="TOKENPROXY_NEW_KEK", option="--new-kek-file")


def test_resolve_kek_prefers_the_file(tmp_path: Path) -> None:
    f = tmp_path / "kek"
    write_kek_file(f, OTHER_KEK)
    env = {"TOKENPROXY_KEK": encode_kek(KEK)}
    assert resolve_kek(f, env) == OTHER_KEK
    assert resolve_kek(None, env) == KEK


def test_kek_file_raw_or_base64(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.write_bytes(KEK)
    raw.chmod(0o600)
    assert read_kek_file(raw) == KEK
    b64 = tmp_path / "b64"
    b64.write_text(encode_kek(KEK) + "\n")
    b64.chmod(0o400)
    assert read_kek_file(b64) == KEK
    bad = tmp_path / "bad"
    bad.write_text("hello")
    bad.chmod(0o600)
    with pytest.raises(KeyStoreError, match=r"32 raw bytes or their base64"):
        read_kek_file(bad)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o620])
def test_kek_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    f = tmp_path / "kek"
    f.write_text(encode_kek(KEK))
    f.chmod(mode)
    with pytest.raises(KeyStoreError) as err:
        read_kek_file(f)
    assert f"chmod 600 {f}" in str(err.value)
    assert f"{mode:04o}" in str(err.value)
    assert encode_kek(KEK) not in str(err.value)


def test_kek_file_inside_keys_dir_is_refused(kdir: Path) -> None:
    kdir.mkdir()
    f = kdir / "kek"
    f.write_text(encode_kek(KEK))
    f.chmod(0o600)
    with pytest.raises(KeyStoreError, match=r"inside the keys directory"):
        read_kek_file(f, keys_dir=kdir)
    with pytest.raises(KeyStoreError, match=r"inside the keys directory"):
        read_kek_file(kdir / "sub" / ".." / "kek", keys_dir=kdir)
    with pytest.raises(KeyStoreError, match=r"inside the keys directory"):
        write_kek_file(kdir / "new", KEK, keys_dir=kdir)


def test_kek_file_missing(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match=r"cannot read the KEK file"):
        read_kek_file(tmp_path / "nope")


def test_write_kek_file_is_0600_and_never_overwrites(tmp_path: Path) -> None:
    f = tmp_path / "kek"
    old = os.umask(0)
    try:
        write_kek_file(f, KEK)
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert read_kek_file(f) == KEK
    with pytest.raises(KeyStoreError, match=r"already exists"):
        write_kek_file(f, OTHER_KEK)
    assert read_kek_file(f) == KEK


# -------------------------------------------------------------------------- one key file


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    material=st.binary(min_size=32, max_size=32),
    version=st.integers(1, 10**6),
    state=st.sampled_from(KeyState),
    created_at=st.text(max_size=40),
)
def test_key_file_round_trip(
    material: bytes, version: int, state: KeyState, created_at: str
) -> None:
    key = DataKey(version, material, state, created_at)
    data = encode_key_file(key, KEK)
    out = decode_key_file(data, KEK)
    assert (out.version, out.material, out.state, out.created_at) == (
        version,
        material,
        state,
        created_at,
    )
    assert base64.b64encode(material) not in data
    assert material.hex().encode() not in data
    assert encode_key_file(key, KEK) != data  # a fresh nonce each time


_KEY = DataKey(7, bytes(range(100, 132)), KeyState.DECRYPT_ONLY, "2026-01-01T00:00:00Z")
_DATA = encode_key_file(_KEY, KEK)


@settings(max_examples=300)
@given(pos=st.integers(0, len(_DATA) - 1), delta=st.integers(1, 255))
def test_a_changed_byte_never_yields_another_key(pos: int, delta: int) -> None:
    """Any one-byte change is refused, or (in JSON whitespace) yields the very same key."""
    data = bytearray(_DATA)
    data[pos] = (data[pos] + delta) % 256
    try:
        out = decode_key_file(bytes(data), KEK)
    except KeyStoreError:
        return
    assert (out.version, out.material, out.state, out.created_at) == (
        _KEY.version,
        _KEY.material,
        _KEY.state,
        _KEY.created_at,
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("state", "active"),
        ("state", "retired"),
        ("version", 8),
        ("created_at", "2020-01-01T00:00:00Z"),
    ],
)
def test_metadata_is_authenticated(field: str, value: object) -> None:
    doc = json.loads(_DATA)
    doc[field] = value
    with pytest.raises(KeyStoreError, match=r"fails authentication.*restore it from a backup"):
        decode_key_file(json.dumps(doc).encode(), KEK)


def test_every_truncation_is_refused() -> None:
    # The last byte is the newline: dropping only it leaves the whole JSON document.
    for n in range(len(_DATA) - 1):
        with pytest.raises(KeyStoreError, match=r"corrupted or truncated"):
            decode_key_file(_DATA[:n], KEK)


def test_wrong_kek_names_both_ids() -> None:
    with pytest.raises(KeyStoreError) as err:
        decode_key_file(_DATA, OTHER_KEK)
    assert kek_id(KEK) in str(err.value)
    assert kek_id(OTHER_KEK) in str(err.value)
    assert "wrong KEK" in str(err.value)


def test_forged_kek_id_still_fails_authentication() -> None:
    doc = json.loads(_DATA)
    doc["kek_id"] = kek_id(OTHER_KEK)
    with pytest.raises(KeyStoreError, match=r"fails authentication"):
        decode_key_file(json.dumps(doc).encode(), OTHER_KEK)


def test_newer_format_says_upgrade() -> None:
    doc = json.loads(_DATA)
    doc["format"] = FORMAT + 1
    doc["something_new"] = True
    with pytest.raises(KeyStoreError, match=r"newer tokenproxy.*upgrade tokenproxy"):
        decode_key_file(json.dumps(doc).encode(), KEK)


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.pop("nonce"),
        lambda d: d.update(extra=1),
        lambda d: d.update(format="1"),
        lambda d: d.update(format=True),
        lambda d: d.update(version=0),
        lambda d: d.update(state="dormant"),
        lambda d: d.update(alg="A128KW"),
        lambda d: d.update(nonce="AAAA"),
        lambda d: d.update(wrapped_key="!!"),
    ],
)
def test_malformed_fields_are_corrupted(edit: Callable[[dict[str, object]], object]) -> None:
    doc = json.loads(_DATA)
    edit(doc)
    with pytest.raises(KeyStoreError, match=r"corrupted"):
        decode_key_file(json.dumps(doc).encode(), KEK)


def test_file_format_fields(kdir: Path) -> None:
    init_keyring(kdir, KEK)
    doc = json.loads((kdir / "key-0001.json").read_text())
    assert set(doc) == {
        "format",
        "version",
        "state",
        "created_at",
        "kek_id",
        "alg",
        "nonce",
        "wrapped_key",
    }
    assert doc["format"] == 1
    assert doc["version"] == 1
    assert doc["state"] == "active"
    assert doc["kek_id"] == kek_id(KEK)
    assert doc["alg"] == "A256GCM"
    assert doc["created_at"].endswith("Z")


# ---------------------------------------------------------------------- the directory


def test_init_creates_one_active_key_mode_0600(kdir: Path) -> None:
    change = init_keyring(kdir, KEK)
    assert change.action is KeyAction.INIT
    assert change.created == 1
    assert change.changed
    f = kdir / "key-0001.json"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert stat.S_IMODE(kdir.stat().st_mode) & 0o077 == 0
    ring = load_keyring(kdir, KEK)
    assert [(k.version, k.state) for k in ring.keys] == [(1, KeyState.ACTIVE)]
    assert ring.active.material == change.keyring.active.material


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_key_files_are_0600_whatever_the_umask(kdir: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        init_keyring(kdir, KEK)
        rotate_keys(kdir, KEK)
    finally:
        os.umask(old)
    for name in ("key-0001.json", "key-0002.json"):
        assert stat.S_IMODE((kdir / name).stat().st_mode) == 0o600


def test_init_refuses_existing_keys(kdir: Path) -> None:
    init_keyring(kdir, KEK)
    before = snapshot(kdir)
    with pytest.raises(KeyStoreError, match=r"already holds key versions 1.*keys rotate"):
        init_keyring(kdir, KEK)
    assert snapshot(kdir) == before


def test_init_in_a_directory_with_a_readme(kdir: Path) -> None:
    kdir.mkdir()
    (kdir / "README.md").write_text("# keys\n")
    init_keyring(kdir, KEK)
    assert load_keyring(kdir, KEK).active.version == 1


def test_rotate(kdir: Path) -> None:
    init_keyring(kdir, KEK)
    v1 = load_keyring(kdir, KEK).active.material
    change = rotate_keys(kdir, KEK)
    assert change.action is KeyAction.ROTATE
    assert (change.created, change.demoted) == (2, (1,))
    ring = load_keyring(kdir, KEK)
    assert ring.active.version == 2
    assert ring.get(1).state is KeyState.DECRYPT_ONLY
    assert ring.get(1).material == v1
    assert ring.active.material != v1
    assert change.audit_detail() == {
        "action": "key_rotate",
        "active": 2,
        "created": 2,
        "demoted": [1],
        "retired": [],
        "rewrapped": [],
        "kek_id": kek_id(KEK),
        "previous_kek_id": None,
    }


def test_retire(ring3: Path) -> None:
    ring = load_keyring(ring3, KEK)
    assert [k.state for k in ring.keys] == [
        KeyState.RETIRED,
        KeyState.DECRYPT_ONLY,
        KeyState.ACTIVE,
    ]
    with pytest.raises(KeyringError, match=r"retired"):
        ring.get(1)
    assert [k.version for k in ring.usable()] == [3, 2]
    change = retire_key(ring3, KEK, 2)
    assert change.retired == (2,)
    assert load_keyring(ring3, KEK).active.version == 3


def test_retire_refuses_the_active_key(ring3: Path) -> None:
    before = snapshot(ring3)
    with pytest.raises(KeyStoreError, match=r"v?3 is the active key and cannot be retired"):
        retire_key(ring3, KEK, 3)
    with pytest.raises(KeyStoreError, match=r"no key version 9.*it has 1, 2, 3"):
        retire_key(ring3, KEK, 9)
    assert snapshot(ring3) == before


def test_retire_twice_changes_nothing(ring3: Path) -> None:
    before = snapshot(ring3)
    change = retire_key(ring3, KEK, 1)
    assert change.retired == ()
    assert not change.changed
    assert snapshot(ring3) == before


def test_list_keys_shows_no_material(ring3: Path) -> None:
    infos = list_keys(ring3, KEK)
    assert [(i.version, i.state) for i in infos] == [
        (1, KeyState.RETIRED),
        (2, KeyState.DECRYPT_ONLY),
        (3, KeyState.ACTIVE),
    ]
    assert all(i.kek_id == kek_id(KEK) for i in infos)
    text = json.dumps([i.as_dict() for i in infos])
    for m in materials(ring3).values():
        assert base64.b64encode(m).decode() not in text
        assert m.hex() not in text


def test_rewrap_keeps_every_data_key_and_token(ring3: Path) -> None:
    before = materials(ring3)
    ff1_before = load_keyring(ring3, KEK).active.ff1(10).encrypt_int(1234567, 7, b"phone")
    change = rewrap_keys(ring3, KEK, OTHER_KEK)
    assert change.action is KeyAction.REWRAP
    assert change.rewrapped == (1, 2, 3)
    assert (change.previous_kek_id, change.kek_id) == (kek_id(KEK), kek_id(OTHER_KEK))
    assert materials(ring3, OTHER_KEK) == before
    after = load_keyring(ring3, OTHER_KEK)
    assert after.active.ff1(10).encrypt_int(1234567, 7, b"phone") == ff1_before
    assert [k.state for k in after.keys] == [
        KeyState.RETIRED,
        KeyState.DECRYPT_ONLY,
        KeyState.ACTIVE,
    ]
    for info in list_keys(ring3, OTHER_KEK):
        assert info.kek_id == kek_id(OTHER_KEK)
        assert stat.S_IMODE(info.path.stat().st_mode) == 0o600
    with pytest.raises(KeyStoreError, match=r"wrong KEK.*after a `keys rewrap`, use the new one"):
        load_keyring(ring3, KEK)
    # Done already: running it again writes nothing.
    again = rewrap_keys(ring3, KEK, OTHER_KEK)
    assert again.rewrapped == ()
    assert not again.changed


def test_rewrap_refuses_the_same_kek(ring3: Path) -> None:
    before = snapshot(ring3)
    with pytest.raises(KeyStoreError, match=r"same as the current one"):
        rewrap_keys(ring3, KEK, KEK)
    assert snapshot(ring3) == before


def test_rewrap_checks_every_file_before_writing_any(ring3: Path) -> None:
    (ring3 / "key-0003.json").write_text((ring3 / "key-0003.json").read_text()[:50])
    before = snapshot(ring3)
    with pytest.raises(KeyStoreError, match=r"key-0003.json is corrupted"):
        rewrap_keys(ring3, KEK, OTHER_KEK)
    assert snapshot(ring3) == before


# ------------------------------------------------------- refusals that leave files alone


def _truncate(d: Path) -> None:
    f = d / "key-0002.json"
    f.write_bytes(f.read_bytes()[:40])


def _garbage(d: Path) -> None:
    (d / "key-0002.json").write_bytes(b"\x00\xff" * 10)


def _empty(d: Path) -> None:
    (d / "key-0002.json").write_bytes(b"")


def _newer(d: Path) -> None:
    f = d / "key-0002.json"
    doc = json.loads(f.read_text())
    doc["format"] = 2
    f.write_text(json.dumps(doc))


def _flip_state(d: Path) -> None:
    f = d / "key-0001.json"
    doc = json.loads(f.read_text())
    doc["state"] = "decrypt-only"  # un-retire
    f.write_text(json.dumps(doc))


def _rename(d: Path) -> None:
    (d / "key-0003.json").rename(d / "key-0004.json")


def _swap(d: Path) -> None:
    a, b = d / "key-0001.json", d / "key-0002.json"
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)


def _group_readable(d: Path) -> None:
    (d / "key-0002.json").chmod(0o640)


def _world_writable_dir(d: Path) -> None:
    d.chmod(0o777)


def _symlink(d: Path) -> None:
    f = d / "key-0002.json"
    real = d.parent / "elsewhere.json"
    real.write_bytes(f.read_bytes())
    real.chmod(0o600)
    f.unlink()
    f.symlink_to(real)


def _odd_name(d: Path) -> None:
    (d / "key-0002.json").rename(d / "key-00002.json")


def _lost_active(d: Path) -> None:
    (d / "key-0003.json").unlink()


_OPS: list[Callable[[Path], object]] = [
    lambda d: load_keyring(d, KEK),
    lambda d: list_keys(d, KEK),
    lambda d: rotate_keys(d, KEK),
    lambda d: retire_key(d, KEK, 2),
    lambda d: rewrap_keys(d, KEK, OTHER_KEK),
]


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (_truncate, "key-0002.json is corrupted or truncated.*restore it from a backup"),
        (_garbage, "key-0002.json is corrupted or truncated"),
        (_empty, "key-0002.json is corrupted or truncated"),
        (_newer, "key-0002.json has format 2, written by a newer tokenproxy.*upgrade"),
        (_flip_state, "key-0001.json fails authentication"),
        (_rename, "key-0004.json holds key version 3, not 4.*renamed or swapped"),
        (_swap, "key-0001.json holds key version 2, not 1"),
        (
            _group_readable,
            r"key-0002.json is accessible by group or others \(mode 0640\): "
            r"run `chmod 600 .*key-0002.json`",
        ),
        (_world_writable_dir, r"writable by group or others \(mode 0777\): run `chmod go-w"),
        (_symlink, "key-0002.json is not a regular file"),
        (_odd_name, "key-00002.json is not a key file name tokenproxy writes"),
        (_lost_active, "has no active key.*restore it from a backup"),
    ],
)
@pytest.mark.parametrize("op", _OPS, ids=["load", "list", "rotate", "retire", "rewrap"])
def test_damage_is_refused_and_nothing_is_written(
    ring3: Path, damage: Callable[[Path], None], needle: str, op: Callable[[Path], object]
) -> None:
    if damage is _lost_active and op is _OPS[1]:
        pytest.skip("listing a keyring without an active key works: it is how one sees it")
    damage(ring3)
    before = snapshot(ring3)
    mode = stat.S_IMODE(ring3.stat().st_mode)
    with pytest.raises(KeyStoreError, match=needle):
        op(ring3)
    assert snapshot(ring3) == before
    assert stat.S_IMODE(ring3.stat().st_mode) == mode


@pytest.mark.parametrize("op", ["load", "rotate", "retire"])
def test_wrong_kek_is_refused_and_nothing_is_written(ring3: Path, op: str) -> None:
    before = snapshot(ring3)
    with pytest.raises(KeyStoreError) as err:
        if op == "load":
            load_keyring(ring3, OTHER_KEK)
        elif op == "rotate":
            rotate_keys(ring3, OTHER_KEK)
        else:
            retire_key(ring3, OTHER_KEK, 2)
    msg = str(err.value)
    assert "wrong KEK" in msg
    assert kek_id(KEK) in msg and kek_id(OTHER_KEK) in msg
    assert snapshot(ring3) == before


def test_list_shows_a_keyring_without_an_active_key(ring3: Path) -> None:
    _lost_active(ring3)
    assert [(i.version, i.state) for i in list_keys(ring3, KEK)] == [
        (1, KeyState.RETIRED),
        (2, KeyState.DECRYPT_ONLY),
    ]


def test_empty_and_missing_directories(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("hi")
    with pytest.raises(KeyStoreError, match=r"no key files in .*run `tokenproxy keys init`"):
        load_keyring(empty, KEK)
    with pytest.raises(KeyStoreError, match=r"does not exist: run `tokenproxy keys init`"):
        load_keyring(tmp_path / "missing", KEK)
    with pytest.raises(KeyStoreError, match=r"does not exist"):
        rotate_keys(tmp_path / "missing", KEK)
    assert not (tmp_path / "missing").exists()
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(KeyStoreError, match=r"not a directory"):
        load_keyring(f, KEK)


def test_other_files_in_the_directory_are_ignored(ring3: Path) -> None:
    (ring3 / "README.md").write_text("# keys\n")
    (ring3 / "key-1.json").write_text("not ours")
    (ring3 / "notes.txt").write_text("x")
    assert load_keyring(ring3, KEK).active.version == 3


def test_one_changing_command_at_a_time(ring3: Path) -> None:
    before = snapshot(ring3)
    fd = os.open(ring3 / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(KeyStoreError, match=r"another `tokenproxy keys` command"):
            rotate_keys(ring3, KEK)
        assert load_keyring(ring3, KEK).active.version == 3  # readers take no lock
    finally:
        os.close(fd)
    assert snapshot(ring3) == before
    rotate_keys(ring3, KEK)


def test_write_errors_become_keystore_errors(ring3: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    before = snapshot(ring3)
    with pytest.raises(KeyStoreError, match=r"cannot write .*No space left on device"):
        rotate_keys(ring3, KEK)
    assert snapshot(ring3) == before


# ---------------------------------------------------------------------- crash safety


def test_rotate_writes_the_new_key_before_demoting_the_old(
    kdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    init_keyring(kdir, KEK)
    seen = count_replaces(monkeypatch)
    rotate_keys(kdir, KEK)
    assert seen == ["key-0002.json", "key-0001.json"]


def test_crash_before_the_new_key_is_in_place(kdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init_keyring(kdir, KEK)
    before = snapshot(kdir)
    crash_at(monkeypatch, 1)
    with pytest.raises(Crash):
        rotate_keys(kdir, KEK)
    monkeypatch.undo()
    assert snapshot(kdir) == before
    assert load_keyring(kdir, KEK).active.version == 1


def test_crash_between_new_key_and_demotion(kdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init_keyring(kdir, KEK)
    v1 = materials(kdir)[1]
    crash_at(monkeypatch, 2)
    with pytest.raises(Crash):
        rotate_keys(kdir, KEK)
    monkeypatch.undo()
    # Both files say active: the highest version wins, the other reads as decrypt-only.
    assert json.loads((kdir / "key-0001.json").read_text())["state"] == "active"
    ring = load_keyring(kdir, KEK)
    assert ring.active.version == 2
    assert ring.get(1).state is KeyState.DECRYPT_ONLY
    assert ring.get(1).material == v1
    infos = list_keys(kdir, KEK)
    assert (infos[0].state, infos[0].stored_state) == (KeyState.DECRYPT_ONLY, KeyState.ACTIVE)
    # The next rotate finishes the demotion.
    change = rotate_keys(kdir, KEK)
    assert (change.created, change.demoted) == (3, (1, 2))
    assert [i.stored_state for i in list_keys(kdir, KEK)] == [
        KeyState.DECRYPT_ONLY,
        KeyState.DECRYPT_ONLY,
        KeyState.ACTIVE,
    ]


def test_retire_after_an_interrupted_rotate_finishes_it(
    kdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    init_keyring(kdir, KEK)
    rotate_keys(kdir, KEK)
    crash_at(monkeypatch, 2)
    with pytest.raises(Crash):
        rotate_keys(kdir, KEK)
    monkeypatch.undo()
    with pytest.raises(KeyStoreError, match=r"active key and cannot be retired"):
        retire_key(kdir, KEK, 3)
    change = retire_key(kdir, KEK, 1)
    assert (change.retired, change.demoted) == ((1,), (2,))
    assert [i.stored_state for i in list_keys(kdir, KEK)] == [
        KeyState.RETIRED,
        KeyState.DECRYPT_ONLY,
        KeyState.ACTIVE,
    ]


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_crash_at_any_point_of_any_command_loses_nothing(
    ring3: Path, n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a crash at any os.replace, every key is still there and the keyring loads."""
    before = materials(ring3)
    for op in (
        lambda: rotate_keys(ring3, KEK),
        lambda: retire_key(ring3, KEK, 2),
    ):
        crash_at(monkeypatch, n)
        with contextlib.suppress(Crash):
            op()
        monkeypatch.undo()
        after = materials(ring3)
        assert {v: after[v] for v in before} == before
        assert load_keyring(ring3, KEK).active.version == max(after)
        assert not [p for p in ring3.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_interrupted_rewrap_is_finished_by_running_it_again(
    ring3: Path, n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = materials(ring3)
    crash_at(monkeypatch, n)
    with pytest.raises(Crash):
        rewrap_keys(ring3, KEK, OTHER_KEK)
    monkeypatch.undo()
    ids = {i for i in (json.loads(p.read_text())["kek_id"] for p in ring3.glob("key-*.json"))}
    if n == 1:
        assert ids == {kek_id(KEK)}
        assert materials(ring3) == before
    else:
        assert ids == {kek_id(KEK), kek_id(OTHER_KEK)}
        for kek in (KEK, OTHER_KEK):
            snap = snapshot(ring3)
            with pytest.raises(
                KeyStoreError,
                match=r"several KEKs.*rewrap` was interrupted.*run it again with the old KEK",
            ):
                load_keyring(ring3, kek)
            with pytest.raises(KeyStoreError, match=r"several KEKs"):
                rotate_keys(ring3, kek)
            assert snapshot(ring3) == snap
    change = rewrap_keys(ring3, KEK, OTHER_KEK)
    assert change.rewrapped == tuple(range(n, 4))
    assert materials(ring3, OTHER_KEK) == before


def test_stray_temporary_files_are_ignored_then_swept(ring3: Path) -> None:
    stray = ring3 / ".tmp-key-0004.json-deadbeef"
    stray.write_bytes(b'{"format": 1, "ver')
    assert load_keyring(ring3, KEK).active.version == 3
    assert stray.exists()
    rotate_keys(ring3, KEK)
    assert not stray.exists()
    assert load_keyring(ring3, KEK).active.version == 4


def test_each_write_is_synced(kdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init_keyring(kdir, KEK)
    synced: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    rotate_keys(kdir, KEK)
    assert len(synced) == 4  # two files, and the directory after each rename


@pytest.fixture(autouse=True)
def _no_tokenproxy_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("TOKENPROXY_KEK", "TOKENPROXY_NEW_KEK", "TOKENPROXY_KEYS"):
        monkeypatch.delenv(var, raising=False)
    yield


def test_module_imports_only_crypto_and_errors() -> None:
    import ast

    tree = ast.parse(Path(keystore.__file__).read_text())
    project = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            project.add(node.module)
        elif isinstance(node, ast.Import):
            project.update(a.name for a in node.names)
    ours = {m for m in project if m == "proxy" or m.startswith("proxy.")}
    assert all(m.startswith(("proxy.crypto", "proxy.errors")) for m in ours), ours
