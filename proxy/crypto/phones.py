"""Phone numbers: format-preserving tokens that are still possible numbers of the same country.

A phone value is cut into *positions*: every character keeps its place, and only digits of
the subscriber part change. For ``"+62 812-3456-789 ext. 12"``:

- the leading text, the ``+`` and the country calling code ``62`` are kept;
- a written international prefix (``00``/``011``...) and a national (trunk) prefix (the ``0``
  of ``0812...``, with any carrier code) are kept;
- of the national significant number (NSN) ``8123456789`` the leading *kept prefix*
  ``812`` (the national destination code: operator or area, routing, not the subscriber)
  is kept, and the subscriber digits ``3456789`` are encrypted with FF1 radix 10;
- the extension ``12`` is tokenized too (it can identify a person): FF1 from 6 digits, the
  short-value vault below;
- every other character (spaces, dashes, parentheses, ``ext.``) stays where it is.

So the token has the same length, the same country code and the same NSN length, which is
all :func:`phonenumbers.is_possible_number` looks at: a possible number stays possible. The
same number written ``"+62 812-3456-789"``, ``"0812 3456 789"`` or ``"(0812) 3456789"``
gets the same subscriber digits, because the FF1 tweak is (kind, key version, country code,
kept prefix) and the NSN length, never the way it was written (unless one writing needs the
rare cycle walk of step 4 below); the same subscriber under another area code gets an
unrelated token.

**Why our own reading of the string, not ``phonenumbers.parse``.** A token must be *read back
the same way* to be inverted: the detokenizer sees only the token, and must find the same
positions, the same kept prefix and the same tweak. ``phonenumbers.parse`` decides some
things from every digit (whether a leading ``62`` without ``+`` is the country code, whether
a leading ``0`` is a trunk prefix: both test the whole number against the region's pattern),
so a token could parse differently from its value. So:

1. The *structure* (which characters are the number, the extension marker, leading and
   trailing text) is found by a regular expression over character classes only (digits,
   punctuation, plus signs), never over digit values: a token, which has digits where its
   value has digits, has the same structure.
2. The numbering decisions mirror ``phonenumbers.parse`` step by step on the digit string
   (plus sign or the region's international prefix and a known country code; the
   "country code written without +" rule; national prefix and carrier code stripping with
   phonenumbers' length rules; a transform rule, as Argentina's ``0 11 15`` read as
   ``9 11``), using phonenumbers' metadata, so that the country code and the NSN are the
   ones phonenumbers finds. The tests check they agree; over numbers made from the
   example numbers of all 245 regions, in four formats (73,000 values), they all do.
3. The kept prefix is computed from its own digits only: for ``j = 1, 2, ...`` the NDC
   length phonenumbers' international format gives to a number that starts with the first
   ``j`` NSN digits (completed with a fixed filler) is looked up; the first ``j`` for which
   that NDC fits within ``j`` digits is the kept prefix (with the country's mobile token,
   Argentina's ``9``, counted as phonenumbers does). This reads only digits that are kept,
   so a token yields the same kept prefix. It is capped so that at least 6 digits are
   encrypted (FF1 needs a domain of 10^6): a short NSN keeps fewer leading digits (an
   8-digit Singapore number keeps 2) rather than all or none. Digits a transform rule
   wrote (not in the value) are always kept.
4. Whatever remains value-dependent (step 2's pattern tests) is made safe by *cycle walking*:
   after encrypting, the token is read again; if it would be read differently from the value
   it is encrypted again, until it reads the same (FF1 is a permutation, so decryption walks
   back the same path and stops at the value). Over the 73,000 values above, fewer than
   0.1% of the encryptions needed a second step.

**Values that are not a possible phone number** (``"N/A"``, ``"call after 5pm 0812 3456
789"``, ``"+"``, a number of another length, 10,000 characters) are never passed raw: every
digit is tokenized and every other character kept. All their digits are encrypted *together*
as one FF1 numeral string (in chunks of at most 32 digits for very long values), which is
stronger than run by run (a 1-digit run alone would have 10 possible values) and needs the
vault only when the whole value has fewer than 6 digits. A value without a digit has nothing
to tokenize and is its own token (reported as FF1; there is no vault entry).

**Short values go through the vault**: a possible number whose NSN has fewer than 6 digits,
an unparseable value with 1-5 digits, and a short extension. The vault draws random digits in
the same positions (redrawn until the draw reads the same way as the value; a format too
constrained for random draws is listed whole, at most 100,000 candidates) and keeps the
value sealed. Entries are namespaced inside kind ``phone``: ``raw:<whole value>`` for whole
values, ``ext:<digits>`` for extensions, so tokens of one namespace never collide with
another's.

**Digits of every script.** A digit is any of the 66 Unicode 14 decimal digit families
(ASCII, Arabic-Indic, Devanagari, fullwidth, mathematical...) and the digit-valued symbols
(superscripts, subscripts, circled, ...). A digit is replaced by a digit *of its own family*:
``"０８１２３４５６７８９"`` becomes fullwidth digits again. The tables are fixed literals, not
``unicodedata`` at run time, so a future Unicode cannot change how an old token is read.
Families with no zero (parenthesized ``⑴``...``⑼``, Ethiopic...) cannot carry an FF1 digit:
a value holding one goes through the vault whole. Only decimal digits (``\\d`` families) can
form a parsed number, as in phonenumbers; anything else makes the value unparseable.

Known limits (also in the tests):

- Letters are kept: ``"0812-CALL-NOW"`` keeps ``CALL-NOW`` (vanity numbers are not read;
  phonenumbers would turn 3 letters or more into digits).
- An ``x`` after the number is always an extension mark (phonenumbers reads it as
  punctuation when fewer than 3 digits precede it); such values are unparseable here.
- A transform rule right after a country code written without ``+`` is not read: the
  value takes the unparseable path (still fully tokenized, not kept possible).
- The kept prefix depends on phonenumbers' metadata (possible lengths, prefixes, formats).
  Upgrading phonenumbers may read some number differently and stop resolving its old tokens;
  ``tests/test_phones.py`` pins golden tokens so such a change is seen, not silent.

Speed, one core of the (shared, noisy) development machine, ``loadtest/bench_tokenizers.py``:
about 45 us a value one by one (22,000/s; ``phonenumbers.parse`` alone takes 26 us there, and
FF1 about 19 us of ours), 30 us in ``tokenize_many`` (33,000/s, FF1 batched by tweak and
length). The reading costs about 9 us, and is done twice (value, then token).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from functools import lru_cache
from itertools import product
from math import prod
from secrets import randbelow
from typing import Any, NamedTuple

import phonenumbers
from phonenumbers import PhoneMetadata

from proxy.crypto.keyring import DataKey, Keyring, KeyState
from proxy.crypto.tokens import Kind, Method, Tokenized
from proxy.crypto.vault import Vault
from proxy.errors import InvalidInputError, KeyringError, NotATokenError, VaultMissError

# -- digits ------------------------------------------------------------------------------

#: The zero of every Unicode 14.0 decimal digit family (general category Nd). Fixed forever:
#: a digit family added by a later Unicode stays "not a digit" here, so that old tokens
#: read the same way. (Each family is the 10 code points from its zero.)
_ND_ZEROS: tuple[int, ...] = (
    0x30, 0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66,
    0xDE6, 0xE50, 0xED0, 0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90,
    0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0,
    0xFF10, 0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0,
    0x11650, 0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x16A60, 0x16AC0,
    0x16B50, 0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0,
)  # fmt: skip

#: Digit-valued symbols (Unicode 14, not Nd) forming a whole 0-9 family, index = value.
_SYMBOL_FAMILIES: tuple[str, ...] = (
    "\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079",  # superscript
    "\u2080\u2081\u2082\u2083\u2084\u2085\u2086\u2087\u2088\u2089",  # subscript
    "\u24ea\u2460\u2461\u2462\u2463\u2464\u2465\u2466\u2467\u2468",  # circled
    "\u24ff\u2776\u2777\u2778\u2779\u277a\u277b\u277c\u277d\u277e",  # negative circled
    "\U0001f100\u2488\u2489\u248a\u248b\u248c\u248d\u248e\u248f\u2490",  # digit full stop
    "\U0001f101\U0001f102\U0001f103\U0001f104\U0001f105"
    "\U0001f106\U0001f107\U0001f108\U0001f109\U0001f10a",  # digit comma
)

#: Digit-valued symbols (Unicode 14) of families without a zero: they can only be redrawn
#: within their family by the vault, never carry an FF1 digit.
_PARTIAL_FAMILIES: tuple[str, ...] = (
    "\u2474\u2475\u2476\u2477\u2478\u2479\u247a\u247b\u247c",  # parenthesized 1-9
    "\u24f5\u24f6\u24f7\u24f8\u24f9\u24fa\u24fb\u24fc\u24fd",  # double circled 1-9
    "\u2780\u2781\u2782\u2783\u2784\u2785\u2786\u2787\u2788",  # circled sans-serif 1-9
    "\u278a\u278b\u278c\u278d\u278e\u278f\u2790\u2791\u2792",  # negative circled sans-serif
    "\u1369\u136a\u136b\u136c\u136d\u136e\u136f\u1370\u1371",  # Ethiopic 1-9
    "\u19da",  # New Tai Lue tham digit one
    "\U00010a40\U00010a41\U00010a42\U00010a43",  # Kharoshthi 1-4
    "\U00010e60\U00010e61\U00010e62\U00010e63\U00010e64"
    "\U00010e65\U00010e66\U00010e67\U00010e68",  # Rumi 1-9
    "\U00011052\U00011053\U00011054\U00011055\U00011056"
    "\U00011057\U00011058\U00011059\U0001105a",  # Brahmi number 1-9
)

_ASCII_DIGITS = "0123456789"
#: family (its ten digits, index = value) of every digit of a whole family
_FAMILY: dict[str, str] = {}
#: every digit -> its ASCII digit (partial families by their value)
_TO_ASCII: dict[int, str] = {}
#: a digit of a partial family -> the members it may be redrawn as
_PARTIAL: dict[str, str] = {}


def _build_digit_tables() -> None:
    for zero in _ND_ZEROS:
        family = "".join(chr(zero + v) for v in range(10))
        for v, c in enumerate(family):
            _FAMILY[c] = family
            _TO_ASCII[ord(c)] = _ASCII_DIGITS[v]
    for family in _SYMBOL_FAMILIES:
        for v, c in enumerate(family):
            _FAMILY[c] = family
            _TO_ASCII[ord(c)] = _ASCII_DIGITS[v]
    for members in _PARTIAL_FAMILIES:
        for c in members:
            _PARTIAL[c] = members
            _TO_ASCII[ord(c)] = "x"  # a digit, but not one FF1 can carry


_build_digit_tables()


def _char_class(chars: str) -> str:
    return "".join(re.escape(c) for c in chars)


_ND_CLASS = "".join(f"{re.escape(chr(z))}-{re.escape(chr(z + 9))}" for z in _ND_ZEROS)
_ALL_DIGITS_CLASS = _ND_CLASS + _char_class("".join(_SYMBOL_FAMILIES) + "".join(_PARTIAL_FAMILIES))
_PLUS = "+\uff0b"
#: phonenumbers' punctuation between digits (without its "x"), as fixed literals
_PUNCT_CHARS = (
    "-\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u30fc\uff0d\uff0e\uff0f \u00a0\u00ad\u200b"
    "\u2060\u3000()\uff08\uff09\uff3b\uff3d.[]/~\u2053\u223c\uff5e"
)
_PUNCT = _char_class(_PUNCT_CHARS)
_ND_CHARS = frozenset(chr(z + v) for z in _ND_ZEROS for v in range(10))
_EXT_MARK = (
    r"[ \u00a0\t,]*(?i:;ext=|e?xt(?:ensi(?:o\u0301?|\u00f3))?n?|\uff45?\uff58\uff54\uff4e?"
    r"|\u0434\u043e\u0431|anexo|[x\uff58#\uff03]|int|\uff49\uff4e\uff54|,{1,2}|;)"
    r"[:.\uff0e]?[ \u00a0\t,\-]*"
)
#: leading text, the number, an optional extension, trailing text: by character class only
_STRUCTURE = re.compile(
    rf"(?P<lead>[^{_ALL_DIGITS_CLASS}{_PLUS}]*)"
    rf"(?P<main>(?P<plus>[{_PLUS}])?[{_PUNCT}]*[{_ND_CLASS}](?:[{_PUNCT}]*[{_ND_CLASS}])*)"
    rf"(?:{_EXT_MARK}(?P<ext>[{_ND_CLASS}]{{1,20}}))?"
    rf"(?P<trail>[^{_ALL_DIGITS_CLASS}]*)",
    re.DOTALL,
)
_ANY_DIGIT_RE = re.compile(f"[{_ALL_DIGITS_CLASS}]")

# -- phonenumbers metadata, compiled once per region -------------------------------------

MAX_INPUT = 250  # phonenumbers' limit: a longer value is never a number
_MIN_NSN = 2
_MAX_NSN = 17
FF1_MIN_DIGITS = 6  # 10^6: the smallest domain FF1 may encrypt
RAW_CHUNK = 32  # digits per FF1 call for very long unparseable values
WALK_LIMIT = 10_000  # cycle-walking steps before giving up (never reached in practice)
DRAW_LIMIT = 100  # random vault draws that must read the same way as the value, then:
ENUMERATE_LIMIT = 100_000  # formats this small are listed whole

_POSSIBLE, _LOCAL_ONLY, _TOO_SHORT, _TOO_LONG, _INVALID = range(5)


class _Region:
    """What the reading of a number needs from one region's metadata, compiled."""

    __slots__ = (
        "by_length",
        "cc",
        "cc_str",
        "dialled_prefix",
        "formats",
        "general",
        "idd",
        "lengths",
        "local",
        "national",
        "transform",
    )

    def __init__(self, meta: Any) -> None:
        self.cc: int = meta.country_code
        self.cc_str = str(self.cc)
        idd = meta.international_prefix
        self.idd = re.compile(idd) if idd else None
        self.dialled_prefix: str = meta.national_prefix or ""
        npp = meta.national_prefix_for_parsing
        self.national = re.compile(npp) if npp else None
        self.transform: str | None = meta.national_prefix_transform_rule or None
        desc = meta.general_desc
        pattern = desc.national_number_pattern if desc is not None else None
        self.general = re.compile(pattern) if pattern else None
        self.lengths: tuple[int, ...] = tuple(desc.possible_length) if desc is not None else ()
        self.local: tuple[int, ...] = (
            tuple(desc.possible_length_local_only) if desc is not None else ()
        )
        formats = meta.intl_number_format or meta.number_format
        self.formats = tuple(
            (
                re.compile(f.leading_digits_pattern[-1]) if f.leading_digits_pattern else None,
                re.compile(f.pattern),
                f.format,
            )
            for f in formats
        )

        self.by_length = tuple(self._length_result(n) for n in range(MAX_INPUT + 1))

    def _length_result(self, n: int) -> int:
        """phonenumbers' ``_test_number_length`` for the general description."""
        lengths = self.lengths
        if not lengths or lengths[0] == -1:
            return _INVALID
        if n in self.local:
            return _LOCAL_ONLY
        if lengths[0] == n:
            return _POSSIBLE
        if lengths[0] > n:
            return _TOO_SHORT
        if lengths[-1] < n:
            return _TOO_LONG
        return _POSSIBLE if n in lengths[1:] else _INVALID

    def matches_general(self, digits: str) -> bool:
        general = self.general
        return general is not None and general.fullmatch(digits) is not None

    def strip_national_prefix(self, digits: str) -> tuple[int, str] | None:
        """phonenumbers' national prefix (and carrier code) stripping, by position.

        None if phonenumbers would not strip; else ``(consumed, virtual)``: the first
        ``consumed`` digits are the prefix, and the NSN is ``virtual`` followed by the rest
        (``virtual`` is empty unless a transform rule rewrites the prefix, as Argentina's
        ``0 11 15`` becomes ``9 11``).
        """
        if not digits or self.national is None:
            return None
        m = self.national.match(digits)
        if m is None:
            return None
        groups = m.groups()
        if not (self.transform and groups and groups[-1] is not None):
            if self.matches_general(digits) and not self.matches_general(digits[m.end() :]):
                return None
            return m.end(), ""
        national = m.expand(self.transform) + digits[m.end() :]
        if self.matches_general(digits) and not self.matches_general(national):
            return None
        common = 0  # the NSN digits that are written in the value, at its end
        limit = min(len(national), len(digits))
        while common < limit and national[-1 - common] == digits[-1 - common]:
            common += 1
        return len(digits) - common, national[: len(national) - common]


