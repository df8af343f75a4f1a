"""The character classes of proxy.crypto.alphabets: fixed, exact, and covering all of Unicode."""

from __future__ import annotations

import unicodedata
from collections import Counter
from itertools import pairwise

import pytest

from proxy.crypto import alphabets
from proxy.crypto._unicode_letters import GROUPS, STARTS, UNICODE_VERSION, generate
from proxy.crypto.alphabets import (
    COMBINING,
    CYRILLIC,
    EXPLICIT_CLASSES,
    GREEK,
    HAN,
    HAN_EXT_B_G,
    HANGUL,
    LATIN,
    LATIN_ACCENTED,
    CharClass,
    all_classes,
    classify,
)

UNICODE_14 = unicodedata.unidata_version == UNICODE_VERSION
NONCHARACTER = {cp for cp in range(0xFDD0, 0xFDF0)} | {
    plane << 16 | low for plane in range(17) for low in (0xFFFE, 0xFFFF)
}
VARIATION_SELECTORS = {
    *range(0x180B, 0x180E),
    0x180F,
    *range(0xFE00, 0xFE10),
    *range(0xE0100, 0xE01F0),
}


def test_explicit_class_names_and_order_never_change() -> None:
    # The names enter every tweak and the order is the documented order: both are frozen.
    assert [c.name for c in EXPLICIT_CLASSES] == [
        "latin",
        "latin-accented",
        "latin-extended",
        "cyrillic",
        "cyrillic-extended",
        "greek",
        "greek-extended",
        "coptic",
        "arabic",
        "hebrew",
        "devanagari",
        "han",
        "han-ext-a",
        "han-ext-b-g",
        "hiragana",
        "katakana",
        "hangul",
        "combining",
        "arabic-harakat",
        "hebrew-points",
        "devanagari-signs",
    ]
    sizes = {c.name: c.size for c in EXPLICIT_CLASSES}
    assert sizes == {
        "latin": 26,
        "latin-accented": 94,
        "latin-extended": 327,
        "cyrillic": 33,
        "cyrillic-extended": 152,
        "greek": 24,
        "greek-extended": 128,
        "coptic": 53,
        "arabic": 41,
        "hebrew": 27,
        "devanagari": 54,
        "han": 20992,
        "han-ext-a": 6592,
        "han-ext-b-g": 65269,
        "hiragana": 86,
        "katakana": 90,
        "hangul": 11172,
        "combining": 112,
        "arabic-harakat": 8,
        "hebrew-points": 13,
        "devanagari-signs": 34,
    }


def test_fallback_table_is_reproduced_under_unicode_14() -> None:
    if not UNICODE_14:
        pytest.skip(f"the table is Unicode {UNICODE_VERSION}; this Python has another version")
    assert generate() == (STARTS, GROUPS)


def test_fallback_table_shape() -> None:
    assert STARTS[0] == 0
    assert list(STARTS) == sorted(set(STARTS))
    assert len(STARTS) == len(GROUPS)
    assert set(GROUPS) <= set("KULOMWX")
    assert all(a != b for a, b in pairwise(GROUPS))


def test_cased_pairs_are_one_code_point_each_and_disjoint() -> None:
    seen: set[str] = set()
    for cls in EXPLICIT_CLASSES:
        assert cls.size >= 2
        assert len(set(cls.lower)) == cls.size
        if cls.cased:
            assert len(cls.upper) == cls.size
            assert len(set(cls.upper)) == cls.size
            assert not set(cls.lower) & set(cls.upper)
            for lo, up in zip(cls.lower, cls.upper, strict=True):
                # Unicode's simple mappings, except the two pairs Unicode does not make 1:1
                if (lo, up) not in {("ß", "ẞ"), ("ı", "İ")}:
                    assert up.lower() == lo, (cls.name, lo, up)
                    assert unicodedata.category(lo) == "Ll"
                    assert unicodedata.category(up) in ("Lu", "Lt")
        members = set(cls.lower) | set(cls.upper)
        assert not members & seen
        seen |= members


