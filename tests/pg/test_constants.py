"""Texts that differ only in the integers they compare columns with share one analysis,
and only those: what a text's integers may mean elsewhere (a sort position, an argument,
a limit, a phone's digits) keeps it analysed on its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pglast import parser as pg_parser
from session_env import SEED, PgEnv, pg_env
from test_lineage import FakeSchema
from test_session import RawSession

from proxy.pg.analysis import Relation
from proxy.pg.constants import Template, digit_runs, integers_blanked, only_compared_integers
from proxy.pg.gate import AnalysisCache
from proxy.pg.lineage import analyze
from proxy.pg.messages import DataRow, ErrorResponse, Query

POINT = "SELECT id, full_name, phone FROM customers WHERE id = {}"


def test_integers_are_blanked_and_nothing_else() -> None:
    assert integers_blanked(POINT.format(1)) == integers_blanked(POINT.format(41234))
    assert integers_blanked(POINT.format(1)) != integers_blanked(POINT.format(-1))
    assert integers_blanked(POINT.format(1)) != integers_blanked(POINT.format("'1'"))
    assert integers_blanked(POINT.format(1)) != integers_blanked(POINT.format(1) + " ")
    assert integers_blanked(POINT.format(1) + " /*ticket='SUP-1'*/") != integers_blanked(
        POINT.format(2) + " /*ticket='SUP-2'*/")
    assert integers_blanked(POINT.format(99999999999)) is None  # (a numeric: FCONST)
    assert integers_blanked(POINT.format("$1")) is None
    assert integers_blanked("SELECT 'Zoë' = 1") is None  # (not ASCII)
    assert integers_blanked("SELECT 'unterminated = 1") is None


@pytest.mark.parametrize("sql", [
    POINT.format(5),
    "SELECT full_name FROM customers WHERE 0 = id AND id = 12",
    "SELECT c.full_name FROM customers c JOIN orders o ON o.customer_id = c.id"
    " WHERE o.id = 7 AND c.id = 3 /*ticket='SUP-1'*/",
])
def test_integers_compared_with_columns(sql: str) -> None:
    assert only_compared_integers(sql)


@pytest.mark.parametrize("sql", [
    "SELECT full_name FROM customers ORDER BY 1",
    "SELECT full_name FROM customers WHERE id = 1 LIMIT 5",
    "SELECT substr(full_name, 1, 2) FROM customers WHERE id = 1",
    "SELECT full_name FROM customers WHERE id IN (1, 2)",
    "SELECT full_name FROM customers WHERE id < 5",
    "SELECT full_name FROM customers WHERE id = -5",
    "SELECT full_name FROM customers WHERE id = 2 + 3",
    "SELECT full_name::varchar(10) FROM customers WHERE id = 1",
    "SELECT full_name FROM customers WHERE id = 1 AND email = 'x'",
    "SELECT full_name FROM customers WHERE id = NULL AND 1 = id",
    "SELECT full_name FROM customers WHERE lower(full_name) = 1",
    "SELECT 1",
    "SELECT full_name FROM customers WHERE id = 1; SELECT 2",
    "SELECT ((full_name)) FROM customers WHERE id = 1 OR id = 'a",
])
def test_other_constants_are_not_compared_integers(sql: str) -> None:
    assert not only_compared_integers(sql)


# Pieces of SQL text with a number in them ({}), in every place the scanner may read it
# otherwise than an integer constant: a string, a comment, a name, a parameter, a decimal,
# an exponent, a type modifier, a negative number, a dollar-quoted string.
PIECES = ["SELECT ", "id", " = ", "=", "{}", " ", ", ", "'{}'", "/*{}*/", "-- {}\n", "x{}",
          '"c{}"', "${}", "{}.5", ".{}", "1e{}", "{}e1", "{}_000", "-{}", "+{}", "::varchar({})",
          "[{}]", "$$ {} $$", "({})", "0x{}", "U&'\\{}'", "{}x"]
NUMBERS = st.sampled_from(["0", "7", "007", "41234", "2147483647", "2147483648", "02147483647",
                           "99999999999", "0000000000000000005"])


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=10), st.data())
def test_a_text_that_fits_a_template_scans_as_its_text(
    pieces: list[str], data: st.DataObject
) -> None:
    """Two texts made of the same pieces with any numbers in them: when the second fits
    the first's template, the scanner reads the same tokens in both but for the values of
    their integer constants (the same text once those are blanked)."""
    def text() -> str:
        return "".join(p.format(data.draw(NUMBERS)) for p in pieces)

    first, second = text(), text()
    template = Template.of(first)
    key, runs = digit_runs(second)
    if template is None or key != digit_runs(first)[0] or not template.fits(runs):
        return
    def tokens(sql: str) -> list[tuple[str, str]]:
        return [(t.name, "" if t.name == "ICONST" else sql[t.start : t.end + 1])
                for t in pg_parser.scan(sql)]

    assert tokens(second) == tokens(first)
    assert integers_blanked(second) == integers_blanked(first)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=10), st.data())
def test_a_text_fits_a_template_of_one_integer_as_its_runs_do(
    pieces: list[str], data: st.DataObject
) -> None:
    """`Template.fits_text` (no regular expression) takes exactly the texts `fits` takes
    with the template's key, for a template of one free integer; none for others."""
    def text() -> str:
        return "".join(p.format(data.draw(NUMBERS)) for p in pieces)

    first, second = text(), text()
    template = Template.of(first)
    if template is None:
        return
    key, runs = digit_runs(second)
    by_runs = key == digit_runs(first)[0] and template.fits(runs)
    one_free = template.runs.count(None) == 1
    assert template.fits_text(second) == (by_runs and one_free)
    assert template.fits_text(first) == one_free


