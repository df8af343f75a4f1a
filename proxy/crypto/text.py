"""Free text (a support note): the phone numbers and the known names inside are tokenized.

A note is tokenized *in place*: everything but the sensitive spans is kept, and each span is
replaced by exactly the token the structured field would get, so an agent sees the same
token for a customer's phone in the phone column and in the note.

What is replaced, in this order (a later step only looks at text no earlier step took):

1. **Phone numbers** found by phonenumbers' ``PhoneNumberMatcher`` (default region of the
   phone tokenizer, leniency ``POSSIBLE``): each match's raw text is tokenized by
   :class:`~proxy.crypto.phones.PhoneTokenizer`. The matcher is lenient on purpose (it takes
   ``88231`` too): in a note, a false positive costs a readable number, a false negative
   leaks one. It takes dates as well: a match made only of dates (``2024-01-15``,
   ``15/01/2024``, ``01.15.24``: a real month and day, a 4-digit year in 1900-2099; so
   ``0812-34-56`` is no date) is left as it is, as in step 4. The matcher also joins digits
   written next to a number to it (``10:30 0812...``, ``0812... 10:30``,
   ``in 2024 0812...``); such a match is cut back to the number (the minutes or hour of a
   time are dropped; a match is split where, after whitespace, a ``+`` or the national
   prefix starts a possible number), so that the number gets the structured field's token;
   the digits cut off go to step 4.
2. **The record's known names** (``known_names``): every full name, longest first, matched
   case-insensitively with any whitespace between its words, at letter boundaries (not
   between two letters; in scripts written without spaces, Han, kana, Thai..., anywhere);
   the matched text is tokenized as a name. Identical text ("Budi Santoso") gets exactly the
   structured field's token; another casing ("BUDI SANTOSO") gets the token of that text.
3. **Each word of the known names** (2 letters or more) still standing alone as a word,
   matched the same way and tokenized as a name on its own ("Budi called" must not leak the
   first name). A one-letter initial is kept.
4. **Phone fragments the matcher missed** ("0812 3456 and then 789", "ref 08123456789x"): a
   *digit cluster* is a run of digits (any script, a leading ``+`` included) joined by at
   most two of ``space . - / ( )`` between runs. It is cut at its spaces into groups; dates
   (as in step 1) and the hour or minutes of a time (``10`` of ``10:30``) are left out, and
   a group starting with ``+`` starts a new fragment. Each fragment of 5 digits or more is
   tokenized as a phone value (so a 4-digit run next to any other digit is; amounts like
   ``1.500.000`` and reference numbers are too: fail closed). A lone 4-digit run ("in 2024",
   "PIN 4821", "ends in 6789") is kept: it is a year far more often than a fragment, and 4
   digits do not identify a subscriber. But for dates, the rule reads character classes
   only, so a tokenized note yields the same fragments again (a token may look like a date:
   the detokenizer with known tokens tries every cut, so it still finds it).

``Tokenized.pieces`` lists every token issued inside the note (kind ``phone`` or ``name``,
token, key version, method) for the registry; the note's ``method`` is the pieces' method
(``MIXED`` when they differ; FF1 for a note with nothing to replace, which is its own token).

**Detokenizing a note** can only resolve tokens the caller can identify, because a
format-preserving token looks like any other text: ``detokenize`` replaces

- name tokens given in ``known_name_tokens`` (exact text, letter boundaries; pass the pieces
  the registry recorded for the note or the record: the full-name tokens, their case
  variants and the single-word tokens are all different tokens);
- phone spans whose text is in ``known_phone_tokens`` (a set, or any container, e.g. one
  that asks the registry): each matcher match of the token text, cut every way step 1
  may have cut it, and each digit cluster, its fragments and its groups; the first cut
  that is a known token is resolved. This does not depend on the matcher reading a token
  as it read the value (it reads digit values), so it is the mode to use: the tests
  round-trip thousands of generated notes through it.
- with ``known_phone_tokens=None`` ("trust mode") every span step 1 and step 4 would take
  is taken for a token. Only for text known to come from :meth:`TextTokenizer.tokenize`
  unchanged: an agent-typed number would be "decrypted" into another, and a token the
  matcher reads differently from its value (a date-like token, a cut moved by tokenized
  digits) is not resolved or resolved wrongly. Best effort, for display.

A known token is never left unresolved silently when its vault entry is missing: that raises
:class:`~proxy.errors.NotATokenError`. Whether a note's write-back resolves tokens at all is
the proxy layer's decision.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass

from phonenumbers import Leniency, PhoneNumberMatcher

from proxy.crypto.keyring import DataKey
from proxy.crypto.phones import PhoneTokenizer, any_digit_pattern, ascii_digits
from proxy.crypto.tokens import IssuedToken, Kind, Method, Tokenized, Tokenizer
from proxy.crypto.vault import Vault
from proxy.errors import TokenProxyError

_LETTER = r"[^\W\d_]"
_WHITESPACE_THEN = re.compile(r"[ \u00a0\t\n]+(?=\S)")
_OPENING = "([\uff08\uff3b"
_WORD = re.compile(rf"{_LETTER}+")
_JOIN = r"[ .\-/()]{1,2}"
_PLUS = "+\uff0b"
_GROUP = re.compile(r"[^ ]+")


def _digit_rules(d: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Digit clusters and digit runs over the digit class ``d``."""
    cluster = re.compile(rf"(?:[{_PLUS}]\(?)?[{d}]+(?:{_JOIN}[{_PLUS}]?[{d}]+)*")
    run = re.compile(rf"[{d}]+")
    return cluster, run