def test_well_known_letters() -> None:
    assert classify(ord("a")) == (LATIN, 0, False)
    assert classify(ord("Z")) == (LATIN, 25, True)
    e_lower, e_upper = classify(ord("é")), classify(ord("É"))
    assert e_lower is not None and e_upper is not None
    assert e_lower[0] is e_upper[0] is LATIN_ACCENTED
    assert e_upper[1:] == (e_lower[1], True)
    assert classify(ord("ё")) == (CYRILLIC, 32, False)
    assert classify(ord("Ω")) == (GREEK, 23, True)
    assert classify(0x4E00) == (HAN, 0, False)
    assert classify(0xD7A3) == (HANGUL, 11171, False)
    assert classify(0x20000) == (HAN_EXT_B_G, 0, False)
    assert classify(0x0301) == (COMBINING, 1, False)
    for kept in " -'.,0123456789\t\n\x00\x7f\u200d\u200c\ufeff\ufe0f😀❤\ue000":
        assert classify(ord(kept)) is None, repr(kept)
    for cp in (0xD800, 0xDBFF, 0xDC00, 0xDFFF, 0xFFFE, 0x10FFFF):
        assert classify(cp) is None


def test_final_sigma_and_other_lowercase_only_letters_stay_lowercase() -> None:
    for ch in "ςΐΰſĸŉ":
        found = classify(ord(ch))
        assert found is not None
        cls, _, upper = found
        assert not upper and not cls.cased
        assert all(unicodedata.category(m) == "Ll" for m in cls.lower), cls.name


def test_every_code_point_round_trips_through_its_class() -> None:
    """All of Unicode: a code point is kept, or sits at (class, index, case) and comes back."""
    sizes: Counter[str] = Counter()
    for cp in range(0x110000):
        found = classify(cp)
        if found is None:
            continue
        cls, index, upper = found
        assert cls.member(index, upper) == chr(cp)
        sizes[cls.name] = cls.size
    assert min(sizes.values()) >= 2  # a class of one would pass its letter through
    assert max(sizes.values()) <= 1 << 16


def test_nothing_that_is_a_letter_or_mark_is_kept() -> None:
    """Under this Python's Unicode (any version): a letter or mark is never passed through."""
    for cp in range(0x110000):
        category = unicodedata.category(chr(cp))
        if category[0] in "LM" and cp not in VARIATION_SELECTORS:
            assert classify(cp) is not None, f"U+{cp:04X} {category} would pass through"


def test_kept_is_exactly_the_non_letters_of_unicode_14() -> None:
    if not UNICODE_14:
        pytest.skip("exact only under Unicode 14")
    for cp in range(0x110000):
        category = unicodedata.category(chr(cp))
        letter_or_mark = category[0] in "LM" and cp not in VARIATION_SELECTORS
        unassigned = category == "Cn" and cp not in NONCHARACTER
        assert (classify(cp) is not None) == (letter_or_mark or unassigned), f"U+{cp:04X}"


def test_fallback_classes_keep_script_window_and_case() -> None:
    if not UNICODE_14:
        pytest.skip("categories of Unicode 14")
    explicit_names = {c.name for c in EXPLICIT_CLASSES}
    fallback: list[CharClass] = [c for c in all_classes() if c.name not in explicit_names]
    assert len(fallback) > 400
    for cls in fallback:
        area, group = cls.name.split("-")
        assert cls.size >= 2, cls.name
        if group == "X":
            continue
        window = int(area, 16) >> alphabets.WINDOW_BITS
        assert all(ord(m) >> alphabets.WINDOW_BITS == window for m in cls.lower), cls.name
        categories = {unicodedata.category(m) for m in cls.lower}
        expected = {"U": {"Lu", "Lt"}, "L": {"Ll"}, "O": {"Lo", "Lm"}, "M": {"Mn", "Mc", "Me"}}
        if group in expected:
            assert categories <= expected[group], (cls.name, categories)


def test_unknown_scripts_get_their_own_window_and_case() -> None:
    armenian_upper = classify(ord("Ա"))
    armenian_lower = classify(ord("ա"))
    assert armenian_upper is not None and armenian_lower is not None
    assert armenian_upper[0] is not armenian_lower[0]
    assert all(unicodedata.category(m) == "Lu" for m in armenian_upper[0].lower)
    georgian = classify(ord("ს"))
    assert georgian is not None and georgian[0].size >= 40
    thai_mark = classify(0x0E34)  # THAI CHARACTER SARA I, a combining vowel sign
    assert thai_mark is not None
    assert all(unicodedata.category(m) == "Mn" for m in thai_mark[0].lower)


def test_code_points_unassigned_in_unicode_14_are_tokenized_within_their_plane() -> None:
    for cp in (0x0378, 0x1E030, 0x31350, 0x50000):  # 1E030: a Cyrillic letter of Unicode 15
        found = classify(cp)
        assert found is not None
        cls, index, _ = found
        assert cls.name == f"plane{cp >> 16}-X"
        assert cls.member(index) == chr(cp)
        assert cls.size > 1000