def test_templates_fit_texts_with_other_integers_only_in_their_places() -> None:
    template = Template.of(POINT.format(5) + " /*ticket='SUP-12'*/")
    assert template is not None and template.runs == (None, "12")
    for number, fits in (("41234", True), ("0", True), ("2147483647", True),
                         ("2147483648", False), ("99999999999", False)):
        key, runs = digit_runs(POINT.format(number) + " /*ticket='SUP-12'*/")
        assert key == digit_runs(POINT.format(5) + " /*ticket='SUP-12'*/")[0]
        assert template.fits(runs) is fits, number
    assert not template.fits(digit_runs(POINT.format(5) + " /*ticket='SUP-13'*/")[1])
    assert template.around == (POINT.format(""), " /*ticket='SUP-12'*/")
    for text, fits in ((POINT.format("41234") + " /*ticket='SUP-12'*/", True),
                       (POINT.format("") + " /*ticket='SUP-12'*/", False),
                       (POINT.format("2147483648") + " /*ticket='SUP-12'*/", False),
                       (POINT.format("\u0661") + " /*ticket='SUP-12'*/", False),  # (not ASCII)
                       (POINT.format("4 1") + " /*ticket='SUP-12'*/", False),
                       (POINT.format("5") + " /*ticket='SUP-13'*/", False)):
        assert template.fits_text(text) is fits, text
    underscored = Template.of("SELECT full_name FROM customers WHERE id = 1_000 AND id = 5")
    assert underscored is not None and underscored.runs == (None,)  # (1_000: in the key)
    assert Template.of("SELECT 'unterminated = 1") is None


class Schema(FakeSchema):
    fingerprint = "fake"


# Texts with an integer in them, each analysed as it is (never shared), or shared:
# (template, shared), the integer where {} is.
TEXTS = [
    (POINT, True),
    ("SELECT id, full_name FROM renamed r JOIN customers c ON c.id = r.cid WHERE r.cid = {}"
     " /*ticket='SUP-1'*/", True),
    ("SELECT upper(full_name) FROM customers WHERE id = {}", False),  # derived: a problem
    ("SELECT full_name FROM customers WHERE phone = {}", False),  # the digits: a slot
    ("SELECT full_name, id FROM customers ORDER BY {}", False),  # 1: a probe, 2: clear
    ("SELECT id FROM customers WHERE id = {} LIMIT {}", False),
    ("SELECT set_config('tokenproxy.ticket', 'SUP-1', false) WHERE {} = 1", False),
    ("SELECT full_name FROM customers WHERE id = {}; SELECT 1", False),
    ("SET tokenproxy.ticket = {}", False),
]


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(range(len(TEXTS))),
                          st.integers(0, 3) | st.integers(0, 2**31 - 1), st.integers(0, 9)),
                min_size=1, max_size=12))
