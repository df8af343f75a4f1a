"""Name tokens: a whole name enciphered as one, letter for letter within its script.

A value is read code point by code point (``proxy.crypto.alphabets``): each letter or mark is
a position of some character class (with its index in the class and, in a cased class,
whether it is uppercase); everything else (spaces, hyphens, apostrophes, periods, digits,
controls, emoji, lone surrogates) is kept where it is. The *shape* of a value is that
sequence: the kept characters, and the class and case of every other position. A token has
the shape of its value, so it has the same length in code points, the same non-letters in
the same places, and each letter is a letter of the same class and case.

The letters of the whole value are enciphered together ("Budi Santoso" and "Budi Hartono"
share nothing) over the domain N = product of the class sizes of the positions:

- **no letter** (empty, whitespace, digits only): the value is its own token, with method
  FF1 (deterministic, nothing to hide, nothing stored in the vault);
- **N < 10^6** (the mononym "Budi", "Li", "Ng"): FF1 is not secure over so small a domain, so
  the vault assigns a uniformly random token of the same shape (``secrets``), once per
  (value, key version), method VAULT;
- **one class** (the common case: "Budi Santoso" is 11 Latin letters, case re-applied):
  FF1 with radix = class size over the indices;
- **several classes** ("José": Latin and accented Latin; NFD text: letters and combining
  marks): the indices read as one mixed-radix integer x < N, enciphered with FF1 radix 2 over
  L = bitlength(N - 1) bits and cycle-walked (enciphered again until below N; deciphered the
  same way), which is a permutation of exactly [0, N).

The FF1 tweak is 4 bytes of SHA-256 over the kind, the key version and the shape's
signature (class names, cases, kept characters). It binds a token to its version and shape,
so "BUDI SANTOSO" and "Budi-Santoso" are not enciphered like "Budi Santoso"; and being short
it keeps FF1 at one AES call per round. ``detokenize`` reads the token's shape (equal to the
value's) and inverts the same way; a token whose shape goes to the vault is looked up there,
under a one-key keyring so that only tokens of the given key version resolve.

Speed: the per-code-point look-ups are ``str.translate`` tables that fill themselves on first
use, and everything that depends only on the shape (method, radices, output alphabets, the
tweak per version) is planned once and cached. ``tokenize_many`` runs the values of *every*
shape through FF1 together, in lock-step: FF1 of any radix, length and tweak under one key
differs per round only in a one-block constant, the bytes of S it reads and the moduli, so the
whole batch takes one AES call per round (and cycle-walking values go round again together);
the arithmetic is FF1's own, value by value, so a token does not depend on its batch.

Input that is odd but a ``str`` never fails: lone surrogates, controls and emoji are kept;
long values work (10,000 Latin letters take about 20 ms of CPU, 10,000 Han ideographs, 14 bits
each, about 70 ms: the cost grows with the size of the domain, faster than linearly); a vault
that cannot assign a token raises ``VaultMissError`` (fail closed), and ``detokenize`` of a
short token the vault does not hold raises ``NotATokenError``. A retired key neither makes nor
resolves tokens (``KeyringError``).

Tokens are not normalized, nor are values: a value in NFD gives a token with combining marks,
and a system that NFC-normalizes that token changes it (it then no longer resolves).
"""

from __future__ import annotations

import secrets
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from hashlib import sha256
from operator import mul

from proxy.crypto.alphabets import Letter, classify
from proxy.crypto.ff1 import FF1, MAX_RADIX, MIN_DOMAIN, Lane, run_lanes
from proxy.crypto.keyring import DataKey, Keyring, KeyState
from proxy.crypto.tokens import Kind, Method, Tokenized
from proxy.crypto.vault import Vault
from proxy.errors import KeyringError, NotATokenError

_CACHE_LIMIT = 1 << 16  # code points remembered by each translation table (then: computed)
_PLAN_LIMIT = 1 << 14  # shapes remembered (then: forgotten all at once, and relearned)
_PLAN_MAX_LEN = 64  # longer shapes are planned on each call, not remembered
_SHAPE_BASE = 0x4E00  # shape codes are Han ideographs: always tokenized, never a kept character
_SHAPE_CODES = 0xA000 - _SHAPE_BASE
_DIGITS36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_INT_STR_MAX = 4000  # int(text, base) refuses over 4300 digits (sys.int_info)
_SMALL_N = 48  # up to this many numerals, convert digit by digit; above, divide and conquer
_TWEAK_BYTES = 4


