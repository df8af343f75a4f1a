"""Free-text tokens: the phones and known names of a note, exactly as the fields get them."""

from __future__ import annotations

import re
import time

import phonenumbers
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from proxy.crypto.keyring import DataKey
from proxy.crypto.names import NameTokenizer
from proxy.crypto.phones import PhoneTokenizer
from proxy.crypto.text import TextTokenizer, _fragments
from proxy.crypto.tokens import Kind, Method, Tokenized
from proxy.crypto.vault import MemoryVault
from proxy.errors import NotATokenError

KEY = DataKey(1, bytes(range(32)))
KEY2 = DataKey(2, bytes(range(1, 33)))
NAMES = NameTokenizer()
PHONES = PhoneTokenizer("ID")
TEXT = TextTokenizer(NAMES, PHONES)

NOTE = (
    "Customer Budi Santoso called from +62 812-3456-789 about his order. "
    "Budi said his wife Siti Rahayu may answer at 0812 3456 789 or (021) 555-1234. "
    "BUDI SANTOSO confirmed. Ref 3174 0512 9988, paid 1.500.000 on 15/01/2024 at 10:30."
)
KNOWN = ["Budi Santoso", "Siti Rahayu"]


@pytest.fixture
def vault() -> MemoryVault:
    return MemoryVault()


def known(result: Tokenized) -> tuple[list[str], set[str]]:
    """What a registry would answer for this note: its name tokens and phone tokens."""
    names = [p.token for p in result.pieces if p.kind == Kind.NAME]
    phones = {p.token for p in result.pieces if p.kind == Kind.PHONE}
    return names, phones


def test_a_note_gets_exactly_the_tokens_of_the_fields(vault: MemoryVault) -> None:
    result = TEXT.tokenize(NOTE, KEY, vault, known_names=KNOWN)
    token = result.token
    assert len(token) == len(NOTE)
    for phone in ("+62 812-3456-789", "0812 3456 789", "(021) 555-1234"):
        assert phone not in token
        assert PHONES.tokenize(phone, KEY, vault).token in token
    for name in ("Budi Santoso", "Siti Rahayu", "BUDI SANTOSO", "Budi"):
        assert NAMES.tokenize(name, KEY, vault).token in token
    for word in ("Budi", "Santoso", "Siti", "Rahayu"):
        assert not re.search(rf"\b{word}\b", token, re.IGNORECASE)
    assert "3174 0512 9988" not in token  # a fragment the matcher may miss
    assert "1.500.000" not in token
    assert "10:30" in token and "Customer " in token and " confirmed. Ref " in token
    kinds = {(p.kind, p.token) for p in result.pieces}
    assert (Kind.NAME, NAMES.tokenize("Budi Santoso", KEY, vault).token) in kinds
    assert (Kind.PHONE, PHONES.tokenize("0812 3456 789", KEY, vault).token) in kinds
    assert all(p.version == 1 for p in result.pieces)
    assert result.method is Method.MIXED  # FF1 pieces and the vault's "Budi"
    names, phones = known(result)
    assert TEXT.detokenize(token, KEY, vault, names, phones) == NOTE
    assert TEXT.detokenize(token, KEY, vault, names) == NOTE  # trust mode


def test_only_identified_tokens_are_resolved(vault: MemoryVault) -> None:
    result = TEXT.tokenize(NOTE, KEY, vault, known_names=KNOWN)
    names, phones = known(result)
    # an agent adds a real number and a name to the tokenized note
    edited = result.token + " New number 0813 9999 8888, ask Dewi."
    back = TEXT.detokenize(edited, KEY, vault, names, phones)
    assert back == NOTE + " New number 0813 9999 8888, ask Dewi."
    # without the name tokens, names stay tokens; without phone tokens, phones stay too
    only_phones = TEXT.detokenize(result.token, KEY, vault, (), phones)
    assert "Budi Santoso" not in only_phones and "0812 3456 789" in only_phones
    nothing = TEXT.detokenize(result.token, KEY, vault, (), set())
    assert nothing == result.token


def test_a_known_token_that_is_not_in_the_vault_is_an_error(vault: MemoryVault) -> None:
    with pytest.raises(NotATokenError):
        TEXT.detokenize("ref 12345", KEY, vault, (), {"12345"})
    with pytest.raises(NotATokenError):
        TEXT.detokenize("ask Qxzv", KEY, vault, ["Qxzv"])  # a vault-shaped name token


