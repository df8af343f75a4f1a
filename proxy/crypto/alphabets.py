"""The fixed alphabets within which the letters of a name are tokenized.

A name is tokenized letter by letter *within a character class*: each letter becomes a
letter of the same class (the same script, and for cased scripts the same case), each
combining mark becomes a mark of the same class, and everything else (spaces, punctuation,
digits, controls, emoji, lone surrogates) is kept where it is. ``proxy.crypto.names`` does the
encrypting; this module only says which class a code point belongs to and at which index.

**The tables are fixed, never derived from ``unicodedata`` at run time.** A token must decrypt
under every future Python: if a newer Unicode database moved a code point from one class to
another, or from "kept" to "letter", old tokens would stop resolving (or a token would no longer
parse into the shape of its value). So every class below is a literal list, and the catch-all
for the rest of Unicode is a committed table generated once under Unicode 14.0.0
(``proxy.crypto._unicode_letters``). Changing any of them changes tokens: a class may never be
renamed, reordered, grown or shrunk. A new alphabet must be a new class over code points that
no class holds yet, and ships with a new key version.

How a code point is classified (:func:`classify`), first match wins:

1. **Explicit classes** (:data:`EXPLICIT_CLASSES`), for the scripts names are written in:
   Latin (a-z; the accented letters of Latin-1 and Latin Extended-A; every other Latin case
   pair), Cyrillic (the 33 Russian letters; every other Cyrillic case pair), Greek (alpha to
   omega; every other Greek case pair, polytonic included), Coptic, Arabic, Hebrew,
   Devanagari, Han (the URO, extension A, and extensions B-G as one class), Hiragana, Katakana,
   Hangul syllables, and the mark classes: combining diacritics U+0300-U+036F, Arabic harakat,
   Hebrew points, Devanagari signs. Cased classes hold explicit (lower, upper) pairs, one code
   point each (so an uppercase letter tokenizes to an uppercase letter and back exactly); the
   pairs are Unicode's simple case mappings, plus ß/ẞ and ı/İ which Unicode does not pair
   one-to-one. Case is not part of the index: the output letter takes the input's case.
2. **The fallback table** for every other code point, so that an unknown script is tokenized
   too, never passed through. Unicode 14 is cut into 128-code-point windows; within a window,
   letters and marks not in an explicit class form one class per group: uppercase (Lu, Lt),
   lowercase (Ll), other letters (Lo, Lm), marks (Mn, Mc, Me). So an unknown script keeps its
   script (its window), its case, and marks stay marks. A group with a single member in its
   window would map that letter to itself, so single-member groups of a window are merged
   (group W) and a letter still alone joins its plane's X class.
3. **Future letters.** A code point unassigned in Unicode 14 may be a letter of a later
   Unicode. It is tokenized within the class of all Unicode-14-unassigned code points of its
   plane (group X): it round-trips, and never passes through. Such a token holds unassigned
   code points, which is fine: no real letter is ever turned into one.
4. Everything else is **kept**: what Unicode 14 does not call a letter or a mark (spaces,
   punctuation, digits, symbols and emoji, controls and format characters such as ZWJ/ZWNJ,
   surrogates, private use), noncharacters, and the variation selectors (which only choose a
   glyph, as U+FE0F does for emoji).

The fallback leaks more than an explicit class: a letter stays within its 128-code-point
window (about 7 bits of it are not hidden). That is why every large alphabet, and every script
in which customer names are commonly written, has an explicit class.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

from proxy.crypto._unicode_letters import GROUPS as _GROUPS
from proxy.crypto._unicode_letters import STARTS as _STARTS

WINDOW_BITS = 7  # fallback classes live in 128-code-point windows
PLANE_BITS = 16
MAX_CODE_POINT = 0x10FFFF


@dataclass(frozen=True, eq=False, slots=True)
class CharClass:
    """One class: an ordered, caseless alphabet, with explicit uppercase forms if cased.

    ``lower`` holds the members (their lowercase forms in a cased class); ``upper`` holds the
    uppercase form of each member, or is empty for a caseless class. ``name`` is stable and
    enters every tweak; ``number`` is a process-local id (never part of a token).
    """

    name: str
    lower: str
    upper: str
    number: int

    @property
    def size(self) -> int:
        """How many members the class has (the radix of one position)."""
        return len(self.lower)

    @property
    def cased(self) -> bool:
        """Whether members have uppercase forms."""
        return bool(self.upper)

    def member(self, index: int, upper: bool = False) -> str:
        """The member at ``index``, in uppercase if asked and the class is cased."""
        return self.upper[index] if upper else self.lower[index]


Letter = tuple[CharClass, int, bool]
"""A tokenized code point: its class, its index in the class, and whether it is uppercase."""


def _span(first: int, last: int) -> str:
    return "".join(map(chr, range(first, last + 1)))


# The case pairs below were generated once from Unicode 14's simple case mappings (each
# uppercase letter of the blocks named, with its one-code-point lowercase letter), plus ß/ẞ and
# ı/İ; they are literal from now on. LATIN_ACCENTED: Latin-1 and Latin Extended-A, 94 pairs.
_LATIN_ACCENTED_LOWER = (
    "àáâãäåæçèéêëìíîïðñòóôõöøùúûüýþÿāăąćĉċčďđēĕėęěĝğġģĥħĩīĭįĳĵķĺļľŀłńņňŋōŏőœŕŗřśŝşšţťŧũūŭůűųŵŷźżžßı"
)
_LATIN_ACCENTED_UPPER = (
    "ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÐÑÒÓÔÕÖØÙÚÛÜÝÞŸĀĂĄĆĈĊČĎĐĒĔĖĘĚĜĞĠĢĤĦĨĪĬĮĲĴĶĹĻĽĿŁŃŅŇŊŌŎŐŒŔŖŘŚŜŞŠŢŤŦŨŪŬŮŰŲŴŶŹŻŽẞİ"
)
# LATIN_EXTENDED: every other Latin pair (Extended-B to -E, IPA, Extended Additional), 327.
_LATIN_EXTENDED_LOWER = (
    "ƀƃƅƈƌƒƕƙƚƞơƣƥƨƭưƴƶƹƽƿǆǉǌǎǐǒǔǖǘǚǜǝǟǡǣǥǧǩǫ"
    "ǭǯǳǵǹǻǽǿȁȃȅȇȉȋȍȏȑȓȕȗșțȝȟȣȥȧȩȫȭȯȱȳȼȿɀɂɇɉɋ"
    "ɍɏɐɑɒɓɔɖɗəɛɜɠɡɣɥɦɨɩɪɫɬɯɱɲɵɽʀʂʃʇʈʉʊʋʌʒʝʞᵹ"
    "ᵽᶎḁḃḅḇḉḋḍḏḑḓḕḗḙḛḝḟḡḣḥḧḩḫḭḯḱḳḵḷḹḻḽḿṁṃṅṇṉṋ"
    "ṍṏṑṓṕṗṙṛṝṟṡṣṥṧṩṫṭṯṱṳṵṷṹṻṽṿẁẃẅẇẉẋẍẏẑẓẕạảấ"
    "ầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵ"
    "ỷỹỻỽỿⱡⱥⱦⱨⱪⱬⱳⱶꜣꜥꜧꜩꜫꜭꜯꜳꜵꜷꜹꜻꜽꜿꝁꝃꝅꝇꝉꝋꝍꝏꝑꝓꝕꝗꝙ"
    "ꝛꝝꝟꝡꝣꝥꝧꝩꝫꝭꝯꝺꝼꝿꞁꞃꞅꞇꞌꞑꞓꞔꞗꞙꞛꞝꞟꞡꞣꞥꞧꞩꞵꞷꞹꞻꞽꞿꟁꟃ"
    "ꟈꟊꟑꟗꟙꟶꭓ"
)
_LATIN_EXTENDED_UPPER = (
    "ɃƂƄƇƋƑǶƘȽȠƠƢƤƧƬƯƳƵƸƼǷǄǇǊǍǏǑǓǕǗǙǛƎǞǠǢǤǦǨǪ"
    "ǬǮǱǴǸǺǼǾȀȂȄȆȈȊȌȎȐȒȔȖȘȚȜȞȢȤȦȨȪȬȮȰȲȻⱾⱿɁɆɈɊ"
    "ɌɎⱯⱭⱰƁƆƉƊƏƐꞫƓꞬƔꞍꞪƗƖꞮⱢꞭƜⱮƝƟⱤƦꟅƩꞱƮɄƱƲɅƷꞲꞰꝽ"
    "ⱣꟆḀḂḄḆḈḊḌḎḐḒḔḖḘḚḜḞḠḢḤḦḨḪḬḮḰḲḴḶḸḺḼḾṀṂṄṆṈṊ"
    "ṌṎṐṒṔṖṘṚṜṞṠṢṤṦṨṪṬṮṰṲṴṶṸṺṼṾẀẂẄẆẈẊẌẎẐẒẔẠẢẤ"
    "ẦẨẪẬẮẰẲẴẶẸẺẼẾỀỂỄỆỈỊỌỎỐỒỔỖỘỚỜỞỠỢỤỦỨỪỬỮỰỲỴ"
    "ỶỸỺỼỾⱠȺȾⱧⱩⱫⱲⱵꜢꜤꜦꜨꜪꜬꜮꜲꜴꜶꜸꜺꜼꜾꝀꝂꝄꝆꝈꝊꝌꝎꝐꝒꝔꝖꝘ"
    "ꝚꝜꝞꝠꝢꝤꝦꝨꝪꝬꝮꝹꝻꝾꞀꞂꞄꞆꞋꞐꞒꟄꞖꞘꞚꞜꞞꞠꞢꞤꞦꞨꞴꞶꞸꞺꞼꞾꟀꟂ"
    "ꟇꟉꟐꟖꟘꟵꞳ"
)
# CYRILLIC_EXTENDED: the pairs of U+0400-052F and U+A640-A69F beyond the Russian 33, 152.
_CYRILLIC_EXTENDED_LOWER = (
    "ѐђѓєѕіїјљњћќѝўџѡѣѥѧѩѫѭѯѱѳѵѷѹѻѽѿҁҋҍҏґғҕҗҙ"
    "қҝҟҡңҥҧҩҫҭүұҳҵҷҹһҽҿӂӄӆӈӊӌӎӏӑӓӕӗәӛӝӟӡӣӥӧө"
    "ӫӭӯӱӳӵӷӹӻӽӿԁԃԅԇԉԋԍԏԑԓԕԗԙԛԝԟԡԣԥԧԩԫԭԯꙁꙃꙅꙇꙉ"
    "ꙋꙍꙏꙑꙓꙕꙗꙙꙛꙝꙟꙡꙣꙥꙧꙩꙫꙭꚁꚃꚅꚇꚉꚋꚍꚏꚑꚓꚕꚗꚙꚛ"
)
_CYRILLIC_EXTENDED_UPPER = (
    "ЀЂЃЄЅІЇЈЉЊЋЌЍЎЏѠѢѤѦѨѪѬѮѰѲѴѶѸѺѼѾҀҊҌҎҐҒҔҖҘ"
    "ҚҜҞҠҢҤҦҨҪҬҮҰҲҴҶҸҺҼҾӁӃӅӇӉӋӍӀӐӒӔӖӘӚӜӞӠӢӤӦӨ"
    "ӪӬӮӰӲӴӶӸӺӼӾԀԂԄԆԈԊԌԎԐԒԔԖԘԚԜԞԠԢԤԦԨԪԬԮꙀꙂꙄꙆꙈ"
    "ꙊꙌꙎꙐꙒꙔꙖꙘꙚꙜꙞꙠꙢꙤꙦꙨꙪꙬꚀꚂꚄꚆꚈꚊꚌꚎꚐꚒꚔꚖꚘꚚ"
)
# GREEK_EXTENDED: the pairs of U+0370-03FF and U+1F00-1FFF beyond alpha-omega, 128.
_GREEK_EXTENDED_LOWER = (
    "ͱͳͷͻͼͽάέήίϊϋόύώϗϙϛϝϟϡϣϥϧϩϫϭϯϲϳϸϻἀἁἂἃἄἅἆἇ"
    "ἐἑἒἓἔἕἠἡἢἣἤἥἦἧἰἱἲἳἴἵἶἷὀὁὂὃὄὅὑὓὕὗὠὡὢὣὤὥὦὧ"
    "ὰάὲέὴήὶίὸόὺύὼώᾀᾁᾂᾃᾄᾅᾆᾇᾐᾑᾒᾓᾔᾕᾖᾗᾠᾡᾢᾣᾤᾥᾦᾧᾰᾱ"
    "ᾳῃῐῑῠῡῥῳ"
)
_GREEK_EXTENDED_UPPER = (
    "ͰͲͶϽϾϿΆΈΉΊΪΫΌΎΏϏϘϚϜϞϠϢϤϦϨϪϬϮϹͿϷϺἈἉἊἋἌἍἎἏ"
    "ἘἙἚἛἜἝἨἩἪἫἬἭἮἯἸἹἺἻἼἽἾἿὈὉὊὋὌὍὙὛὝὟὨὩὪὫὬὭὮὯ"
    "ᾺΆῈΈῊΉῚΊῸΌῪΎῺΏᾈᾉᾊᾋᾌᾍᾎᾏᾘᾙᾚᾛᾜᾝᾞᾟᾨᾩᾪᾫᾬᾭᾮᾯᾸᾹ"
    "ᾼῌῘῙῨῩῬῼ"
)
# COPTIC: U+2C80-2CFF, 53 pairs.
_COPTIC_LOWER = "ⲁⲃⲅⲇⲉⲋⲍⲏⲑⲓⲕⲗⲙⲛⲝⲟⲡⲣⲥⲧⲩⲫⲭⲯⲱⲳⲵⲷⲹⲻⲽⲿⳁⳃⳅⳇⳉⳋⳍⳏⳑⳓⳕⳗⳙⳛⳝⳟⳡⳣⳬⳮⳳ"
_COPTIC_UPPER = "ⲀⲂⲄⲆⲈⲊⲌⲎⲐⲒⲔⲖⲘⲚⲜⲞⲠⲢⲤⲦⲨⲪⲬⲮⲰⲲⲴⲶⲸⲺⲼⲾⳀⳂⳄⳆⳈⳊⳌⳎⳐⳒⳔⳖⳘⳚⳜⳞⳠⳢⳫⳭⳲ"


_CLASSES: list[CharClass] = []
_SMALL: dict[int, Letter] = {}  # code point -> letter, for classes given as strings
_SPAN_LIST: list[tuple[int, int, CharClass, int]] = []  # (first, last, class, index of first)


def _cased(name: str, lower: str, upper: str) -> CharClass:
    if len(lower) != len(upper):
        raise ValueError(f"class {name}: {len(lower)} lower and {len(upper)} upper forms")
    cls = CharClass(name, lower, upper, len(_CLASSES))
    _CLASSES.append(cls)
    for upper_case, forms in ((False, lower), (True, upper)):
        for i, ch in enumerate(forms):
            if ord(ch) in _SMALL:
                raise ValueError(f"class {name}: U+{ord(ch):04X} is in two classes")
            _SMALL[ord(ch)] = (cls, i, upper_case)
    return cls


def _caseless(name: str, *spans: tuple[int, int]) -> CharClass:
    cls = CharClass(name, "".join(_span(a, b) for a, b in spans), "", len(_CLASSES))
    _CLASSES.append(cls)
    offset = 0
    for first, last in spans:
        _SPAN_LIST.append((first, last, cls, offset))
        offset += last - first + 1
    return cls


# The explicit classes. NEVER rename, reorder, edit or remove one: tokens depend on them.
LATIN = _cased("latin", _span(0x61, 0x7A), _span(0x41, 0x5A))
LATIN_ACCENTED = _cased("latin-accented", _LATIN_ACCENTED_LOWER, _LATIN_ACCENTED_UPPER)
LATIN_EXTENDED = _cased("latin-extended", _LATIN_EXTENDED_LOWER, _LATIN_EXTENDED_UPPER)
CYRILLIC = _cased("cyrillic", _span(0x430, 0x44F) + "ё", _span(0x410, 0x42F) + "Ё")
CYRILLIC_EXTENDED = _cased("cyrillic-extended", _CYRILLIC_EXTENDED_LOWER, _CYRILLIC_EXTENDED_UPPER)
GREEK = _cased("greek", "αβγδεζηθικλμνξοπρστυφχψω", "ΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩ")
GREEK_EXTENDED = _cased("greek-extended", _GREEK_EXTENDED_LOWER, _GREEK_EXTENDED_UPPER)
COPTIC = _cased("coptic", _COPTIC_LOWER, _COPTIC_UPPER)
ARABIC = _caseless("arabic", (0x0621, 0x063F), (0x0641, 0x064A))  # U+0640 tatweel is no letter
HEBREW = _caseless("hebrew", (0x05D0, 0x05EA))
DEVANAGARI = _caseless("devanagari", (0x0904, 0x0939))  # independent vowels and consonants
HAN = _caseless("han", (0x4E00, 0x9FFF))
HAN_EXT_A = _caseless("han-ext-a", (0x3400, 0x4DBF))
HAN_EXT_B_G = _caseless(  # extensions B to G as assigned in Unicode 14: 65,269 ideographs
    "han-ext-b-g",
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B738),
    (0x2B740, 0x2B81D),
    (0x2B820, 0x2CEA1),
    (0x2CEB0, 0x2EBE0),
    (0x30000, 0x3134A),
)
HIRAGANA = _caseless("hiragana", (0x3041, 0x3096))
KATAKANA = _caseless("katakana", (0x30A1, 0x30FA))
HANGUL = _caseless("hangul", (0xAC00, 0xD7A3))
COMBINING = _caseless("combining", (0x0300, 0x036F))
ARABIC_MARKS = _caseless("arabic-harakat", (0x064B, 0x0652))
HEBREW_POINTS = _caseless("hebrew-points", (0x05B0, 0x05BC))
DEVANAGARI_SIGNS = _caseless(  # vowel signs, virama, nukta, anusvara, visarga, candrabindu...
    "devanagari-signs",
    (0x0900, 0x0903),
    (0x093A, 0x093C),
    (0x093E, 0x094F),
    (0x0951, 0x0957),
    (0x0962, 0x0963),
)

EXPLICIT_CLASSES: tuple[CharClass, ...] = tuple(_CLASSES)

_SPAN_LIST.sort(key=lambda s: s[0])
_SPAN_FIRSTS = [s[0] for s in _SPAN_LIST]
for _prev, _next in pairwise(_SPAN_LIST):
    if _prev[1] >= _next[0]:
        raise ValueError(f"explicit classes {_prev[2].name} and {_next[2].name} overlap")
for _first, _last, _cls, _ in _SPAN_LIST:
    if any(_first <= _cp <= _last for _cp in _SMALL):
        raise ValueError(f"explicit class {_cls.name} overlaps another")


def explicit(cp: int) -> Letter | None:
    """The explicit class of a code point, or None if no explicit class holds it."""
    hit = _SMALL.get(cp)
    if hit is not None:
        return hit
    i = bisect_right(_SPAN_FIRSTS, cp) - 1
    if i >= 0:
        first, last, cls, offset = _SPAN_LIST[i]
        if cp <= last:
            return (cls, offset + cp - first, False)
    return None


# -- the fallback ----------------------------------------------------------------------------

_FALLBACK_GROUPS = frozenset("ULOMWX")


def table_group(cp: int) -> str:
    """The fallback table's group of a code point (see ``proxy.crypto._unicode_letters``)."""
    group: str = _GROUPS[bisect_right(_STARTS, cp) - 1]
    return group