# -- per code point look-ups -----------------------------------------------------------------

_letters: dict[int, Letter | None] = {}


def _letter(cp: int) -> Letter | None:
    try:
        return _letters[cp]
    except KeyError:
        pass
    found = classify(cp)
    if len(_letters) < _CACHE_LIMIT:
        _letters[cp] = found
    return found


class _Table(dict[int, "str | None"]):
    """A ``str.translate`` table computed per code point on first use."""

    def __init__(self, make: Callable[[int, Letter | None], str | None]) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, cp: int) -> str | None:
        out = self._make(cp, _letter(cp))
        if len(self) < _CACHE_LIMIT:
            self[cp] = out
        return out


@dataclass(frozen=True, slots=True)
class _Code:
    """What a shape code stands for: a class in one case."""

    alphabet: str  # the class's members in that case
    number: int  # the class's process-local number
    signature: str  # the class's stable name and case, as it enters the tweak


_codes: dict[str, _Code] = {}


def _shape_code(cp: int, letter: Letter | None) -> str:
    if letter is None:
        return chr(cp)
    cls, _, upper = letter
    code = 2 * cls.number + upper
    if code >= _SHAPE_CODES:  # pragma: no cover - there are about 1,400 classes in all
        raise RuntimeError("too many character classes for the shape codes")
    char = chr(_SHAPE_BASE + code)
    if char not in _codes:
        alphabet = cls.upper if upper else cls.lower
        _codes[char] = _Code(alphabet, cls.number, cls.name + ("^," if upper else ","))
    return char


def _signature_part(cp: int, letter: Letter | None) -> str:
    """Applied to a *shape*: a code becomes its class's name and case, a kept character its
    code point in hex (shape codes are Han ideographs, which are never kept)."""
    code = _codes.get(chr(cp))
    return code.signature if code is not None else f"={cp:X},"


def _index_char(cp: int, letter: Letter | None) -> str | None:
    return None if letter is None else chr(letter[1])


def _digit_char(cp: int, letter: Letter | None) -> str | None:
    if letter is None:
        return None
    index = letter[1]
    return _DIGITS36[index] if index < 36 else "\x00"  # only read when the radix is <= 36


_SHAPE = _Table(_shape_code)  # kept characters stay, letters become a code of (class, case)
_INDEX = _Table(_index_char)  # kept characters go, letters become chr(index)
_DIGIT = _Table(_digit_char)  # kept characters go, letters become a base-36 digit
_SIGNATURE = _Table(_signature_part)  # from a shape to its stable signature


# -- plans -----------------------------------------------------------------------------------


class _Way(Enum):
    NONE = "none"  # no letter
    VAULT = "vault"  # domain below 10^6
    FF1 = "ff1"  # one class: FF1 with radix = class size
    WALK = "walk"  # several classes: FF1 radix 2 over bits, cycle-walking below the domain


@dataclass(frozen=True, eq=False, slots=True)
class _Plan:
    """Everything that depends only on a shape."""

    way: _Way
    template: tuple[str, ...]  # the kept characters, "" where a letter goes
    positions: tuple[int, ...]  # where the letters go
    alphabets: tuple[str, ...]  # per letter: its class's members in its case
    radices: tuple[int, ...]  # per letter: its class's size
    radix: int  # the radix of a FF1 plan, else 0
    domain: int
    bits: int  # FF1 radix-2 length of a WALK plan
    signature: bytes
    steps: tuple[tuple[int, str, int], ...]  # (position, alphabet, radix), last letter first
    weights: tuple[int, ...]  # per letter: the product of the later radices (short plans)
    tweaks: dict[int, bytes] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.positions)

    def tweak(self, kind: str, version: int) -> bytes:
        tweak = self.tweaks.get(version)
        if tweak is None:
            head = f"tokenproxy/{kind}/v{version}/".encode()
            tweak = sha256(head + self.signature).digest()[:_TWEAK_BYTES]
            self.tweaks[version] = tweak
        return tweak


