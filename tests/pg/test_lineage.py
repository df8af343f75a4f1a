"""The query lineage analyzer: every leak vector gets a problem or a refusal, clear
statements get none, and slots point at the right text."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.crypto.tokens import Kind
from proxy.pg.analysis import (
    Analysis,
    ColumnLineage,
    ProblemKind,
    Relation,
    Source,
    Statement,
)
from proxy.pg.lineage import analyze, view_relation

NAME = Source("public.customers", "full_name", Kind.NAME)
PHONE = Source("public.customers", "phone", Kind.PHONE)
NOTES = Source("public.customers", "notes", Kind.TEXT)
CUSTOMERS = "public.customers"


class FakeSchema:
    """A small catalog: customers (protected), orders, two views, a user function."""

    def __init__(self) -> None:
        self.rels: dict[tuple[str, str], Relation] = {}
        self.add(
            Relation(
                "public",
                "customers",
                ("id", "full_name", "phone", "email", "notes"),
                {
                    "id": ColumnLineage(customer_of=frozenset({CUSTOMERS})),
                    "full_name": ColumnLineage(frozenset({NAME}), True),
                    "phone": ColumnLineage(frozenset({PHONE}), True),
                    "notes": ColumnLineage(frozenset({NOTES}), True),
                },
            )
        )
        self.add(Relation("public", "orders", ("id", "customer_id", "total")))
        self.add(
            view_relation(
                "public",
                "shouting",
                ["id", "loud"],
                "SELECT customers.id, upper(customers.full_name) AS loud FROM customers;",
                self,
            )
        )
        self.add(
            view_relation(
                "public",
                "renamed",
                ["cid", "who", "tel"],
                "SELECT c.id AS cid, c.full_name AS who, c.phone AS tel FROM customers c;",
                self,
            )
        )
        self.add(
            view_relation(
                "public",
                "a_names",
                ["id"],
                "SELECT id FROM customers WHERE full_name LIKE 'A%'",
                self,
            )
        )
        self.add(
            view_relation(
                "public",
                "leaky",
                ["x"],
                "SELECT leak(full_name) FROM customers",
                self,
            )
        )

    def add(self, rel: Relation) -> None:
        self.rels[(rel.schema, rel.name)] = rel

    def relations(self, name: str, schema: str | None) -> Sequence[Relation]:
        return [r for (s, n), r in self.rels.items() if n == name and schema in (None, s)]

    def is_user_function(self, name: str, schema: str | None) -> bool:
        return name in ("leak", "my_func") and schema in (None, "public")


SCHEMA = FakeSchema()


def one(sql: str) -> Statement:
    analysis = analyze(sql, SCHEMA)
    assert len(analysis.statements) == 1, analysis
    return analysis.statements[0]


def kinds(st_: Statement) -> set[ProblemKind]:
    return {p.kind for p in st_.problems}


# -- clear statements ----------------------------------------------------------------------

CLEAR = [
    "SELECT id, email FROM customers WHERE phone = $1",
    "SELECT stxname, stxkeys FROM pg_catalog.pg_statistic_ext",  # definitions (psql's \\d)
    "SELECT id, email FROM customers WHERE full_name = 'Budi'",
    "SELECT id FROM customers WHERE full_name IN ('a', 'b') AND phone IS NOT NULL",
    "SELECT id FROM customers WHERE full_name = ANY($1)",
    "SELECT id FROM customers WHERE full_name IS NOT DISTINCT FROM $1",
    "SELECT id FROM customers WHERE full_name <> $1",
    "SELECT id FROM customers WHERE $1 = full_name",
    "SELECT count(*) FROM customers",
    "SELECT count(full_name) FROM customers WHERE email LIKE '%@x.com'",
    "SELECT o.id, o.total, c.email FROM orders o JOIN customers c ON c.id = o.customer_id",
    "SELECT * FROM orders WHERE total > 10 ORDER BY total LIMIT 5",
    "SELECT c.id FROM customers c JOIN customers d ON c.full_name = d.full_name",
    "SELECT id FROM customers WHERE EXISTS (SELECT 1 FROM orders WHERE customer_id = id)",
    "SELECT full_name FROM customers GROUP BY full_name",
    "SELECT id FROM customers WHERE full_name IN (SELECT full_name FROM customers WHERE id = 1)",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT a",
    "SET search_path = public",
    "SHOW search_path",
    "LISTEN ch",
    "NOTIFY ch, 'x'",
    "VACUUM orders",
    "UPDATE customers SET full_name = $1 WHERE id = 2",
    "UPDATE customers SET notes = 'called' WHERE phone = $1",
    "INSERT INTO customers (id, full_name, phone) VALUES (1, 'Budi', $1)",
    "DELETE FROM customers WHERE id = 3",
    "INSERT INTO orders SELECT id, id, 0 FROM customers",
    "SELECT full_name FROM customers UNION SELECT full_name FROM customers",
    "SELECT cid, who, tel FROM renamed",
    "SELECT who FROM renamed WHERE tel = $1",
    "CREATE VIEW v AS SELECT upper(full_name) FROM customers",
    "SELECT * FROM no_such_table WHERE x LIKE 'a%'",
    "CREATE TABLE t (a int)",
    "SELECT full_name::text, phone::varchar FROM customers",
    "SELECT DISTINCT full_name FROM customers",
    "SELECT id FROM customers WHERE (full_name, phone) = ($1, $2)",
    "EXPLAIN SELECT id FROM customers WHERE phone = '1'",
    "SELECT id FROM customers c WHERE c.full_name = (SELECT 'x')",
]


@pytest.mark.parametrize("sql", CLEAR)
def test_clear_statements_have_no_problems(sql: str) -> None:
    st_ = one(sql)
    assert st_.refusal is None, st_.refusal
    assert st_.problems == (), st_.problems


def test_select_star_gives_plain_outputs_with_kinds() -> None:
    st_ = one("SELECT * FROM customers")
    assert st_.tag == "SELECT"
    assert st_.outputs is not None
    assert [o.kind for o in st_.outputs] == [None, Kind.NAME, Kind.PHONE, None, Kind.TEXT]
    assert st_.outputs[0].customer_of == {CUSTOMERS}
    assert not any(o.derived for o in st_.outputs)


# -- plain lineage through renames ---------------------------------------------------------

PLAIN_NAME = [
    "SELECT full_name FROM customers",
    "SELECT customers.full_name FROM customers",
    "SELECT public.customers.full_name FROM public.customers",
    "SELECT c.full_name AS n FROM customers c",
    "SELECT s.n FROM (SELECT full_name AS n FROM customers) s",
    "SELECT s.b FROM (SELECT * FROM customers) s(a, b, c)",
    "WITH x AS (SELECT full_name FROM customers) SELECT full_name FROM x",
    "WITH x(a, b) AS (SELECT id, full_name FROM customers) SELECT b FROM x",
    "SELECT who FROM renamed",
    "SELECT full_name::text FROM customers",
    "SELECT CAST(full_name AS varchar) FROM customers",
    "SELECT full_name FROM customers UNION ALL SELECT 'x'",
    "SELECT c.full_name FROM orders o JOIN customers c ON c.id = o.customer_id",
    "SELECT x.full_name FROM (SELECT c.* FROM customers c) x",
    "TABLE customers",
]


@pytest.mark.parametrize("sql", PLAIN_NAME)
def test_plain_name_outputs(sql: str) -> None:
    st_ = one(sql)
    assert st_.refusal is None, st_.refusal
    assert st_.problems == ()
    assert st_.outputs is not None
    name_outputs = [o for o in st_.outputs if o.protected]
    assert name_outputs and name_outputs[0].kind is Kind.NAME


def test_customer_of_propagates_plainly() -> None:
    for sql in (
        "SELECT id, full_name FROM customers",
        "SELECT s.i, s.n FROM (SELECT id AS i, full_name AS n FROM customers) s",
        "SELECT cid, who FROM renamed",
        "WITH x AS (SELECT id, full_name FROM customers) SELECT * FROM x",
        "SELECT id::text, full_name FROM customers",
    ):
        st_ = one(sql)
        assert st_.outputs is not None
        assert st_.outputs[0].customer_of == {CUSTOMERS}, sql


def test_customer_of_dropped_when_rows_differ() -> None:
    for sql in (
        "SELECT a.id, b.full_name FROM customers a, customers b",
        "WITH x AS (SELECT id, full_name FROM customers) SELECT a.id, b.full_name FROM x a, x b",
        "SELECT 5, full_name FROM customers UNION SELECT id, full_name FROM customers",
        "SELECT id + 0, full_name FROM customers",
        "SELECT max(id), full_name FROM customers GROUP BY full_name",
    ):
        st_ = one(sql)
        assert st_.outputs is not None
        assert all(not o.customer_of for o in st_.outputs), sql


def test_union_of_different_name_columns_is_plain() -> None:
    st_ = one("SELECT full_name FROM customers UNION SELECT full_name FROM public.customers")
    assert st_.outputs is not None and st_.outputs[0].kind is Kind.NAME
    st_ = one("SELECT full_name FROM customers UNION SELECT phone FROM customers")
    assert st_.outputs is not None and st_.outputs[0].derived
    assert ProblemKind.DERIVED_OUTPUT in kinds(st_)


# -- derived outputs -----------------------------------------------------------------------

DERIVED = [
    "SELECT upper(full_name) FROM customers",
    "SELECT full_name || '' FROM customers",
    "SELECT ascii(substr(phone, 1, 1)) FROM customers",
    "SELECT row_to_json(c) FROM customers c",
    "SELECT to_jsonb(c.*) FROM customers c",
    "SELECT c FROM customers c",
    "SELECT string_agg(full_name, ',') FROM customers",
    "SELECT array_agg(phone) FROM customers",
    "SELECT format('%s', full_name) FROM customers",
    "SELECT concat(full_name) FROM customers",
    "SELECT left(full_name, 1) FROM customers",
    "SELECT length(full_name) FROM customers",
    "SELECT md5(phone) FROM customers",
    "SELECT CASE WHEN true THEN full_name END FROM customers",
    "SELECT (SELECT full_name FROM customers LIMIT 1)",
    "SELECT ROW(full_name) FROM customers",
    "SELECT loud FROM shouting",
    "SELECT full_name::varchar(3) FROM customers",
    "SELECT full_name::char(2) FROM customers",
    "SELECT lag(full_name) OVER (ORDER BY id) FROM customers",
    "SELECT min(full_name) FROM customers",
    "SELECT coalesce(full_name, '') FROM customers",
    "SELECT ARRAY[phone] FROM customers",
    'SELECT full_name COLLATE "C" FROM customers',
    "SELECT xmlelement(name x, full_name) FROM customers",
    "SELECT json_build_object('n', full_name) FROM customers",
    "SELECT v FROM customers, unnest(ARRAY[full_name]) v",
    "UPDATE customers SET notes = 'x' WHERE id = 1 RETURNING upper(full_name)",
    "SELECT full_name = 'x' FROM customers",
    "SELECT full_name FROM customers UNION SELECT upper(full_name) FROM customers",
    "WITH RECURSIVE t(n) AS (SELECT full_name FROM customers UNION ALL "
    "SELECT substr(n, 2) FROM t WHERE n <> '') SELECT n FROM t",
    "DECLARE c CURSOR FOR SELECT upper(full_name) FROM customers",
    "PREPARE p AS SELECT lower(full_name) FROM customers",
    "COPY (SELECT upper(full_name) FROM customers) TO STDOUT",
]


@pytest.mark.parametrize("sql", DERIVED)
def test_derived_outputs(sql: str) -> None:
    st_ = one(sql)
    assert st_.refusal is None, st_.refusal
    assert ProblemKind.DERIVED_OUTPUT in kinds(st_), st_.problems
    assert st_.outputs is not None and any(o.derived for o in st_.outputs)


# -- probes --------------------------------------------------------------------------------

PROBES = [
    "SELECT id FROM customers WHERE full_name LIKE 'A%'",
    "SELECT id FROM customers WHERE full_name ILIKE 'a%'",
    "SELECT id FROM customers WHERE full_name SIMILAR TO 'A%'",
    "SELECT id FROM customers WHERE full_name ~ '^A'",
    "SELECT id FROM customers WHERE phone > '62'",
    "SELECT id FROM customers WHERE phone BETWEEN '1' AND '2'",
    "SELECT id FROM customers WHERE upper(full_name) = 'BUDI'",
    "SELECT id FROM customers WHERE length(full_name) = 4",
    "SELECT id FROM customers ORDER BY full_name",
    "SELECT id, full_name FROM customers ORDER BY 2",
    "SELECT id, full_name AS n FROM customers ORDER BY n",
    "SELECT id FROM customers GROUP BY id HAVING min(full_name) > 'M'",
    "SELECT o.id FROM orders o JOIN customers c ON c.full_name LIKE 'A%'",
    "SELECT CASE WHEN full_name LIKE 'A%' THEN 1 END FROM customers",
    "SELECT row_number() OVER (PARTITION BY phone) FROM customers",
    "SELECT row_number() OVER (ORDER BY full_name) FROM customers",
    "SELECT row_number() OVER w FROM customers WINDOW w AS (ORDER BY phone)",
    "SELECT count(*) FROM customers GROUP BY substr(full_name, 1, 1)",
    "SELECT DISTINCT ON (full_name) id FROM customers",
    "SELECT id FROM customers LIMIT length((SELECT full_name FROM customers LIMIT 1))",
    "SELECT id FROM orders WHERE EXISTS (SELECT 1 FROM customers WHERE full_name LIKE 'A%')",
    "SELECT id FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE phone LIKE '62%')",
    "SELECT count(*) FILTER (WHERE full_name LIKE 'A%') FROM customers",
    "SELECT string_agg(email, ',' ORDER BY full_name) FROM customers",
    "SELECT id FROM customers WHERE full_name = notes",
    "SELECT id FROM customers WHERE full_name = upper(full_name)",
    "UPDATE customers SET notes = 'x' WHERE full_name LIKE 'A%'",
    "DELETE FROM customers WHERE phone LIKE '62%'",
    "SELECT id FROM a_names",
    "SELECT id FROM customers WHERE full_name IN (SELECT notes FROM customers)",
    "EXPLAIN ANALYZE SELECT id FROM customers WHERE full_name LIKE 'A%'",
    "SELECT id FROM customers WHERE full_name::bytea = '\\x00'",
    "SELECT id FROM customers WHERE NOT (full_name > 'a')",
]


@pytest.mark.parametrize("sql", PROBES)
def test_probes(sql: str) -> None:
    st_ = one(sql)
    assert st_.refusal is None, st_.refusal
    assert ProblemKind.PROBE in kinds(st_), st_.problems


# -- protected writes ----------------------------------------------------------------------

WRITES = [
    "INSERT INTO orders (id, customer_id, total) SELECT 1, 1, length(full_name) FROM customers",
    "UPDATE customers SET notes = full_name",
    "UPDATE customers SET email = upper(full_name) WHERE id = 1",
    "UPDATE orders o SET total = length(c.phone) FROM customers c WHERE c.id = o.customer_id",
    "INSERT INTO customers (id, notes) SELECT id, full_name FROM customers",
    "INSERT INTO customers (id, notes) VALUES (1, (SELECT full_name FROM customers LIMIT 1))",
    "INSERT INTO customers (id, notes) VALUES (1, 'x') "
    "ON CONFLICT (id) DO UPDATE SET notes = customers.full_name",
    "CREATE TABLE copy AS SELECT full_name FROM customers",
    "CREATE MATERIALIZED VIEW mv AS SELECT phone FROM customers",
    "SELECT full_name INTO TEMP t FROM customers",
    "WITH u AS (UPDATE customers SET email = phone RETURNING id) SELECT * FROM u",
    "UPDATE customers SET (email, notes) = (full_name, 'x')",
]


@pytest.mark.parametrize("sql", WRITES)
def test_protected_writes(sql: str) -> None:
    st_ = one(sql)
    assert st_.refusal is None, st_.refusal
    assert ProblemKind.PROTECTED_WRITE in kinds(st_), st_.problems


# -- refusals ------------------------------------------------------------------------------

REFUSED = [
    "SELEC full_name FROM customers",
    "SELECT 'unterminated",
    "DO $$ BEGIN PERFORM 1; END $$",
    "CALL proc()",
    "SELECT leak(full_name) FROM customers",
    "SELECT id FROM customers WHERE my_func(id)",
    "SELECT public.leak(1)",
    "SELECT query_to_xml('select * from customers', true, true, '')",
    "SELECT table_to_xml('customers', true, true, '')",
    "SELECT cursor_to_xml('c', 1, true, true, '')",
    "SELECT schema_to_xml('public', true, true, '')",
    "SELECT database_to_xml(true, true, '')",
    "SELECT * FROM ts_stat('select 1')",
    "SELECT current_query()",
    "SELECT * FROM pg_stat_get_activity(NULL)",
    "SELECT * FROM dblink('db', 'select full_name from customers') AS t(n text)",
    "SELECT set_config('tokenproxy.ticket', 'SUP-1', false)",
    "SELECT * FROM pg_stats",
    "SELECT * FROM pg_catalog.pg_stats_ext",
    "SELECT * FROM pg_stats_ext_exprs",
    "SELECT * FROM pg_statistic",
    "SELECT stxdndistinct FROM pg_catalog.pg_statistic_ext_data",
    "SELECT query FROM pg_stat_activity",
    "SELECT query FROM pg_stat_statements",
    "SELECT statement FROM pg_prepared_statements",
    "SELECT x FROM leaky",
    "COPY customers TO '/tmp/x'",
    "COPY (SELECT full_name FROM customers) TO PROGRAM 'curl x'",
    "COPY customers FROM '/tmp/x'",
    "SELECT pg_notify('c', full_name) FROM customers",
    "ALTER TABLE customers RENAME COLUMN full_name TO fn",
    "ALTER TABLE customers ADD CONSTRAINT c CHECK (full_name NOT LIKE 'A%')",
    "CREATE TRIGGER t AFTER UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION f()",
    "CREATE INDEX ON customers (upper(full_name))",
    "SELECT full_name OPERATOR(public.===) 'x' FROM customers",
    "SET standard_conforming_strings = off",
    "SET client_encoding = 'LATIN1'",
    "MERGE INTO customers c USING orders o ON c.id = o.customer_id "
    "WHEN MATCHED THEN UPDATE SET notes = 'x'",
    "SELECT id FROM customers WHERE full_name = U&'\\0041'",
    "SELECT JSON_OBJECTAGG(id : full_name) FROM customers",
    "EXPLAIN SELECT leak(1)",
    "PREPARE p AS SELECT * FROM pg_stats",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_refusals(sql: str) -> None:
    analysis = analyze(sql, SCHEMA)
    assert any(s.refusal for s in analysis.statements), analysis


def test_refusal_quotes_no_values() -> None:
    secret = "Sri Rahayu Wulandari"
    for sql in (
        f"SELEC '{secret}'",
        f"SELECT leak('{secret}') FROM customers WHERE full_name = '{secret}'",
        f"SELECT id FROM customers WHERE full_name = U&'{secret}'",
    ):
        st_ = one(sql)
        assert st_.refusal and secret not in st_.refusal
        assert "Sri" not in st_.refusal


def test_unknown_relation_is_clear_not_refused() -> None:
    st_ = one("SELECT a, b FROM nowhere WHERE a LIKE 'x'")
    assert st_.refusal is None and st_.problems == ()


# -- slots ---------------------------------------------------------------------------------


def literal_slots(sql: str) -> list[tuple[Kind, str, str | None]]:
    st_ = one(sql)
    assert st_.refusal is None, st_.refusal
    return [(s.kind, sql[s.start : s.end], s.value) for s in st_.slots if s.param is None]


def test_literal_slots_sliced_from_the_text() -> None:
    assert literal_slots("SELECT id FROM customers WHERE full_name = 'Budi'") == [
        (Kind.NAME, "'Budi'", "Budi")
    ]
    assert literal_slots("SELECT 1 FROM customers WHERE 'O''Brien' = full_name") == [
        (Kind.NAME, "'O''Brien'", "O'Brien")
    ]
    assert literal_slots("SELECT 1 FROM customers WHERE full_name = E'a\\'b\\n'") == [
        (Kind.NAME, "E'a\\'b\\n'", "a'b\n")
    ]
    assert literal_slots("SELECT 1 FROM customers WHERE full_name = $$x'y$$") == [
        (Kind.NAME, "$$x'y$$", "x'y")
    ]
    assert literal_slots("SELECT 1 FROM customers WHERE phone = '62'::text") == [
        (Kind.PHONE, "'62'", "62")
    ]
    assert literal_slots("SELECT 1 FROM customers WHERE phone IN ('1', '2')") == [
        (Kind.PHONE, "'1'", "1"),
        (Kind.PHONE, "'2'", "2"),
    ]
    assert literal_slots("SELECT 1 FROM customers WHERE phone = 6281234567") == [
        (Kind.PHONE, "6281234567", "6281234567")
    ]
    assert literal_slots("SELECT 1 FROM customers WHERE full_name = N'Budi'") == [
        (Kind.NAME, "N'Budi'", "Budi")
    ]
    assert literal_slots("SELECT 1 FROM customers WHERE full_name = ANY(ARRAY['a'])") == [
        (Kind.NAME, "'a'", "a")
    ]


def test_slots_use_character_offsets() -> None:
    sql = "SELECT 'Ñandú ☃' AS x, id FROM customers WHERE full_name = 'Zoë Ñ'"
    assert literal_slots(sql) == [(Kind.NAME, "'Zoë Ñ'", "Zoë Ñ")]


def test_assignment_slots() -> None:
    assert literal_slots(
        "INSERT INTO customers (id, full_name, phone) VALUES (1, 'Budi', '62'), (2, 'Ani', '63')"
    ) == [
        (Kind.NAME, "'Budi'", "Budi"),
        (Kind.PHONE, "'62'", "62"),
        (Kind.NAME, "'Ani'", "Ani"),
        (Kind.PHONE, "'63'", "63"),
    ]
    assert literal_slots("INSERT INTO customers VALUES (1, 'Budi', '62', 'e', 'n')") == [
        (Kind.NAME, "'Budi'", "Budi"),
        (Kind.PHONE, "'62'", "62"),
        (Kind.TEXT, "'n'", "n"),
    ]
    assert literal_slots("UPDATE customers SET full_name = 'Budi', email = 'e' WHERE id = 1") == [
        (Kind.NAME, "'Budi'", "Budi")
    ]
    assert literal_slots(
        "INSERT INTO customers (id, full_name) VALUES (1, 'A') "
        "ON CONFLICT (id) DO UPDATE SET full_name = 'B'"
    ) == [(Kind.NAME, "'A'", "A"), (Kind.NAME, "'B'", "B")]


def test_param_slots() -> None:
    st_ = one("UPDATE customers SET full_name = $2::text WHERE phone = $1")
    assert {(s.kind, s.param) for s in st_.slots} == {(Kind.NAME, 2), (Kind.PHONE, 1)}
    st_ = one("SELECT id FROM customers WHERE phone = ANY($3)")
    assert [(s.kind, s.param) for s in st_.slots] == [(Kind.PHONE, 3)]
    assert analyze("SELECT $3 FROM orders WHERE id = $10", SCHEMA).params == 10


def test_explain_has_no_slots() -> None:
    st_ = one("EXPLAIN SELECT id FROM customers WHERE full_name = 'Budi'")
    assert st_.tag == "EXPLAIN" and st_.slots == () and st_.outputs is None


def test_prepare_keeps_slots_and_outputs() -> None:
    st_ = one("PREPARE p(text) AS SELECT id, full_name FROM customers WHERE phone = $1")
    assert st_.prepare == "p" and st_.tag == "PREPARE"
    assert [(s.kind, s.param) for s in st_.slots] == [(Kind.PHONE, 1)]
    assert st_.outputs is not None and st_.outputs[1].kind is Kind.NAME


# -- statement fields ----------------------------------------------------------------------


def test_ticket_settings() -> None:
    assert one("SET tokenproxy.ticket = 'SUP-1'").set_ticket == "SUP-1"
    assert one("SET SESSION tokenproxy.ticket TO 'SUP-2'").set_ticket == "SUP-2"
    assert one("SET LOCAL tokenproxy.ticket = 'SUP-3'").set_ticket == "SUP-3"
    for sql in (
        "RESET tokenproxy.ticket",
        "SET tokenproxy.ticket TO DEFAULT",
        "RESET ALL",
        "DISCARD ALL",
    ):
        assert one(sql).reset_ticket, sql
    assert one("SET search_path = x").set_ticket is None
    assert one("SET client_encoding = 'UTF8'").refusal is None


def test_comment_ticket() -> None:
    assert analyze("SELECT 1 /*ticket='SUP-123'*/", SCHEMA).ticket == "SUP-123"
    assert analyze("/*a='b',ticket='SUP%2D9'*/ SELECT 1", SCHEMA).ticket == "SUP-9"
    assert analyze("SELECT 1 /*tokenproxy_ticket='T-1'*/", SCHEMA).ticket == "T-1"
    assert analyze("SELECT '/*ticket=''X''*/'", SCHEMA).ticket is None
    assert analyze("SELECT 1 /*ticket='A'*/ /*ticket='B'*/", SCHEMA).ticket is None


def test_cursor_fetch_execute() -> None:
    st_ = one("DECLARE c CURSOR FOR SELECT full_name FROM customers")
    assert st_.cursor == "c" and st_.tag == "DECLARE CURSOR"
    assert st_.outputs is not None and st_.outputs[0].kind is Kind.NAME
    assert one("FETCH 10 FROM c").fetch == "c"
    st_ = one("MOVE 1 IN c")
    assert st_.fetch == "c" and st_.tag == "MOVE"
    assert one("EXECUTE p('x')").execute == "p"
    assert one("CLOSE c").tag == "CLOSE"
    assert one("DEALLOCATE p").tag == "DEALLOCATE"


def test_copy() -> None:
    st_ = one("COPY customers (id, phone) TO STDOUT WITH (FORMAT csv, HEADER, DELIMITER '|')")
    assert st_.copy_to_stdout and st_.copy_format == "csv" and st_.copy_header
    assert st_.copy_delimiter == "|"
    assert st_.outputs is not None and [o.kind for o in st_.outputs] == [None, Kind.PHONE]
    st_ = one("COPY (SELECT full_name FROM customers) TO STDOUT")
    assert st_.copy_to_stdout and st_.outputs is not None and st_.outputs[0].kind is Kind.NAME
    st_ = one("COPY customers FROM STDIN")
    assert st_.copy_from_stdin and st_.copy_into is not None
    assert [c.kind for c in st_.copy_into] == [None, Kind.NAME, Kind.PHONE, None, Kind.TEXT]
    st_ = one("COPY orders TO '/tmp/o'")
    assert st_.refusal is None
    assert one("COPY customers TO STDOUT (FORMAT binary)").copy_format == "binary"


def test_tags_and_ddl() -> None:
    cases = {
        "SELECT 1": ("SELECT", False),
        "INSERT INTO orders VALUES (1, 1, 1)": ("INSERT", False),
        "UPDATE orders SET total = 1": ("UPDATE", False),
        "DELETE FROM orders": ("DELETE", False),
        "BEGIN": ("BEGIN", False),
        "CREATE TABLE t (a int)": ("CREATE TABLE", True),
        "DROP TABLE t": ("DROP TABLE", True),
        "ALTER TABLE orders ADD COLUMN x int": ("ALTER TABLE", True),
        "GRANT SELECT ON orders TO bob": ("GRANT", True),
        "REVOKE SELECT ON orders FROM bob": ("REVOKE", True),
        "COMMENT ON TABLE orders IS 'x'": ("COMMENT", True),
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'": ("CREATE FUNCTION", True),
        "LISTEN x": ("LISTEN", False),
        "SHOW x": ("SHOW", False),
    }
    for sql, (tag, ddl) in cases.items():
        st_ = one(sql)
        assert (st_.tag, st_.ddl) == (tag, ddl), sql


def test_several_statements() -> None:
    analysis = analyze(
        "SELECT full_name FROM customers; SELECT upper(phone) FROM customers", SCHEMA
    )
    assert len(analysis.statements) == 2
    assert analysis.statements[0].problems == ()
    assert ProblemKind.DERIVED_OUTPUT in kinds(analysis.statements[1])


def test_returning_outputs() -> None:
    st_ = one("INSERT INTO customers (id, full_name) VALUES (1, $1) RETURNING id, full_name")
    assert st_.outputs is not None
    assert st_.outputs[1].kind is Kind.NAME and st_.outputs[0].customer_of == {CUSTOMERS}
    assert one("DELETE FROM orders").outputs is None


def test_views() -> None:
    assert SCHEMA.rels[("public", "shouting")].lineage["loud"].derived
    renamed = SCHEMA.rels[("public", "renamed")]
    assert renamed.lineage["who"].kind is Kind.NAME
    assert renamed.lineage["cid"].customer_of == {CUSTOMERS}
    assert SCHEMA.rels[("public", "leaky")].refusal
    assert SCHEMA.rels[("public", "a_names")].problems
    bad = view_relation("public", "v", ["a"], "NOT SQL AT ALL", SCHEMA)
    assert bad.refusal


def test_point_select_is_fast() -> None:
    sql = "SELECT id, full_name, phone FROM customers WHERE phone = $1"
    analyze(sql, SCHEMA)
    start = time.perf_counter()
    for _ in range(200):
        analyze(sql, SCHEMA)
    assert (time.perf_counter() - start) / 200 < 0.001


# -- properties ----------------------------------------------------------------------------

IDENT = st.sampled_from(["a", "b", "x1", "q", "nm", "zz"])


@st.composite
def nested_plain(draw: st.DrawFn) -> str:
    """full_name passed through random renames, subqueries, CTEs and casts."""
    alias = draw(IDENT)
    sql = f"SELECT full_name AS {alias} FROM customers"
    col = alias
    for _ in range(draw(st.integers(0, 4))):
        new = draw(IDENT)
        wrap = draw(st.sampled_from(["sub", "cte", "cast", "union"]))
        if wrap == "sub":
            sql = f"SELECT s.{col} AS {new} FROM ({sql}) s"
        elif wrap == "cte":
            sql = f"WITH w AS ({sql}) SELECT {col} AS {new} FROM w"
        elif wrap == "cast":
            sql = f"SELECT {col}::text AS {new} FROM ({sql}) s"
        else:
            sql = f"SELECT {col} AS {new} FROM ({sql} UNION SELECT 'x') s"
        col = new
    return sql


@given(nested_plain())
@settings(max_examples=60, deadline=None)
def test_property_renames_keep_plain_kind(sql: str) -> None:
    st_ = one(sql)
    assert st_.refusal is None and st_.problems == ()
    assert st_.outputs is not None and st_.outputs[0].kind is Kind.NAME


WRAPPERS = [
    "upper({})",
    "lower({})",
    "substr({}, 1, 2)",
    "{} || 'x'",
    "md5({})",
    "length({})",
    "concat({}, '')",
    "format('%s', {})",
    "CASE WHEN id = 1 THEN {} END",
    "coalesce({}, 'x')",
    "reverse({})",
    "({})::varchar(4)",
    "ARRAY[{}]",
    "(SELECT {})",
]


@given(st.lists(st.sampled_from(WRAPPERS), min_size=1, max_size=4), nested_plain())
@settings(max_examples=60, deadline=None)
def test_property_wrapping_derives(wrappers: list[str], inner: str) -> None:
    expr = "s.v"
    for w in wrappers:
        expr = w.format(expr)
    sql = f"SELECT {expr} FROM (SELECT * FROM ({inner}) i(v)) s, customers WHERE id = 1"
    st_ = one(sql)
    assert st_.refusal is None, st_.refusal
    assert st_.outputs is not None and st_.outputs[0].derived
    assert ProblemKind.DERIVED_OUTPUT in kinds(st_)


@given(st.text(max_size=200))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_never_raises(text: str) -> None:
    analysis = analyze(text, SCHEMA)
    assert isinstance(analysis, Analysis)


SQL_PIECES = st.sampled_from(
    [
        "SELECT",
        "full_name",
        "FROM",
        "customers",
        "c",
        ",",
        "(",
        ")",
        "WHERE",
        "=",
        "'x'",
        "$1",
        "upper(",
        "JOIN",
        "ON",
        "UNION",
        "*",
        "c.*",
        "LIKE",
        "ORDER BY",
        ";",
        "WITH",
        "AS",
        "INSERT INTO",
        "VALUES",
        "UPDATE",
        "SET",
    ]
)


@given(st.lists(SQL_PIECES, max_size=25))
@settings(max_examples=200, deadline=None)
def test_property_never_raises_on_sqlish_text(pieces: list[str]) -> None:
    analysis = analyze(" ".join(pieces), SCHEMA)
    assert isinstance(analysis, Analysis)


def test_star_over_functions_has_their_width() -> None:
    st_ = one("SELECT x.* FROM customers c, json_each(row_to_json(c)) x")
    assert st_.outputs is not None and len(st_.outputs) == 2
    assert all(o.derived for o in st_.outputs)
    st_ = one("SELECT * FROM generate_series(1, 3) WITH ORDINALITY")
    assert st_.outputs is not None and len(st_.outputs) == 2 and st_.problems == ()
