"""The soak's customers and the scanner that looks for them in every byte a client receives.

The customers are generated (seeded, deterministic) with name words of 7 to 11 letters,
Latin (some with accents) and Cyrillic, and long mobile numbers, so that a token equal to a
real word or number by chance is vanishingly rare: a hit of the scanner is a leak, not a
coincidence. Words are matched whole (``\\w+``), numbers by their digits.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from proxy.demo.seed import Customer  # the demo's record, with other names in it

_LATIN_C = "bcdfghjklmnprstvwz"
_LATIN_V = "aeiou"
_ACCENTED_V = "áéíóúäöü"
_CYR_C = "бвгдзклмнпрстфхш"
_CYR_V = "аеиоуыя"
_NOTES = (
    "Called {first} back on {phone} about the router.",
    "{first} asked to be called on {phone} after six.",
    "Spoke with {first}; confirmed the number {phone}.",
)
_PHONES = (  # (country code and operator prefix, subscriber digit groups)
    ("+62 812-", (4, 4)),
    ("+62 813-", (4, 4)),
    ("+62 857-", (4, 4)),
    ("+44 7700 ", (6,)),
    ("+7 912 ", (3, 2, 2)),
)
WORD_RE = re.compile(r"\w+")
PHONE_RE = re.compile(r"\+\d[\d \-]{8,20}\d")
_UNICODE_ESCAPE = re.compile(rb"\\u([0-9a-fA-F]{4})")


def _word(rng: random.Random, cyrillic: bool, accents: bool) -> str:
    cons, vow = (_CYR_C, _CYR_V) if cyrillic else (_LATIN_C, _LATIN_V)
    length = rng.randint(7, 11)
    out: list[str] = []
    while len(out) < length:
        out.append(rng.choice(cons))
        v = rng.choice(vow)
        if accents and rng.random() < 0.3:
            v = rng.choice(_ACCENTED_V)
        out.append(v)
    return "".join(out[:length]).capitalize()


def generate(count: int, *, seed: int = 7) -> list[Customer]:
    """``count`` customers, ids 1..count, the same for the same seed; unique phones."""
    rng = random.Random(seed)
    firsts = {s: [_word(rng, s == "cyr", s == "acc") for _ in range(60)]
              for s in ("lat", "acc", "cyr")}
    lasts = {s: [_word(rng, s == "cyr", s == "acc") for _ in range(150)]
             for s in ("lat", "acc", "cyr")}
    phones: set[str] = set()
    out: list[Customer] = []
    for i in range(1, count + 1):
        script = rng.choices(("lat", "acc", "cyr"), (6, 2, 2))[0]
        first, last = rng.choice(firsts[script]), rng.choice(lasts[script])
        phone = ""
        for _ in range(100):
            prefix, groups = rng.choice(_PHONES)
            sep = "-" if prefix.startswith("+62") else (" " if len(groups) == 1 else "-")
            phone = prefix + sep.join(
                "".join(rng.choice("0123456789") for _ in range(g)) for g in groups)
            if phone not in phones:
                break
        phones.add(phone)
        notes = rng.choice(_NOTES).format(first=first, phone=phone)
        out.append(Customer(i, f"{first} {last}", phone, notes, f"c{i:05d}@mail.example",
                            f"Town-{rng.randint(1, 90)}"))
    return out


def digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


@dataclass
class Hit:
    """A seeded value found outside a valid ticket: the customer and the kind, never the
    value; ``text`` is kept in memory only, to tell a token collision from a leak."""

    customer: int
    kind: str  # "name" or "phone"
    where: str
    text: str = field(repr=False)


class Scanner:
    """Finds seeded name words (4+ letters) and phone numbers in bytes received by a client.

    ``scan(data, allowed)`` returns the hits that belong to no customer in ``allowed`` (the
    customers of a ticket valid when the request was sent).
    """

    def __init__(self, customers: Iterable[Customer]) -> None:
        self.words: dict[str, set[int]] = {}
        self.phones: dict[str, int] = {}
        for c in customers:
            for w in WORD_RE.findall(c.full_name):
                if len(w) >= 4:
                    self.words.setdefault(w, set()).add(c.id)
            self.phones[digits(c.phone)] = c.id
        self.bytes_scanned = 0
        self.allowed = 0  # seeded values seen where a ticket allowed them

    def scan(self, data: bytes, allowed: frozenset[int], where: str) -> list[Hit]:
        self.bytes_scanned += len(data)
        texts = [data.decode("utf-8", "replace")]
        if b"\\u" in data:  # JSON escapes: scan the unescaped text as well
            texts.append(_UNICODE_ESCAPE.sub(
                lambda m: chr(int(m.group(1), 16)).encode(), data).decode("utf-8", "replace"))
        hits: list[Hit] = []
        for text in texts:
            for w in WORD_RE.findall(text):
                owners = self.words.get(w)
                if owners and owners.isdisjoint(allowed):
                    hits.append(Hit(min(owners), "name", where, w))
                elif owners:
                    self.allowed += 1
            for p in PHONE_RE.findall(text):
                owner = self.phones.get(digits(p))
                if owner is not None and owner not in allowed:
                    hits.append(Hit(owner, "phone", where, p))
                elif owner is not None:
                    self.allowed += 1
        return hits