_plans: dict[str, _Plan] = {}


def _plan_of(text: str) -> _Plan:
    shape = text.translate(_SHAPE)
    plan = _plans.get(shape)
    if plan is None:
        plan = _make_plan(shape)
        if len(shape) <= _PLAN_MAX_LEN:
            if len(_plans) >= _PLAN_LIMIT:
                _plans.clear()
            _plans[shape] = plan
    return plan


def _make_plan(shape: str) -> _Plan:
    codes = [_codes.get(ch) for ch in shape]
    letters = [c for c in codes if c is not None]
    positions = [pos for pos, c in enumerate(codes) if c is not None]
    radices = [len(c.alphabet) for c in letters]
    domain = _product(radices)
    radix = 0
    bits = 0
    if not letters:
        way = _Way.NONE
    elif domain < MIN_DOMAIN:
        way = _Way.VAULT
    elif len({c.number for c in letters}) == 1 and 2 <= radices[0] <= MAX_RADIX:
        way = _Way.FF1
        radix = radices[0]
    else:
        way = _Way.WALK
        bits = (domain - 1).bit_length()
    return _Plan(
        way=way,
        template=tuple("" if c is not None else ch for ch, c in zip(shape, codes, strict=True)),
        positions=tuple(positions),
        alphabets=tuple(c.alphabet for c in letters),
        radices=tuple(radices),
        radix=radix,
        domain=domain,
        bits=bits,
        signature=shape.translate(_SIGNATURE).encode("utf-8", "surrogatepass"),
        steps=tuple(zip(positions, (c.alphabet for c in letters), radices, strict=True))[::-1],
        weights=_weights(radices) if len(radices) <= _SMALL_N else (),
    )


def _weights(radices: Sequence[int]) -> tuple[int, ...]:
    out = []
    p = 1
    for r in reversed(radices):
        out.append(p)
        p *= r
    return tuple(reversed(out))


# -- numerals <-> integers -------------------------------------------------------------------


def _product(radices: Sequence[int]) -> int:
    if len(radices) <= _SMALL_N:
        p = 1
        for r in radices:
            p *= r
        return p
    mid = len(radices) // 2
    return _product(radices[:mid]) * _product(radices[mid:])


def _combine(nums: Sequence[int], radices: Sequence[int], lo: int, hi: int) -> tuple[int, int]:
    """(the mixed-radix value of nums[lo:hi], the product of radices[lo:hi])."""
    if hi - lo <= _SMALL_N:
        x = 0
        p = 1
        for i in range(lo, hi):
            r = radices[i]
            x = x * r + nums[i]
            p *= r
        return x, p
    mid = (lo + hi) // 2
    a, pa = _combine(nums, radices, lo, mid)
    b, pb = _combine(nums, radices, mid, hi)
    return a * pb + b, pa * pb


def _products(radices: Sequence[int], lo: int, hi: int, memo: dict[tuple[int, int], int]) -> int:
    if hi - lo <= _SMALL_N:
        p = 1
        for i in range(lo, hi):
            p *= radices[i]
    else:
        mid = (lo + hi) // 2
        p = _products(radices, lo, mid, memo) * _products(radices, mid, hi, memo)
    memo[(lo, hi)] = p
    return p


def _split(
    x: int,
    radices: Sequence[int],
    lo: int,
    hi: int,
    out: list[int],
    memo: dict[tuple[int, int], int],
) -> None:
    """Write the mixed-radix digits of x (below the product of radices[lo:hi]) to out[lo:hi]."""
    if hi - lo <= _SMALL_N:
        for i in range(hi - 1, lo - 1, -1):
            x, out[i] = divmod(x, radices[i])
        return
    mid = (lo + hi) // 2
    a, b = divmod(x, memo[(mid, hi)])
    _split(a, radices, lo, mid, out, memo)
    _split(b, radices, mid, hi, out, memo)