@lru_cache(maxsize=512)
def _region(code: str) -> _Region | None:
    meta = PhoneMetadata.metadata_for_region(code, None)
    return _Region(meta) if meta is not None else None


@lru_cache(maxsize=512)
def _region_of_cc(cc: int) -> _Region | None:
    """The metadata phonenumbers uses for a country code: its main region's."""
    code = phonenumbers.region_code_for_country_code(cc)
    meta = PhoneMetadata.metadata_for_region_or_calling_code(cc, code)
    return _Region(meta) if meta is not None else None


_COUNTRY_CODES = {str(cc): cc for cc in phonenumbers.COUNTRY_CODE_TO_REGION_CODE}


def _country_code(digits: str) -> int:
    """The known country code at the start of ``digits`` (1-3 digits, never from 0), or 0.
    Country codes are a prefix code: at most one matches."""
    codes = _COUNTRY_CODES
    return codes.get(digits[:1]) or codes.get(digits[:2]) or codes.get(digits[:3]) or 0


_FILLERS = "509"
_NON_DIGITS = re.compile(r"[^0-9]+")


@lru_cache(maxsize=1 << 16)
def _ndc_guess(cc: int, length: int, prefix: str) -> int:
    """The NDC length of a ``length``-digit NSN starting with ``prefix`` (else a filler).

    As phonenumbers' ``length_of_national_destination_code``: the first digit group of the
    international format, if a subscriber group follows (with the group after it when the
    first is the country's mobile token); 0 if no format applies.
    """
    region = _region_of_cc(cc)
    if region is None:
        return 0
    mobile_token = phonenumbers.country_mobile_token(cc)
    for fill in _FILLERS:
        number = prefix + fill * (length - len(prefix))
        for leading, pattern, fmt in region.formats:
            if leading is not None and leading.match(number) is None:
                continue
            m = pattern.fullmatch(number)
            if m is None:
                continue
            groups = [g for g in _NON_DIGITS.split(m.expand(fmt)) if g]
            if len(groups) <= 1:
                return 0
            if mobile_token and groups[0] == mobile_token and len(groups) > 2:
                return len(groups[0]) + len(groups[1])  # Argentina's "9 11": phonenumbers too
            return len(groups[0])
    return 0