def test_a_shared_analysis_is_the_texts_own(texts: list[tuple[int, int, int]]) -> None:
    """Whatever order texts come in, each gets the analysis it would get alone; those of
    a shareable template share one object, and the exact cache does not grow with them."""
    schema = Schema()
    cache = AnalysisCache()
    seen: dict[int, Any] = {}
    for which, first, second in texts:
        template, shared = TEXTS[which]
        sql = template.format(first, second)
        got = cache.get(schema, sql)  # type: ignore[arg-type]
        assert got == analyze(sql, schema)
        if shared:
            assert seen.setdefault(which, got) is got
    assert len(cache._items) <= len({(w, a, b) for w, a, b in texts})


def test_the_order_of_a_sort_position_is_not_shared() -> None:
    """``ORDER BY 2`` (the id: clear) first, then ``ORDER BY 1`` (the name: a probe)."""
    schema = Schema()
    cache = AnalysisCache()
    by_id = cache.get(schema, "SELECT full_name, id FROM customers ORDER BY 2")  # type: ignore[arg-type]
    by_name = cache.get(schema, "SELECT full_name, id FROM customers ORDER BY 1")  # type: ignore[arg-type]
    assert by_id.statements[0].plain and not by_name.statements[0].plain


class Renamed(Schema):
    """Another catalog (another fingerprint): the customers' names now a plain column."""

    fingerprint = "renamed"

    def __init__(self) -> None:
        super().__init__()
        plain = Relation("public", "customers", ("id", "full_name", "phone"))
        self.rels[("public", "customers")] = plain


def test_a_template_is_not_taken_across_catalogs() -> None:
    """The last template found is the catalog's: the same point select after a change to
    the catalog (or the policy: both are in the fingerprint) is analysed again."""
    cache = AnalysisCache()
    before, after = Schema(), Renamed()
    first = cache.get(before, POINT.format(1))  # type: ignore[arg-type]
    assert cache.get(before, POINT.format(2)) is first  # type: ignore[arg-type]
    changed = cache.get(after, POINT.format(3))  # type: ignore[arg-type]
    assert changed == analyze(POINT.format(3), after) != first  # type: ignore[arg-type]
    assert cache.get(before, POINT.format(4)) is first  # type: ignore[arg-type]


# ------------------------------------------------------------------ through a live session


@pytest.fixture(scope="module")
async def env(module_dsn: str) -> AsyncIterator[PgEnv]:
    async with pg_env(module_dsn) as e:
        yield e


async def test_point_selects_as_text_share_an_analysis_and_stay_tokenized(env: PgEnv) -> None:
    """Simple-protocol point selects (the id in the text), one with no row, then a sort
    by the name's position: rows tokenized, nothing leaked, the probe refused; one
    analysis kept for the point selects."""
    mark = env.mark()
    engine = env.ctx.engine()
    cache = env.ctx.cache
    before = len(cache._items)
    async with RawSession.open(env) as raw:
        async def query(sql: str) -> list[Any]:
            raw.send(Query(sql).encode())
            return await raw.until_ready()

        for customer in [*SEED, *SEED]:
            seen = await query(f"SELECT id, full_name FROM customers WHERE id = {customer.id}")
            rows = [m.columns for m in seen if isinstance(m, DataRow)]
            assert rows == [(str(customer.id).encode(),
                             engine.tokenize("name", customer.full_name).encode())]
        assert len(cache._items) <= before + 1
        assert not any(isinstance(m, DataRow) for m in await query(
            "SELECT id FROM customers WHERE id = -1"))
        probe = await query("SELECT full_name, id FROM customers ORDER BY 1")
        assert any(isinstance(m, ErrorResponse) for m in probe)
        assert not any(isinstance(m, DataRow) for m in probe)
    env.assert_no_leak(mark)