@dataclass(frozen=True, slots=True)
class _Runs:
    """A fallback class's members as runs of code points, for index look-ups."""

    firsts: list[int]
    offsets: list[int]


_fallback: dict[tuple[int, str], tuple[CharClass, _Runs]] = {}
_fallback_lock = threading.Lock()


def _fallback_key(cp: int, group: str) -> tuple[int, str]:
    return (cp >> PLANE_BITS, group) if group == "X" else (cp >> WINDOW_BITS, group)


def _group_runs(group: str, lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """The table's runs of ``group`` clipped to [lo, hi)."""
    i = bisect_right(_STARTS, lo) - 1
    while i < len(_STARTS) and _STARTS[i] < hi:
        end = _STARTS[i + 1] if i + 1 < len(_STARTS) else MAX_CODE_POINT + 1
        if _GROUPS[i] == group:
            yield max(_STARTS[i], lo), min(end, hi)
        i += 1


def _fallback_class(key: tuple[int, str]) -> tuple[CharClass, _Runs]:
    found = _fallback.get(key)
    if found is not None:
        return found
    with _fallback_lock:
        found = _fallback.get(key)
        if found is not None:
            return found
        area, group = key
        bits = PLANE_BITS if group == "X" else WINDOW_BITS
        lo, hi = area << bits, (area + 1) << bits
        members: list[int] = []
        firsts: list[int] = []
        offsets: list[int] = []
        for start, end in _group_runs(group, lo, hi):
            for cp in range(start, end):
                if explicit(cp) is not None:
                    continue
                if not members or members[-1] != cp - 1:
                    firsts.append(cp)
                    offsets.append(len(members))
                members.append(cp)
        name = f"plane{area}-X" if group == "X" else f"{lo:04X}-{group}"
        cls = CharClass(name, "".join(map(chr, members)), "", len(_CLASSES))
        _CLASSES.append(cls)
        found = _fallback[key] = (cls, _Runs(firsts, offsets))
        return found


def classify(cp: int) -> Letter | None:
    """The class, index and case of a code point, or None if it is kept as it is."""
    hit = explicit(cp)
    if hit is not None:
        return hit
    group = table_group(cp)
    if group not in _FALLBACK_GROUPS:
        return None
    cls, runs = _fallback_class(_fallback_key(cp, group))
    i = bisect_right(runs.firsts, cp) - 1
    return (cls, runs.offsets[i] + cp - runs.firsts[i], False)


def all_classes() -> Iterator[CharClass]:
    """Every class, explicit and fallback (building each fallback class: slow, for tests)."""
    yield from EXPLICIT_CLASSES
    seen: set[tuple[int, str]] = set()
    for i, start in enumerate(_STARTS):
        group = _GROUPS[i]
        if group not in _FALLBACK_GROUPS:
            continue
        end = _STARTS[i + 1] if i + 1 < len(_STARTS) else MAX_CODE_POINT + 1
        bits = PLANE_BITS if group == "X" else WINDOW_BITS
        for area in range(start >> bits, ((end - 1) >> bits) + 1):
            key = (area, group)
            if key in seen:
                continue
            seen.add(key)
            cls = _fallback_class(key)[0]
            if cls.size:
                yield cls