def _kept_prefix(cc: int, nsn: str) -> int:
    """How many leading NSN digits are kept: computed from those digits only (see above)."""
    n = len(nsn)
    limit = n - FF1_MIN_DIGITS
    return _kept_within(cc, n, nsn[:limit]) if limit > 0 else 0


@lru_cache(maxsize=1 << 16)
def _kept_within(cc: int, n: int, head: str) -> int:
    for j in range(1, len(head) + 1):
        if _ndc_guess(cc, n, head[:j]) <= j:
            return j
    return len(head)


# -- reading a value ---------------------------------------------------------------------

_PLAIN, _FF1_PARSED, _FF1_RAW, _VAULT_PARSED, _VAULT_RAW = range(5)

#: inside the number (the ``main`` group): punctuation and plus signs go, digits turn ASCII
_MAIN_DIGITS: dict[int, str | None] = {ord(c): None for c in _PUNCT_CHARS + _PLUS}
_MAIN_DIGITS.update(
    {ord(c): d for c, d in ((chr(k), v) for k, v in _TO_ASCII.items()) if c in _ND_CHARS}
)


class _Numbering(NamedTuple):
    """How the digits of a number are read: what is kept, what is tokenized.

    The digit string is IDD/country code/national prefix (``skip`` digits), then the NSN,
    which is ``virtual`` (digits a transform rule writes, not in the value) followed by
    the rest of the digit string; its first ``kept`` digits are kept.
    """

    cc: int
    skip: int
    virtual: str
    kept: int
    vault: bool  # the NSN is too short for FF1: the whole value goes through the vault

    def nsn(self, digits: str) -> str:
        return self.virtual + digits[self.skip :]