def _to_int(text: str, plan: _Plan) -> int:
    if plan.radix and plan.radix <= 36 and plan.n <= _INT_STR_MAX:
        return int(text.translate(_DIGIT), plan.radix)
    if plan.weights:
        return sum(map(mul, map(ord, text.translate(_INDEX)), plan.weights))
    nums = [ord(c) for c in text.translate(_INDEX)]
    return _combine(nums, plan.radices, 0, len(nums))[0]


def _digits(x: int, plan: _Plan) -> list[int]:
    """The mixed-radix digits of x, by divide and conquer (for long values)."""
    n = plan.n
    out = [0] * n
    radices = plan.radices
    memo: dict[tuple[int, int], int] = {}
    _products(radices, 0, n, memo)
    _split(x, radices, 0, n, out, memo)
    return out


def _to_ints(texts: Sequence[str], plan: _Plan) -> list[int]:
    """:func:`_to_int` over texts of one plan."""
    if plan.radix and plan.radix <= 36 and plan.n <= _INT_STR_MAX:
        radix = plan.radix
        return [int(text.translate(_DIGIT), radix) for text in texts]
    return [_to_int(text, plan) for text in texts]


def _render(plan: _Plan, x: int) -> str:
    """The text of the plan's shape whose letters are the mixed-radix digits of x."""
    out = list(plan.template)
    if plan.n > _SMALL_N:
        for pos, alphabet, d in zip(plan.positions, plan.alphabets, _digits(x, plan), strict=True):
            out[pos] = alphabet[d]
    else:
        for pos, alphabet, radix in plan.steps:
            x, d = divmod(x, radix)
            out[pos] = alphabet[d]
    return "".join(out)


def _render_many(plan: _Plan, xs: Sequence[int]) -> list[str]:
    """:func:`_render` over many integers of one plan."""
    if plan.n > _SMALL_N:
        return [_render(plan, x) for x in xs]
    template = plan.template
    steps = plan.steps
    join = "".join
    texts = []
    for x in xs:
        out = list(template)
        for pos, alphabet, radix in steps:
            x, d = divmod(x, radix)
            out[pos] = alphabet[d]
        texts.append(join(out))
    return texts


def _draw(plan: _Plan) -> str:
    """A uniformly random text of the plan's shape (a vault token)."""
    out = list(plan.template)
    for pos, alphabet in zip(plan.positions, plan.alphabets, strict=True):
        out[pos] = alphabet[secrets.randbelow(len(alphabet))]
    return "".join(out)


# -- the cipher over a plan ------------------------------------------------------------------


def _cipher(plan: _Plan, key: DataKey) -> FF1:
    return key.ff1(plan.radix if plan.way is _Way.FF1 else 2)


def _length(plan: _Plan) -> int:
    return plan.n if plan.way is _Way.FF1 else plan.bits


def _crypt(plan: _Plan, key: DataKey, tweak: bytes, xs: list[int], *, decrypt: bool) -> list[int]:
    """FF1 (FF1 plans) or cycle-walking FF1 radix 2 (WALK plans) over a batch of one plan."""
    ff1 = _cipher(plan, key)
    length = _length(plan)
    run = ff1.decrypt_ints if decrypt else ff1.encrypt_ints
    if len(xs) == 1:
        lane = ff1.lane(tweak, length)
        if lane is not None and 0 <= xs[0] < lane.mod_u * lane.mod_v:
            y = ff1.crypt_lane(lane, xs[0], decrypt=decrypt)
            if plan.way is _Way.WALK:
                while y >= plan.domain:
                    y = ff1.crypt_lane(lane, y, decrypt=decrypt)
            return [y]
        run1 = ff1.decrypt_int if decrypt else ff1.encrypt_int
        y = run1(xs[0], length, tweak)
        if plan.way is _Way.WALK:
            while y >= plan.domain:
                y = run1(y, length, tweak)
        return [y]
    ys = run(xs, length, tweak)
    if plan.way is _Way.WALK:
        pending = [k for k, y in enumerate(ys) if y >= plan.domain]
        while pending:
            again = run([ys[k] for k in pending], length, tweak)
            for k, y in zip(pending, again, strict=True):
                ys[k] = y
            pending = [k for k in pending if ys[k] >= plan.domain]
    return ys