@pytest.mark.parametrize(
    ("note", "kept"),
    [
        ("Ana likes banana and Anastasia.", ["banana", "Anastasia"]),
        ("B. Santoso and b santoso", ["B.", " b "]),
        ("Mr Budi-Santoso's file", ["Mr ", "-", "'s file"]),
    ],
)
def test_names_match_whole_words_only(note: str, kept: list[str], vault: MemoryVault) -> None:
    token = TEXT.tokenize(note, KEY, vault, known_names=["Ana", "Budi Santoso"]).token
    for text in kept:
        assert text in token
    assert "Santoso" not in token and "santoso" not in token


def test_full_names_win_over_words_and_take_any_whitespace(vault: MemoryVault) -> None:
    note = "Budi   Santoso, Budi\nSantoso, Budi Santoso Wijaya, Santoso"
    result = TEXT.tokenize(note, KEY, vault, known_names=["Budi Santoso", "Budi Santoso Wijaya"])
    token = result.token
    assert NAMES.tokenize("Budi   Santoso", KEY, vault).token in token
    assert NAMES.tokenize("Budi\nSantoso", KEY, vault).token in token
    assert NAMES.tokenize("Budi Santoso Wijaya", KEY, vault).token in token
    assert token.endswith(NAMES.tokenize("Santoso", KEY, vault).token)
    names, phones = known(result)
    assert TEXT.detokenize(token, KEY, vault, names, phones) == note


def test_names_in_other_scripts(vault: MemoryVault) -> None:
    note = "Звонил Иван Петров. 王小明说他的电话是0812 3456 789。"
    result = TEXT.tokenize(note, KEY, vault, known_names=["Иван Петров", "王小明"])
    assert "Иван" not in result.token and "Петров" not in result.token
    assert "王小明" not in result.token  # no spaces around it: found inside running text
    assert "0812 3456 789" not in result.token
    names, phones = known(result)
    assert TEXT.detokenize(result.token, KEY, vault, names, phones) == note


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("ref 3174 0512 9988 ok", ["3174 0512 9988"]),
        ("call 0812-3456 then 789", ["0812-3456"]),
        ("paid 1.500.000", ["1.500.000"]),
        ("order 88231", ["88231"]),
        ("in 2024 pin 4821 ends 6789", []),
        ("on 15/01/2024 or 2024-01-15 or 15.01.24 or 01/15/2024", []),
        ("not dates: 0812-34-56 3000-01-15", ["0812-34-56 3000-01-15"]),
        ("at 10:30 room 12 floor 3", []),
        ("id ⑧①②③④⑤ or ٠٨١٢٣٤٥", ["⑧①②③④⑤", "٠٨١٢٣٤٥"]),
        ("x 12 34 5", ["12 34 5"]),
    ],
)
def test_the_fragment_rule(text: str, fragments: list[str]) -> None:
    spans = _fragments(text, 0, len(text))
    assert [s.text for s in spans] == fragments


def test_fragments_are_tokenized_as_phone_values(vault: MemoryVault) -> None:
    note = "her number is 0812 3456 and then 789; account 1234567890123"
    result = TEXT.tokenize(note, KEY, vault)
    assert "3456" not in result.token and "1234567890123" not in result.token
    assert " and then " in result.token
    names, phones = known(result)
    assert TEXT.detokenize(result.token, KEY, vault, names, phones) == note


@pytest.mark.parametrize(
    "note",
    [
        "",
        "   \n\t",
        "no digits, no names here",
        "\ud800 lone \udfff surrogates 0812 3456 789 \ud800",
        "\x00\x01\x02 controls \x1b[m 0812 3456 789",
        "emoji 📞📞 0812 3456 789 🙂 Budi",
        "０８１２３４５６７８９ fullwidth, ٠٨١٢٣٤٥٦٧٨٩ arabic-indic",
        "+",
        "Budi" * 50,
    ],
)
def test_odd_notes(note: str, vault: MemoryVault) -> None:
    result = TEXT.tokenize(note, KEY, vault, known_names=["Budi", ""])
    assert len(result.token) == len(note)
    assert "3456" not in result.token and "３４５６" not in result.token
    names, phones = known(result)
    assert TEXT.detokenize(result.token, KEY, vault, names, phones) == note
    if not result.pieces:
        assert result.token == note and result.method is Method.FF1


def test_known_names_that_look_like_patterns_are_literal(vault: MemoryVault) -> None:
    note = "a+b (Jr.) and .* and Budi"
    result = TEXT.tokenize(note, KEY, vault, known_names=["a+b", "(Jr.)", ".*", "   "])
    assert ".*" in result.token  # no letters: its own token
    assert "Budi" in result.token
    names, phones = known(result)
    assert TEXT.detokenize(result.token, KEY, vault, names, phones) == note