class _Reading(NamedTuple):
    """A value read: which positions change, and how to check a candidate reads the same."""

    mode: int
    positions: tuple[int, ...] = ()  # digits FF1 encrypts or the vault redraws, in order
    ext: tuple[int, ...] = ()  # extension positions of a parsed number
    context: bytes = b""  # the country code and kept prefix: part of the FF1 tweak
    digits: str = ""  # parsed: the digit string of the number (ASCII)
    head: int = 0  # parsed: how many leading ``digits`` are kept; ``positions`` hold the rest
    plus: bool = False
    numbering: _Numbering | None = None  # parsed: the numbering to reproduce
    main_count: int = -1  # raw with a number-like structure: how many digits its number has


_NO_DIGITS = _Reading(_PLAIN)


class _Reader:
    """Reads values the same way for one default region."""

    def __init__(self, default_region: str) -> None:
        region = _region(default_region)
        if region is None or default_region not in phonenumbers.SUPPORTED_REGIONS:
            raise InvalidInputError(f"unknown phone region {default_region!r}")
        self.region = region

    def read(self, value: str) -> _Reading:
        """How ``value`` is tokenized (its token reads the same way)."""
        if len(value) <= MAX_INPUT:
            m = _STRUCTURE.fullmatch(value)
            if m is not None:
                start, end = m.span("main")
                digits = value[start:end].translate(_MAIN_DIGITS)
                plus = m.start("plus") >= 0
                # phonenumbers' "viable": 3 digits, or exactly 2 with nothing around them
                viable = len(digits) >= 3 or end - start == len(digits)
                numbering = self.number(digits, plus) if viable else None
                if numbering is not None:
                    return self._parsed(value, m, end, digits, plus, numbering)
                return _raw(value, len(digits) if viable else -1, plus)
        return _raw(value, -1, False)

    def same(self, reading: _Reading, new: str) -> bool:
        """Whether the value with ASCII digits ``new`` at ``reading.positions`` reads as
        ``reading`` does. Only the numbering can differ: the structure is by class."""
        if reading.numbering is not None:
            digits = reading.digits
            head = reading.head
            candidate = digits[:head] + new[: len(digits) - head]
            return self.number(candidate, reading.plus) == reading.numbering
        if reading.main_count >= 0:
            return self.number(new[: reading.main_count], reading.plus) is None
        return True

    def _parsed(
        self,
        value: str,
        m: re.Match[str],
        end: int,
        digits: str,
        plus: bool,
        numbering: _Numbering,
    ) -> _Reading:
        nsn = numbering.nsn(digits)
        count = len(digits) - numbering.skip if numbering.vault else len(nsn) - numbering.kept
        nd = _ND_CHARS
        start = m.start("main")
        positions = [i for i in range(end - 1, start - 1, -1) if value[i] in nd][:count]
        positions.reverse()
        ext_start, ext_end = m.span("ext")
        ext = tuple(range(ext_start, ext_end)) if ext_start >= 0 else ()
        if numbering.vault:
            positions.extend(ext)
            ext = ()
        context = f"{numbering.cc}.{nsn[: numbering.kept]}".encode()
        return _Reading(
            _VAULT_PARSED if numbering.vault else _FF1_PARSED,
            tuple(positions),
            ext,
            context,
            digits,
            len(digits) - count,
            plus,
            numbering,
        )

    def number(self, digits: str, plus: bool) -> _Numbering | None:
        """phonenumbers' reading of a digit string (None: not a possible number)."""
        default = self.region
        cc = 0
        skip = 0  # digits before the NSN: IDD, country code, national prefix
        if plus:
            cc = _country_code(digits)
            skip = len(str(cc)) if cc else 0
        if not cc:
            idd = default.idd.match(digits) if default.idd is not None else None
            if idd is not None and (idd.end() >= len(digits) or digits[idd.end()] != "0"):
                if len(digits) - idd.end() <= _MIN_NSN:
                    return None
                cc = _country_code(digits[idd.end() :])
                if not cc:
                    return None
                skip = idd.end() + len(str(cc))
        region = default
        if cc:
            found = _region_of_cc(cc)
            if found is None:
                return None
            region = found
        elif digits.startswith(default.cc_str):
            # a country code written without "+": phonenumbers' rule, verbatim
            rest = digits[len(default.cc_str) :]
            stripped = default.strip_national_prefix(rest)
            national = stripped[1] + rest[stripped[0] :] if stripped is not None else rest
            if (
                not default.matches_general(digits) and default.matches_general(national)
            ) or default.by_length[len(digits)] == _TOO_LONG:
                if stripped is not None and stripped[1]:
                    return None  # a rewritten prefix right after the country code: rare
                cc = default.cc
                skip = len(default.cc_str) + (stripped[0] if stripped is not None else 0)
                found = _region_of_cc(cc)
                if found is None:
                    return None
                region = found
        if not cc:
            if plus:  # phonenumbers: a "+" with no known country code after it
                return None
            cc = default.cc
        if len(digits) - skip < _MIN_NSN:
            return None
        virtual = ""
        stripped = region.strip_national_prefix(digits[skip:])
        if stripped is not None and region.by_length[
            len(stripped[1]) + len(digits) - skip - stripped[0]
        ] not in (_TOO_SHORT, _LOCAL_ONLY, _INVALID):
            skip += stripped[0]
            virtual = stripped[1]
        n = len(virtual) + len(digits) - skip
        if not _MIN_NSN <= n <= _MAX_NSN:
            return None
        owner = _region_of_cc(cc)
        if owner is None or owner.by_length[n] not in (_POSSIBLE, _LOCAL_ONLY):
            return None
        if n < FF1_MIN_DIGITS:
            return _Numbering(cc, skip, virtual, 0, True)
        kept = max(_kept_prefix(cc, virtual + digits[skip:]), len(virtual))
        return _Numbering(cc, skip, virtual, kept, n - kept < FF1_MIN_DIGITS)