def _crypt_groups(
    key: DataKey, groups: list[tuple[_Plan, bytes, list[int]]], *, decrypt: bool
) -> list[list[int]]:
    """:func:`_crypt` over several groups (plan, tweak, integers) at once.

    FF1 under one AES key, whatever the radix, length and tweak, differs from round to round
    only in the constant XORed into Q's one-block varying tail, in how many bytes of the output
    S it reads and in the moduli; so the values of every group whose tail is one block (every
    name) run in lock-step, with one AES-ECB call per round for all of them: the arithmetic is
    exactly that of ``FF1._rounds_many``, value by value. Groups of other FF1 geometry take
    :func:`_crypt`. Cycle-walking values go round again together.
    """
    results = _crypt_groups_once(key, groups, decrypt)
    pending = _walking(groups, results)
    while pending:
        again = _crypt_groups_once(
            key,
            [(groups[g][0], groups[g][1], [results[g][k] for k in ks]) for g, ks in pending],
            decrypt,
        )
        for (g, ks), ys_g in zip(pending, again, strict=True):
            out_g = results[g]
            for k, y in zip(ks, ys_g, strict=True):
                out_g[k] = y
        pending = [
            (g, [k for k in ks if results[g][k] >= groups[g][0].domain]) for g, ks in pending
        ]
        pending = [(g, ks) for g, ks in pending if ks]
    return results


def _walking(
    groups: list[tuple[_Plan, bytes, list[int]]], results: list[list[int]]
) -> list[tuple[int, list[int]]]:
    """(group, the positions in it) of the WALK values that left the domain."""
    pending = []
    for g, (plan, _, _) in enumerate(groups):
        if plan.way is _Way.WALK:
            domain = plan.domain
            ks = [k for k, y in enumerate(results[g]) if y >= domain]
            if ks:
                pending.append((g, ks))
    return pending


def _crypt_groups_once(
    key: DataKey, groups: list[tuple[_Plan, bytes, list[int]]], decrypt: bool
) -> list[list[int]]:
    """One FF1 pass (no cycle-walking) over the groups, the lock-step ones together."""
    results: list[list[int]] = [[] for _ in groups]
    in_lanes: list[int] = []
    jobs: list[tuple[Lane, list[int]]] = []
    aes_encrypt: Callable[[bytes], bytes] | None = None
    for g, (plan, tweak, xs) in enumerate(groups):
        ff1 = _cipher(plan, key)
        lane = ff1.lane(tweak, _length(plan))
        if lane is None:
            results[g] = _crypt_pass(ff1, _length(plan), tweak, xs, decrypt)
        else:
            in_lanes.append(g)
            jobs.append((lane, xs))
            aes_encrypt = ff1.block_encrypt  # every radix's cipher is under the same key
    if aes_encrypt is not None:
        for g, ys in zip(in_lanes, run_lanes(aes_encrypt, jobs, decrypt=decrypt), strict=True):
            results[g] = ys
    return results


def _crypt_pass(ff1: FF1, length: int, tweak: bytes, xs: list[int], decrypt: bool) -> list[int]:
    run = ff1.decrypt_ints if decrypt else ff1.encrypt_ints
    return run(xs, length, tweak)


_one_key_rings: weakref.WeakKeyDictionary[DataKey, Keyring] = weakref.WeakKeyDictionary()


def _only(key: DataKey) -> Keyring:
    """A keyring of just this key, so the vault resolves only tokens of its version."""
    ring = _one_key_rings.get(key)
    if ring is None:
        active = key if key.state is KeyState.ACTIVE else key.with_state(KeyState.ACTIVE)
        ring = _one_key_rings[key] = Keyring((active,))
    return ring


def _usable(key: DataKey) -> None:
    if key.state is KeyState.RETIRED:
        raise KeyringError(f"key version {key.version} is retired: it neither makes nor resolves")