_ANY_DIGIT_RULES = _digit_rules(any_digit_pattern())
_ASCII_DIGIT_RULES = _digit_rules("0-9")  # the same rules, faster, for ASCII text
FRAGMENT_DIGITS = 5  # a cluster of this many digits is a phone fragment
#: year-month-day, or day-month-year / month-day-year, one separator throughout
_DATE = re.compile(
    r"(?P<y1>\d{4})(?P<s1>[./\-])(?P<a1>\d{1,2})(?P=s1)(?P<b1>\d{1,2})"
    r"|(?P<a2>\d{1,2})(?P<s2>[./\-])(?P<b2>\d{1,2})(?P=s2)(?P<y2>\d{2}|\d{4})",
    re.ASCII,
)


def _is_date(group: str) -> bool:
    """Whether ``group`` is a calendar date (a real month and day; a 4-digit year in
    1900-2099), in any script's digits. "0812-34-56" is not one."""
    m = _DATE.fullmatch(ascii_digits(group.strip(_EDGES)))
    if m is None:
        return False
    year = m["y1"] or m["y2"]
    if len(year) == 4 and not 1900 <= int(year) <= 2099:
        return False
    a, b = int(m["a1"] or m["a2"]), int(m["b1"] or m["b2"])
    return (1 <= a <= 12 and 1 <= b <= 31) or (1 <= b <= 12 and 1 <= a <= 31)


@dataclass(frozen=True, slots=True)
class _Span:
    start: int
    end: int
    text: str