def _raw(value: str, main_count: int, plus: bool) -> _Reading:
    """Unparseable: every digit, all together (FF1) or the whole value (vault)."""
    positions = tuple(m.start() for m in _ANY_DIGIT_RE.finditer(value))
    if not positions:
        return _NO_DIGITS
    whole = len(positions) >= FF1_MIN_DIGITS and all(value[p] in _FAMILY for p in positions)
    mode = _FF1_RAW if whole else _VAULT_RAW
    return _Reading(mode, positions, plus=plus, main_count=main_count)


# -- digits in and out -------------------------------------------------------------------


def _ascii(value: str, positions: Sequence[int]) -> str:
    return "".join([_TO_ASCII[ord(value[p])] for p in positions])


def _write(chars: list[str], value: str, positions: Sequence[int], digits: str) -> None:
    """Put each ASCII digit at its position, as a digit of the family that was there."""
    for p, d in zip(positions, digits, strict=True):
        c = value[p]
        chars[p] = d if c in _ASCII_DIGITS else _FAMILY[c][int(d)]


def _draw(value: str, positions: Sequence[int]) -> str:
    """The value with a random digit of the same family at each position."""
    chars = list(value)
    for p in positions:
        c = value[p]
        members = _FAMILY.get(c) or _PARTIAL[c]
        chars[p] = members[randbelow(len(members))]
    return "".join(chars)