class NameTokenizer:
    """Format-preserving tokens of personal names (see the module docstring).

    Stateless apart from process-wide caches; one instance may be shared by every thread.
    """

    kind: Kind = Kind.NAME

    def tokenize(self, value: str, key: DataKey, vault: Vault) -> Tokenized:
        """The token of ``value`` under ``key``; values with a domain below 10^6 use ``vault``."""
        _usable(key)
        plan = _plan_of(value)
        if plan.way is _Way.NONE:
            return Tokenized(value, Method.FF1)
        if plan.way is _Way.VAULT:
            token = vault.token_for(self.kind, value, key, lambda: _draw(plan))
            return Tokenized(token, Method.VAULT)
        tweak = plan.tweak(self.kind, key.version)
        y = _crypt(plan, key, tweak, [_to_int(value, plan)], decrypt=False)[0]
        return Tokenized(_render(plan, y), Method.FF1)

    def detokenize(self, token: str, key: DataKey, vault: Vault) -> str:
        """The value whose token under ``key`` is ``token``.

        Any text of an FF1 shape deciphers to *some* value: whether ``token`` is a token at all
        is the registry's question. A vault-shaped token the vault does not hold under this
        key version raises :class:`NotATokenError`.
        """
        _usable(key)
        plan = _plan_of(token)
        if plan.way is _Way.NONE:
            return token
        if plan.way is _Way.VAULT:
            return self._from_vault(token, key, vault)
        tweak = plan.tweak(self.kind, key.version)
        x = _crypt(plan, key, tweak, [_to_int(token, plan)], decrypt=True)[0]
        return _render(plan, x)

    def tokenize_many(self, values: Sequence[str], key: DataKey, vault: Vault) -> list[Tokenized]:
        """:meth:`tokenize` over many values, running those of one shape through FF1 at once."""
        _usable(key)
        out: list[Tokenized | None] = [None] * len(values)
        batches: dict[_Plan, list[int]] = {}
        plans_get = _plans.get
        none, vault_way = _Way.NONE, _Way.VAULT
        ff1 = Method.FF1
        for i, value in enumerate(values):
            plan = plans_get(value.translate(_SHAPE)) or _plan_of(value)
            way = plan.way
            if way is none:
                out[i] = Tokenized(value, ff1)
            elif way is vault_way:
                out[i] = self.tokenize(value, key, vault)
            else:
                members = batches.get(plan)
                if members is None:
                    batches[plan] = [i]
                else:
                    members.append(i)
        kind, version = self.kind, key.version
        groups = [
            (plan, plan.tweak(kind, version), _to_ints([values[i] for i in members], plan))
            for plan, members in batches.items()
        ]
        for (plan, members), ys in zip(
            batches.items(), _crypt_groups(key, groups, decrypt=False), strict=True
        ):
            for i, token in zip(members, _render_many(plan, ys), strict=True):
                out[i] = Tokenized(token, ff1)
        return [t for t in out if t is not None]

    def detokenize_many(self, tokens: Sequence[str], key: DataKey, vault: Vault) -> list[str]:
        """:meth:`detokenize` over many tokens, batching FF1 as :meth:`tokenize_many` does."""
        _usable(key)
        out: list[str | None] = [None] * len(tokens)
        batches: dict[_Plan, list[int]] = {}
        for i, token in enumerate(tokens):
            plan = _plan_of(token)
            if plan.way is _Way.NONE:
                out[i] = token
            elif plan.way is _Way.VAULT:
                out[i] = self._from_vault(token, key, vault)
            else:
                batches.setdefault(plan, []).append(i)
        kind, version = self.kind, key.version
        groups = [
            (plan, plan.tweak(kind, version), _to_ints([tokens[i] for i in members], plan))
            for plan, members in batches.items()
        ]
        for (plan, members), xs in zip(
            batches.items(), _crypt_groups(key, groups, decrypt=True), strict=True
        ):
            for i, value in zip(members, _render_many(plan, xs), strict=True):
                out[i] = value
        return [v for v in out if v is not None]

    def _from_vault(self, token: str, key: DataKey, vault: Vault) -> str:
        value = vault.value_for(self.kind, token, _only(key))
        if value.translate(_SHAPE) != token.translate(_SHAPE):
            raise NotATokenError("the vault holds a name of another shape for this token")
        return value