def test_a_long_note(vault: MemoryVault) -> None:
    note = ("Budi Santoso called 0812 3456 789 about order 88231. " * 200)[:10_000]
    started = time.process_time()
    result = TEXT.tokenize(note, KEY, vault, known_names=KNOWN)
    assert time.process_time() - started < 10
    assert len(result.token) == len(note)
    assert "Budi" not in result.token and "3456 789" not in result.token
    names, phones = known(result)
    assert TEXT.detokenize(result.token, KEY, vault, names, phones) == note


def test_other_region_and_key_version(vault: MemoryVault) -> None:
    text = TextTokenizer(NAMES, PhoneTokenizer("US"))
    note = "John Smith: (212) 555-0187, cell +1 646 555 0199"
    one = text.tokenize(note, KEY, vault, known_names=["John Smith"])
    two = text.tokenize(note, KEY2, vault, known_names=["John Smith"])
    assert one.token != two.token
    assert "555-0187" not in one.token and "John" not in one.token
    assert all(p.version == 2 for p in two.pieces)
    names, phones = known(one)
    assert text.detokenize(one.token, KEY, vault, names, phones) == note


# -- properties over generated notes ------------------------------------------------------

FILLER = ["the", "customer", "asked", "about", "a", "refund", "and", "will", "call", "back"]
FIRST = ["Budi", "Siti", "Agus", "Dewi", "Ahmad", "Putri", "Wayan", "Nur"]
LAST = ["Santoso", "Rahayu", "Wijaya", "Hartono", "Kusuma", "Setiawan"]


@st.composite
def phone_numbers(draw: st.DrawFn) -> str:
    subscriber = draw(st.text("0123456789", min_size=7, max_size=8))
    ndc = draw(st.sampled_from(["812", "813", "856", "878", "21", "22", "274"]))
    number = phonenumbers.parse(f"+62{ndc}{subscriber}")
    assume(phonenumbers.is_possible_number(number))
    fmt = draw(
        st.sampled_from(
            [
                phonenumbers.PhoneNumberFormat.E164,
                phonenumbers.PhoneNumberFormat.INTERNATIONAL,
                phonenumbers.PhoneNumberFormat.NATIONAL,
            ]
        )
    )
    return phonenumbers.format_number(number, fmt)


@st.composite
def notes(draw: st.DrawFn) -> tuple[str, list[str], list[tuple[str, bool]]]:
    """A note, the record's known names, and the phone numbers written in it (with whether
    words, not other digits, stand on both sides of it)."""
    names = [
        f"{draw(st.sampled_from(FIRST))} {draw(st.sampled_from(LAST))}"
        for _ in range(draw(st.integers(1, 2)))
    ]
    phones: list[int] = []
    parts: list[str] = []
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            phones.append(len(parts))
            parts.append(draw(phone_numbers()))
        elif kind == 1:
            name = draw(st.sampled_from(names))
            parts.append(draw(st.sampled_from([name, name.upper(), name.split()[0]])))
        elif kind == 2:
            parts.append(draw(st.sampled_from(["2024-01-15", "10:30", "in 2024", "Rp 150.000"])))
        else:
            parts.append(draw(st.sampled_from(FILLER)))
    separators = st.sampled_from([" ", ", ", ". ", "\n", " - "])
    note = "".join(p + draw(separators) for p in parts)

    def wordy(i: int) -> bool:
        return not 0 <= i < len(parts) or not any(c.isdigit() for c in parts[i])

    return note, names, [(parts[i], wordy(i - 1) and wordy(i + 1)) for i in phones]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(notes(), st.sampled_from([KEY, KEY2]))
def test_notes_round_trip_and_leak_nothing_known(
    case: tuple[str, list[str], list[tuple[str, bool]]], key: DataKey
) -> None:
    note, names, phones = case
    vault = MemoryVault()
    result = TEXT.tokenize(note, key, vault, known_names=names)
    assert TEXT.tokenize(note, key, vault, known_names=names) == result
    assert len(result.token) == len(note)
    folded = result.token.casefold()
    for name in names:
        for word in name.split():
            assert not re.search(rf"\b{word.casefold()}\b", folded), (word, result.token)
    digits = re.sub(r"\D", "", result.token)
    for phone, alone in phones:
        subscriber = re.sub(r"\D", "", phone)[-7:]
        assert subscriber not in digits, (phone, result.token)
        if alone:  # next to other digits, the matcher may cut differently
            assert PHONES.tokenize(phone, key, vault).token in result.token
    token_names, token_phones = known(result)
    assert TEXT.detokenize(result.token, key, vault, token_names, token_phones) == note