def _rules(text: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    return _ASCII_DIGIT_RULES if text.isascii() else _ANY_DIGIT_RULES


def _pieces(text: str, cluster: re.Match[str]) -> list[tuple[int, int]]:
    """A cluster cut at its spaces into groups, without date-shaped groups, and cut again
    before a group that starts with "+": the stretches that may be phone fragments."""
    pieces: list[list[tuple[int, int]]] = [[]]
    for g in _GROUP.finditer(text, cluster.start(), cluster.end()):
        if _is_date(g.group()) or _in_a_time(text, *g.span()):
            pieces.append([])
            continue
        if pieces[-1] and text.startswith(_PLUS_START, g.start()):
            pieces.append([])
        pieces[-1].append(g.span())
    return [(p[0][0], p[-1][1]) for p in pieces if p]


def _in_a_time(text: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]`` is the hour or the minutes of a time ("10:30")."""
    after = end + 1 < len(text) and text[end] == ":" and text[end + 1].isdigit()
    before = start >= 2 and text[start - 1] == ":" and text[start - 2].isdigit()
    return after or before


def _only_dates(text: str) -> bool:
    """Whether every group of ``text`` (cut at spaces) is shaped like a date."""
    groups = [g for g in text.split(" ") if g.strip(_EDGES)]
    return all(_is_date(g) for g in groups)


_EDGES = ".-/()"  # what may hang on a group of a cluster: "15/01/2024." is a date
_PLUS_START = ("+", "\uff0b", "(+", "(\uff0b")


def _fragments(text: str, start: int, end: int) -> list[_Span]:
    """The phone fragments of ``text[start:end]`` (see the module docstring)."""
    cluster_re, run_re = _rules(text)
    out = []
    for m in cluster_re.finditer(text, start, end):
        for lo, hi in _pieces(text, m):
            fragment = text[lo:hi]
            if sum(len(r) for r in run_re.findall(fragment)) >= FRAGMENT_DIGITS:
                out.append(_Span(lo, hi, fragment))
    return out


def _known_fragments(
    text: str, start: int, end: int, known: Container[str]
) -> list[_Span]:
    """Known tokens among the digit clusters of ``text[start:end]``, however they were cut:
    the whole cluster, its fragments, or one of its groups (a token the matcher took when
    tokenizing, such as a date, may be read as a plain cluster now)."""
    cluster_re = _rules(text)[0]
    out: list[_Span] = []
    for m in cluster_re.finditer(text, start, end):
        groups = [g.span() for g in _GROUP.finditer(text, m.start(), m.end())]
        candidates = [m.span(), *_pieces(text, m), *groups]
        chosen: list[tuple[int, int]] = []
        for lo, hi in candidates:
            if text[lo:hi] in known and not any(a < hi and lo < b for a, b in chosen):
                chosen.append((lo, hi))
        out.extend(_Span(lo, hi, text[lo:hi]) for lo, hi in sorted(chosen))
    return out


def _gaps(length: int, taken: Sequence[_Span]) -> list[tuple[int, int]]:
    """The stretches of ``[0, length)`` that no span in ``taken`` (sorted) covers."""
    gaps = []
    at = 0
    for span in taken:
        if span.start > at:
            gaps.append((at, span.start))
        at = max(at, span.end)
    if at < length:
        gaps.append((at, length))
    return gaps


def _alternatives(names: Sequence[str]) -> list[list[str]]:
    """What to look for, in order: full names (longest first, as lists of words), then the
    words of 2 letters or more of those names (longest first)."""
    full: set[tuple[str, ...]] = set()
    words: set[str] = set()
    for name in names:
        parts = tuple(name.split())
        if not parts:
            continue
        full.add(parts)
        words.update(w for w in _WORD.findall(name) if len(w) >= 2)
    by_length = sorted(full, key=lambda p: (-sum(map(len, p)) - len(p), p))
    return [list(p) for p in by_length] + [[w] for w in sorted(words, key=lambda w: (-len(w), w))]


def _find_names(
    text: str, gaps: Sequence[tuple[int, int]], wanted: list[list[str]], *, fold: bool
) -> list[_Span]:
    """Where the ``wanted`` word sequences occur in the ``gaps`` of ``text``: at letter
    boundaries, any whitespace between words, case-insensitively if ``fold``. Earlier
    entries win over later ones that overlap them."""
    haystack = text.lower() if fold else text
    if len(haystack) != len(text):  # "İ" lowers to two code points: keep those as they are
        haystack = "".join(c.lower() if len(c.lower()) == 1 else c for c in text)
    taken: list[tuple[int, int]] = []
    found = []
    for words in wanted:
        needles = [w.lower() for w in words] if fold else words
        first = needles[0]
        for lo, hi in gaps:
            at = haystack.find(first, lo, hi)
            while at >= 0:
                end = _match_from(haystack, at, needles, hi)
                if (
                    end >= 0
                    and _boundary(text, at)
                    and _boundary(text, end)
                    and not any(a < end and at < b for a, b in taken)
                ):
                    taken.append((at, end))
                    found.append(_Span(at, end, text[at:end]))
                at = haystack.find(first, at + 1, hi)
    found.sort(key=lambda sp: sp.start)
    return found


#: scripts written without spaces between words (Thai, Lao, Myanmar, Khmer, kana, Han):
#: a name in them is found inside running text, with no letter boundary required
_UNSPACED = (
    (0x0E00, 0x0EFF),
    (0x1000, 0x109F),
    (0x1780, 0x17FF),
    (0x3040, 0x30FF),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0x20000, 0x3FFFF),
)


def _unspaced(c: str) -> bool:
    cp = ord(c)
    return any(lo <= cp <= hi for lo, hi in _UNSPACED)


def _boundary(text: str, at: int) -> bool:
    """Whether a name may start or end at ``at``: not between two letters of a spaced script."""
    if at == 0 or at == len(text):
        return True
    before, after = text[at - 1], text[at]
    if not (before.isalpha() and after.isalpha()):
        return True
    return _unspaced(before) or _unspaced(after)


def _match_from(haystack: str, at: int, needles: Sequence[str], hi: int) -> int:
    """The end of ``needles`` (separated by whitespace) read at ``at``, or -1."""
    end = at + len(needles[0])
    if end > hi:
        return -1
    for needle in needles[1:]:
        gap = end
        while gap < hi and haystack[gap].isspace():
            gap += 1
        if gap == end or not haystack.startswith(needle, gap, hi):
            return -1
        end = gap + len(needle)
    return end


class TextTokenizer:
    """Tokens of free text: phones and known names inside replaced in place (see above)."""

    kind = Kind.TEXT

    def __init__(self, names: Tokenizer, phones: PhoneTokenizer) -> None:
        self.names = names
        self.phones = phones
        self.region = phones.default_region

    # -- public API --------------------------------------------------------------------

    def tokenize(
        self,
        value: str,
        key: DataKey,
        vault: Vault,
        known_names: Sequence[str] = (),
        piece: Callable[[str, str, Tokenized], Tokenized] | None = None,
    ) -> Tokenized:
        """The note with its phones, known names and phone fragments tokenized (``piece``:
        given each piece's kind, text and token, the token to put in its place: the
        engine's, when another key version issued the same one)."""
        phones = [
            cuts[0] for cuts in self._phone_spans(value) if not _only_dates(cuts[0].text)
        ]
        issued: dict[tuple[str, str], IssuedToken] = {}
        replaced: list[tuple[_Span, str]] = []
        phone_memo: dict[str, Tokenized] = {}
        name_memo: dict[str, Tokenized] = {}

        def phone(span: _Span) -> None:
            done = phone_memo.get(span.text)
            if done is None:
                done = self.phones.tokenize(span.text, key, vault)
                if piece is not None:
                    done = piece(Kind.PHONE, span.text, done)
                phone_memo[span.text] = done
            issued[(Kind.PHONE, done.token)] = IssuedToken(
                Kind.PHONE, done.token, key.version, done.method
            )
            replaced.append((span, done.token))

        for span in phones:
            phone(span)
        taken = list(phones)
        wanted = _alternatives(known_names)
        if wanted:
            found = _find_names(value, _gaps(len(value), phones), wanted, fold=True)
            for span in found:
                done = name_memo.get(span.text)
                if done is None:
                    done = self.names.tokenize(span.text, key, vault)
                    if piece is not None:
                        done = piece(Kind.NAME, span.text, done)
                    name_memo[span.text] = done
                issued[(Kind.NAME, done.token)] = IssuedToken(
                    Kind.NAME, done.token, key.version, done.method
                )
                replaced.append((span, done.token))
            taken = sorted(taken + found, key=lambda s: s.start)
        for start, end in _gaps(len(value), taken):
            for span in _fragments(value, start, end):
                phone(span)
        token = _splice(value, replaced)
        pieces = tuple(issued.values())
        methods = {p.method for p in pieces}
        if not methods:
            method = Method.FF1
        elif len(methods) == 1:
            method = methods.pop()
        else:
            method = Method.MIXED
        return Tokenized(token, method, pieces)

    def detokenize(
        self,
        token: str,
        key: DataKey,
        vault: Vault,
        known_name_tokens: Sequence[str] = (),
        known_phone_tokens: Container[str] | None = None,
    ) -> str:
        """The note back, as far as its tokens can be identified (see the module docstring)."""
        replaced: list[tuple[_Span, str]] = []

        def phone(span: _Span) -> bool:
            if known_phone_tokens is not None and span.text not in known_phone_tokens:
                return False
            try:
                replaced.append((span, self.phones.detokenize(span.text, key, vault)))
            except TokenProxyError:
                if known_phone_tokens is not None:
                    raise
                return False  # trust mode: a span that is no vault token stays as it is
            return True

        # matches not resolved leave their text to the fragment rule (a token the matcher
        # now reads differently may still be found whole as a digit cluster)
        taken: list[_Span] = []
        for cuts in self._phone_spans(token):
            if known_phone_tokens is None:
                chosen = [] if _only_dates(cuts[0].text) else cuts[:1]
            else:
                chosen = [c for c in cuts if c.text in known_phone_tokens][:1]
            taken.extend(span for span in chosen if phone(span))
        unique = {t for t in known_name_tokens if t.strip()}
        if unique:
            wanted = [[t] for t in sorted(unique, key=lambda t: (-len(t), t))]
            found = _find_names(token, _gaps(len(token), taken), wanted, fold=False)
            for span in found:
                replaced.append((span, self.names.detokenize(span.text, key, vault)))
            taken = sorted(taken + found, key=lambda s: s.start)
        for start, end in _gaps(len(token), taken):
            if known_phone_tokens is None:
                spans = _fragments(token, start, end)
            else:
                spans = _known_fragments(token, start, end, known_phone_tokens)
            for span in spans:
                phone(span)
        return _splice(token, replaced)

    # -- internals ---------------------------------------------------------------------

    def _phone_spans(self, text: str) -> list[list[_Span]]:
        """Phone numbers phonenumbers' matcher finds in the text, in order: for each match,
        the span to tokenize, then the other ways of cutting it (for :meth:`detokenize`,
        where the cut may read tokenized digits differently)."""
        run_re = _rules(text)[1]
        if run_re.search(text) is None:
            return []
        try:
            matcher = PhoneNumberMatcher(text, self.region, leniency=Leniency.POSSIBLE)
            found = [_Span(m.start, m.end, m.raw_string) for m in matcher]
        except Exception:  # a matcher failure must not leak: the fragment rule covers it
            return []
        found.sort(key=lambda s: s.start)
        out: list[list[_Span]] = []
        end = 0
        for match in found:
            if match.start < end or text[match.start : match.end] != match.text:
                continue  # the matcher never overlaps, nor misplaces; be sure
            end = match.end
            trimmed = _without_times(text, match)
            cuts = [self._own_number(text, trimmed), trimmed, match]
            cuts += [
                _Span(trimmed.start + m.end(), trimmed.end, trimmed.text[m.end() :])
                for m in _WHITESPACE_THEN.finditer(trimmed.text)
            ]
            out.append(cuts)
        return out

    def _starts_number(self, text: str) -> bool:
        """Whether ``text`` starts a number of its own: a "+", or the national prefix
        followed by a possible number."""
        head = text.lstrip(_OPENING)
        if head.startswith(("+", "\uff0b")):
            return True
        prefix = self.phones.national_prefix
        return bool(prefix) and head.startswith(prefix) and self.phones.is_possible(text)

    def _own_number(self, text: str, span: _Span) -> _Span:
        """A match that joined other digits to a number ("in 2024 0812 3456 789"): the
        number only. Split where, after whitespace, a "+" or the national prefix starts a
        possible number, when the match itself does not start that way."""
        if self._starts_number(span.text):
            return span
        for m in _WHITESPACE_THEN.finditer(span.text):
            rest = span.text[m.end() :]
            if self._starts_number(rest):
                start = span.start + m.end()
                return _Span(start, span.end, rest)
        return span


def _without_times(text: str, span: _Span) -> _Span:
    """A match that took the minutes or the hour of a time next to it ("10:30 0812 3456 789",
    "0812 3456 789 10:30"): the match without that run.

    The matcher joins those digits to the number; the structured field holds only the
    number, and its token must be the one in the note. The rule reads character classes
    only."""
    run_re = _rules(text)[1]
    start, end = span.start, span.end
    if start >= 2 and text[start - 1] == ":" and text[start - 2].isdigit():
        first = run_re.match(text, start, end)
        if first is not None:
            rest = first.end()
            while rest < end and text[rest] in _TIME_GAP:
                rest += 1
            if run_re.match(text, rest, end) is not None:
                start = rest
    if end + 1 < len(text) and text[end] == ":" and text[end + 1].isdigit():
        cut = end
        while cut > start and text[cut - 1].isdigit():
            cut -= 1
        while cut > start and text[cut - 1] in _TIME_GAP:
            cut -= 1
        if cut > start and run_re.search(text, start, cut) is not None:
            end = cut
    if (start, end) == (span.start, span.end):
        return span
    return _Span(start, end, text[start:end])


_TIME_GAP = " \u00a0-./"


def _splice(text: str, replaced: Sequence[tuple[_Span, str]]) -> str:
    """``text`` with each span replaced by its new text (spans do not overlap)."""
    if not replaced:
        return text
    out = []
    at = 0
    for span, new in sorted(replaced, key=lambda r: r[0].start):
        out.append(text[at : span.start])
        out.append(new)
        at = span.end
    out.append(text[at:])
    return "".join(out)

