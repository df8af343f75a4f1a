"""FF1 against the NIST vectors, both directions, and its properties under hypothesis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.crypto.aes import BlockCipher
from proxy.crypto.ff1 import FF1, MIN_DOMAIN, AlphabetFF1, run_lanes
from proxy.errors import DomainTooSmallError, InvalidInputError

VECTORS_FILE = Path(__file__).resolve().parents[2] / "shared" / "fpe-vectors.json"
LOCAL_VECTORS = Path(__file__).with_name("data") / "fpe-vectors.json"


def _vectors() -> list[dict[str, str]]:
    path = VECTORS_FILE if VECTORS_FILE.exists() else LOCAL_VECTORS
    return [v for v in json.loads(path.read_text()) if v["alg"] == "FF1"]


FF1_VECTORS = _vectors()


def test_the_vector_file_holds_every_kind_of_ff1_case() -> None:
    assert len(FF1_VECTORS) >= 30
    assert {len(bytes.fromhex(v["key"])) for v in FF1_VECTORS} == {16, 24, 32}
    assert {int(v["radix"]) for v in FF1_VECTORS} >= {10, 26, 36, 64}
    assert any(v["tweak"] for v in FF1_VECTORS) and any(not v["tweak"] for v in FF1_VECTORS)


@pytest.mark.parametrize(
    "vector", FF1_VECTORS, ids=[f"{i}-r{v['radix']}" for i, v in enumerate(FF1_VECTORS)]
)
def test_nist_vector_both_directions(vector: dict[str, str]) -> None:
    cipher = AlphabetFF1(bytes.fromhex(vector["key"]), vector["alphabet"])
    tweak = bytes.fromhex(vector["tweak"])
    assert cipher.encrypt(vector["plaintext"], tweak) == vector["ciphertext"]
    assert cipher.decrypt(vector["ciphertext"], tweak) == vector["plaintext"]


@pytest.mark.parametrize(
    "vector", FF1_VECTORS, ids=[f"{i}-r{v['radix']}" for i, v in enumerate(FF1_VECTORS)]
)
def test_nist_vector_through_the_batch_call(vector: dict[str, str]) -> None:
    alphabet = vector["alphabet"]
    ff1 = FF1(bytes.fromhex(vector["key"]), len(alphabet))
    tweak = bytes.fromhex(vector["tweak"])
    plain = [alphabet.index(c) for c in vector["plaintext"]]
    cipher = [alphabet.index(c) for c in vector["ciphertext"]]
    assert ff1.encrypt_many([plain] * 6, tweak) == [cipher] * 6
    assert ff1.decrypt_many([cipher] * 6, tweak) == [plain] * 6


def test_the_fast_aes_path_agrees_with_the_public_api() -> None:
    key = bytes(range(32))
    fast, public = BlockCipher(key), BlockCipher(key, fast=False)
    for block in (0, 1, (1 << 128) - 1, 0x0123456789ABCDEF0123456789ABCDEF):
        assert fast.encrypt_int(block) == public.encrypt_int(block)


def test_a_domain_below_a_million_is_refused_with_a_clear_error() -> None:
    ff1 = FF1(bytes(16), 10)
    with pytest.raises(DomainTooSmallError, match="10\\^6"):
        ff1.encrypt([1, 2, 3, 4, 5])  # 10^5
    assert ff1.domain(6) == MIN_DOMAIN
    assert len(ff1.encrypt([1, 2, 3, 4, 5, 6])) == 6


@pytest.mark.parametrize("radix", [1, 0, 65537])
def test_a_radix_outside_2_to_65536_is_refused(radix: int) -> None:
    with pytest.raises(InvalidInputError):
        FF1(bytes(16), radix)


def test_a_numeral_outside_the_radix_is_refused() -> None:
    with pytest.raises(InvalidInputError):
        FF1(bytes(16), 10).encrypt([1, 2, 3, 4, 5, 6, 7, 10])


def test_an_alphabet_with_a_repeated_character_is_refused() -> None:
    with pytest.raises(InvalidInputError):
        AlphabetFF1(bytes(16), "0123456789ABCDEFA")


def test_a_batch_of_mixed_lengths_is_refused() -> None:
    with pytest.raises(InvalidInputError):
        FF1(bytes(16), 10).encrypt_many([[1] * 7, [1] * 8])


KEYS = st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n))


@st.composite
def cases(draw: st.DrawFn) -> tuple[bytes, int, list[int], bytes]:
    key = draw(KEYS)
    radix = draw(st.sampled_from([2, 3, 10, 26, 36, 52, 64, 255, 256, 1000, 11172, 65536]))
    min_len = 2
    while radix**min_len < MIN_DOMAIN:
        min_len += 1
    n = draw(st.integers(min_len, min_len + 40))
    numerals = draw(st.lists(st.integers(0, radix - 1), min_size=n, max_size=n))
    tweak = draw(st.binary(max_size=40))
    return key, radix, numerals, tweak


@settings(max_examples=300, deadline=None)
@given(cases())
def test_decrypt_inverts_encrypt_and_the_format_is_kept(
    case: tuple[bytes, int, list[int], bytes],
) -> None:
    key, radix, numerals, tweak = case
    ff1 = FF1(key, radix)
    out = ff1.encrypt(numerals, tweak)
    assert len(out) == len(numerals)
    assert all(0 <= x < radix for x in out)
    assert ff1.decrypt(out, tweak) == numerals
    assert ff1.encrypt_many([numerals] * 5, tweak) == [out] * 5


@settings(max_examples=200, deadline=None)
@given(cases(), st.binary(min_size=1, max_size=8))
def test_a_different_tweak_or_key_gives_a_different_token(
    case: tuple[bytes, int, list[int], bytes], other: bytes
) -> None:
    key, radix, numerals, tweak = case
    ff1 = FF1(key, radix)
    out = ff1.encrypt(numerals, tweak)
    # Over a domain of at least 10^6 a collision has probability <= 10^-6 per case.
    assert ff1.encrypt(numerals, tweak + other) != out
    assert FF1(bytes(b ^ 1 for b in key), radix).encrypt(numerals, tweak) != out


@settings(max_examples=200, deadline=None)
@given(KEYS, st.integers(20, 200), st.data())
def test_the_integer_interface_is_a_permutation_of_the_domain(
    key: bytes, bits: int, data: st.DataObject
) -> None:
    ff1 = FF1(key, 2)
    values = data.draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=1, max_size=20))
    enc = ff1.encrypt_ints(values, bits, b"t")
    assert all(0 <= x < 1 << bits for x in enc)
    assert len(set(enc)) == len(set(values))
    assert ff1.decrypt_ints(enc, bits, b"t") == values
    assert [ff1.encrypt_int(v, bits, b"t") for v in values] == enc


@settings(max_examples=100, deadline=None)
@given(KEYS, st.data())
def test_lanes_of_mixed_geometries_agree_with_the_batch_call(
    key: bytes, data: st.DataObject
) -> None:
    geometries = data.draw(
        st.lists(
            st.tuples(
                st.sampled_from([2, 10, 26, 52, 11172]),
                st.integers(6, 40),
                st.binary(max_size=12),
            ),
            min_size=1,
            max_size=5,
        )
    )
    ciphers = {radix: FF1(key, radix) for radix, _, _ in geometries}
    jobs, expected = [], []
    for radix, n, tweak in geometries:
        ff1 = ciphers[radix]
        n = max(n, next(m for m in range(2, 64) if radix**m >= MIN_DOMAIN))
        lane = ff1.lane(tweak, n)
        if lane is None:
            continue
        xs = data.draw(st.lists(st.integers(0, ff1.domain(n) - 1), min_size=0, max_size=6))
        jobs.append((lane, xs))
        expected.append(ff1.encrypt_ints(xs, n, tweak))
        if xs:
            assert ff1.crypt_lane(lane, xs[0], decrypt=False) == expected[-1][0]
    if not jobs:
        return
    aes = next(iter(ciphers.values())).block_encrypt
    out = run_lanes(aes, jobs, decrypt=False)
    assert out == expected
    back = run_lanes(aes, [(lane, ys) for (lane, _), ys in zip(jobs, out, strict=True)],
                     decrypt=True)
    assert back == [xs for _, xs in jobs]