_FROM_ASCII = bytes.maketrans(b"0123456789", bytes(range(10)))
_TO_ASCII_BYTES = bytes.maketrans(bytes(range(10)), b"0123456789")


def _to_str(numerals: Sequence[int]) -> str:
    return bytes(numerals).translate(_TO_ASCII_BYTES).decode("ascii")


def _to_numerals(digits: str) -> bytes:
    """ASCII digits as numerals 0-9 (bytes are a sequence of ints, made in C)."""
    return digits.encode("ascii").translate(_FROM_ASCII)


# -- the tokenizer -----------------------------------------------------------------------

_RAW_NS = "raw:"
_EXT_NS = "ext:"
_keyrings: weakref.WeakKeyDictionary[DataKey, Keyring] = weakref.WeakKeyDictionary()


@lru_cache(maxsize=1 << 14)
def _parsed_tweak(version: int, context: bytes) -> bytes:
    """The FF1 tweak of a parsed number's subscriber digits: kind, key version, country code
    and kept prefix (the NSN length is in FF1's own header)."""
    return b"P" + version.to_bytes(4, "big") + b"\x00" + context


def _usable(key: DataKey) -> None:
    if key.state is KeyState.RETIRED:
        raise KeyringError(f"key version {key.version} is retired: it neither makes nor resolves")


def _keyring_of(key: DataKey) -> Keyring:
    """A one-key keyring for vault lookups under exactly this key."""
    ring = _keyrings.get(key)
    if ring is None:
        one = key if key.state is KeyState.ACTIVE else key.with_state(KeyState.ACTIVE)
        ring = _keyrings[key] = Keyring((one,))
    return ring


class PhoneTokenizer:
    """Format-preserving tokens for phone numbers (see the module docstring)."""

    kind = Kind.PHONE

    def __init__(self, default_region: str = "ID") -> None:
        self.default_region = default_region
        self._reader = _Reader(default_region)

    # -- public API --------------------------------------------------------------------

    def tokenize(self, value: str, key: DataKey, vault: Vault) -> Tokenized:
        """The token of a phone value under ``key``; short parts go through ``vault``."""
        _usable(key)
        reading = self._reader.read(value)
        mode = reading.mode
        if mode == _FF1_PARSED and not reading.ext:  # the common case, kept short
            tweak = _parsed_tweak(key.version, reading.context)
            numerals = _to_numerals(reading.digits[reading.head :])
            new = _to_str(key.ff1(10).encrypt(numerals, tweak))
            if self._reader.same(reading, new):
                chars = list(value)
                _write(chars, value, reading.positions, new)
                return Tokenized("".join(chars), Method.FF1)
        if mode in (_FF1_PARSED, _FF1_RAW):
            ff1 = key.ff1(10)
            parts = self._parts(reading, key)
            first = [ff1.encrypt(_to_numerals(d), tw) for tw, d in self._inputs(value, parts)]
            return self._finish(value, reading, parts, first, key, vault)
        if mode == _PLAIN:
            return Tokenized(value, Method.FF1)
        return Tokenized(self._vault_whole(value, reading, key, vault), Method.VAULT)

    def tokenize_many(
        self, values: Sequence[str], key: DataKey, vault: Vault
    ) -> list[Tokenized]:
        """Tokens of many values, FF1 batched by (tweak, length)."""
        _usable(key)
        readings = [self._reader.read(v) for v in values]
        ff1 = key.ff1(10)
        all_parts: dict[int, list[tuple[bytes, tuple[int, ...]]]] = {}
        batches: dict[tuple[bytes, int], list[tuple[int, int, bytes]]] = {}
        for i, reading in enumerate(readings):
            if reading.mode == _FF1_PARSED:
                tweak = _parsed_tweak(key.version, reading.context)
                all_parts[i] = [(tweak, reading.positions)]
                digits = reading.digits[reading.head :]
                batches.setdefault((tweak, len(digits)), []).append((i, 0, _to_numerals(digits)))
            elif reading.mode == _FF1_RAW:
                parts = all_parts[i] = self._parts(reading, key)
                for j, (tweak, digits) in enumerate(self._inputs(values[i], parts)):
                    batches.setdefault((tweak, len(digits)), []).append(
                        (i, j, _to_numerals(digits))
                    )
        encrypted: dict[tuple[int, int], Sequence[int]] = {}
        for (tweak, _), members in batches.items():
            if len(members) == 1:
                outs = [ff1.encrypt(members[0][2], tweak)]
            else:
                outs = ff1.encrypt_many([x for _, _, x in members], tweak)
            for (i, j, _), out in zip(members, outs, strict=True):
                encrypted[(i, j)] = out
        results = []
        same = self._reader.same
        for i, (value, reading) in enumerate(zip(values, readings, strict=True)):
            found = all_parts.get(i)
            if found is None:
                if reading.mode == _PLAIN:
                    results.append(Tokenized(value, Method.FF1))
                else:
                    token = self._vault_whole(value, reading, key, vault)
                    results.append(Tokenized(token, Method.VAULT))
                continue
            first = [encrypted[(i, j)] for j in range(len(found))]
            if len(first) == 1 and not reading.ext:  # the common case, kept short
                new = _to_str(first[0])
                if same(reading, new):
                    chars = list(value)
                    _write(chars, value, reading.positions, new)
                    results.append(Tokenized("".join(chars), Method.FF1))
                    continue
            results.append(self._finish(value, reading, found, first, key, vault))
        return results

    def detokenize(self, token: str, key: DataKey, vault: Vault) -> str:
        """The value whose token under ``key`` is ``token``.

        A vault-made token not in the vault (or made under another key version) raises
        :class:`NotATokenError`. An FF1 token decrypts to *something* whatever it is: only
        the token registry can say that a string is a token.
        """
        _usable(key)
        reading = self._reader.read(token)
        mode = reading.mode
        if mode == _PLAIN:
            return token
        if mode in (_VAULT_PARSED, _VAULT_RAW):
            value = vault.value_for(self.kind, _RAW_NS + token, _keyring_of(key))
            if not value.startswith(_RAW_NS):
                raise NotATokenError("phone vault entry is not a whole phone value")
            return value[len(_RAW_NS) :]
        ff1 = key.ff1(10)
        parts = self._parts(reading, key)
        current: list[Sequence[int]]
        if mode == _FF1_PARSED:  # its digits are at hand
            current = [_to_numerals(reading.digits[reading.head :])]
        else:
            current = [_to_numerals(d) for _, d in self._inputs(token, parts)]
        for _ in range(WALK_LIMIT):
            current = [ff1.decrypt(x, tw) for x, (tw, _) in zip(current, parts, strict=True)]
            new = "".join([_to_str(x) for x in current])
            if self._reader.same(reading, new):
                break
        else:  # pragma: no cover - tokenize's walk took as many steps
            raise NotATokenError("phone token does not walk back to a value")
        chars = list(token)
        _write(chars, token, reading.positions, new)
        if reading.ext:
            self._ext(chars, token, reading, key, vault, decrypt=True)
        return "".join(chars)

    def is_possible(self, value: str) -> bool:
        """Whether ``value`` reads as a possible phone number (else it is tokenized as
        unparseable text)."""
        return self._reader.read(value).numbering is not None

    @property
    def national_prefix(self) -> str:
        """The default region's national (trunk) prefix as dialled ("0"; "" if none)."""
        return self._reader.region.dialled_prefix

    # -- internals ---------------------------------------------------------------------

    @staticmethod
    def _parts(reading: _Reading, key: DataKey) -> list[tuple[bytes, tuple[int, ...]]]:
        """The FF1 numeral strings of a reading (one, or chunks of a long raw value)."""
        if reading.mode == _FF1_PARSED:
            return [(_parsed_tweak(key.version, reading.context), reading.positions)]
        head = b"P" + key.version.to_bytes(4, "big")
        positions = reading.positions
        n = len(positions)
        chunks = -(-n // RAW_CHUNK)
        out = []
        at = 0
        for c in range(chunks):
            size = n // chunks + (1 if c < n % chunks else 0)
            out.append((head + b"\x01" + f"{c}/{chunks}".encode(), positions[at : at + size]))
            at += size
        return out

    @staticmethod
    def _inputs(
        value: str, parts: list[tuple[bytes, tuple[int, ...]]]
    ) -> list[tuple[bytes, str]]:
        return [(tweak, _ascii(value, positions)) for tweak, positions in parts]

    def _finish(
        self,
        value: str,
        reading: _Reading,
        parts: list[tuple[bytes, tuple[int, ...]]],
        current: Sequence[Sequence[int]],
        key: DataKey,
        vault: Vault,
    ) -> Tokenized:
        """Walk until the token reads as the value does, write it, then the extension."""
        ff1 = key.ff1(10)
        for _ in range(WALK_LIMIT):
            new = "".join([_to_str(x) for x in current])
            if self._reader.same(reading, new):
                break
            current = [ff1.encrypt(x, tw) for x, (tw, _) in zip(current, parts, strict=True)]
        else:  # pragma: no cover - needs a reading that almost no digits keep
            raise InvalidInputError("phone value could not be tokenized (cycle walk too long)")
        chars = list(value)
        _write(chars, value, reading.positions, new)
        method = Method.FF1
        if reading.ext:
            method = self._ext(chars, value, reading, key, vault, decrypt=False)
        return Tokenized("".join(chars), method)

    def _ext(
        self,
        chars: list[str],
        source: str,
        reading: _Reading,
        key: DataKey,
        vault: Vault,
        *,
        decrypt: bool,
    ) -> Method:
        """Tokenize (or resolve) the extension digits into ``chars``; return the method.

        The extension never takes part in the reading (it is found by class), so it is
        tokenized on its own: FF1 from 6 digits, else the vault (namespace ``ext:``).
        """
        digits = _ascii(source, reading.ext)
        if len(digits) >= FF1_MIN_DIGITS:
            tweak = b"P" + key.version.to_bytes(4, "big") + b"\x02"
            ff1 = key.ff1(10)
            numerals = _to_numerals(digits)
            out = ff1.decrypt(numerals, tweak) if decrypt else ff1.encrypt(numerals, tweak)
            _write(chars, source, reading.ext, _to_str(out))
            return Method.FF1
        if decrypt:
            found = vault.value_for(self.kind, _EXT_NS + digits, _keyring_of(key))
            if not found.startswith(_EXT_NS) or len(found) != len(_EXT_NS) + len(digits):
                raise NotATokenError("phone extension vault entry does not fit the token")
            resolved = found[len(_EXT_NS) :]
        else:
            size = len(digits)

            def draw() -> str:
                return _EXT_NS + "".join(_ASCII_DIGITS[randbelow(10)] for _ in range(size))

            resolved = vault.token_for(self.kind, _EXT_NS + digits, key, draw)[len(_EXT_NS) :]
        _write(chars, source, reading.ext, resolved)
        return Method.MIXED

    def _vault_whole(self, value: str, reading: _Reading, key: DataKey, vault: Vault) -> str:
        """A random token of the value's format, drawn until it reads as the value does.

        Random draws first; if the format is so small, or so constrained, that they keep
        missing, every token of the format is listed and one drawn from those that read
        as the value (the value itself does, so the list is never empty)."""
        reader = self._reader
        positions = reading.positions
        members = [_FAMILY.get(value[p]) or _PARTIAL[value[p]] for p in positions]
        listed: list[str] = []

        def fits(candidate: str) -> bool:
            return reader.same(reading, _ascii(candidate, positions))

        def draw() -> str:
            for _ in range(DRAW_LIMIT):
                candidate = _draw(value, positions)
                if fits(candidate):
                    return _RAW_NS + candidate
            if not listed:
                if prod(len(m) for m in members) > ENUMERATE_LIMIT:
                    raise VaultMissError("no phone token of this format reads like the value")
                chars = list(value)
                for digits in product(*members):
                    for p, c in zip(positions, digits, strict=True):
                        chars[p] = c
                    candidate = "".join(chars)
                    if fits(candidate):
                        listed.append(candidate)
            return _RAW_NS + listed[randbelow(len(listed))]

        token = vault.token_for(self.kind, _RAW_NS + value, key, draw)
        return token[len(_RAW_NS) :]


def any_digit_pattern() -> str:
    """The regex character-class body (no brackets) of every digit this module tokenizes."""
    return _ALL_DIGITS_CLASS


def ascii_digits(text: str) -> str:
    """``text`` with every digit this module knows written as its ASCII digit (digits of a
    family without a zero as ``x``)."""
    return text.translate(_TO_ASCII)
