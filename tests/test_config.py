"""The TOML config: defaults, the example file, and `config check` for every kind of mistake."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from proxy.config import (
    EXIT_CLEAN,
    EXIT_PROBLEMS,
    Config,
    ConfigError,
    ConfigProblem,
    _LineIndex,
    check_config,
    check_exit_code,
    check_file,
    format_problems,
    load_config,
    secret,
)
from proxy.crypto.tokens import Kind

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "tokenproxy.example.toml"


def problems(text: str) -> list[ConfigProblem]:
    return check_config(text, "t.toml")


def one(text: str) -> ConfigProblem:
    found = problems(text)
    assert len(found) == 1, format_problems(found)
    return found[0]


# -- clean configs ----------------------------------------------------------------------


def test_the_example_file_checks_clean() -> None:
    assert check_file(EXAMPLE) == []


def test_the_example_file_shows_the_defaults() -> None:
    config = load_config(EXAMPLE, env={})
    defaults = Config()
    for section in ("keys", "database", "tokens", "tickets", "budget", "identity",
                    "justification", "defaults", "logging"):
        assert getattr(config, section) == getattr(defaults, section), section
    assert config.http.listen == defaults.http.listen
    assert config.http.max_body_bytes == defaults.http.max_body_bytes
    assert config.pg.listen == defaults.pg.listen and config.admin.tokens == ()


def test_the_example_file_loads_routes_and_tables() -> None:
    config = load_config(EXAMPLE, env={})
    assert [str(r) for r in config.http.routes] == [
        "GET /customers/{id}", "GET /customers", "GET /health"
    ]
    health = config.http.routes[2]
    assert health.on_unparseable == "pass" and health.fields == ()
    route, params = config.http.route_table.match("GET", "/customers/42")
    assert route is config.http.routes[0] and params == {"id": "42"}
    assert route.customer_id is not None and route.customer_id.text == "$.id"
    table = config.pg.tables[0]
    assert table.table == "public.customers" and table.customer_id == "id"
    assert dict(table.columns) == {"full_name": Kind.NAME, "phone": Kind.PHONE,
                                   "notes": Kind.TEXT}
    assert config.defaults.rule.kind_of("mobileNumber") is Kind.PHONE


def test_an_empty_file_is_a_config_of_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("")
    assert load_config(path, env={}) == Config()
    assert load_config(None, env={}) == Config()
    assert problems("") == []
    assert problems("# only a comment\n[http]\n") == []


def test_values_are_read_and_converted() -> None:
    text = """
[database]
connect_timeout = 3        # an integer is a number of seconds too
pool_max = 4
[identity]
jwt_algorithms = ["RS256"]
jwt_public_key_file = "/etc/sso.pem"
[logging]
level = "debug"
format = "console"
"""
    assert problems(text) == []
    config = load_config_text(text)
    assert config.database.connect_timeout == 3.0
    assert isinstance(config.database.connect_timeout, float)
    assert config.database.pool_max == 4
    assert config.identity.jwt_algorithms == ("RS256",)
    assert config.logging.level == "debug" and config.logging.format == "console"


def load_config_text(text: str, env: dict[str, str] | None = None) -> Config:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.toml"
        path.write_text(text)
        return load_config(path, env=env or {})


# -- environment ------------------------------------------------------------------------


def test_environment_overrides_the_database_url_and_keys_dir() -> None:
    config = load_config_text(
        '[keys]\ndir = "k"\n',
        env={"DATABASE_URL": "postgresql://u:pw@db:5432/x", "TOKENPROXY_KEYS": "/srv/keys"},
    )
    assert config.database.url == "postgresql://u:pw@db:5432/x"
    assert config.keys.dir == "/srv/keys"
    assert load_config_text('[keys]\ndir = "k"\n', env={"TOKENPROXY_KEYS": ""}).keys.dir == "k"


def test_a_bad_database_url_in_the_environment_is_reported_without_its_value() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text("", env={"DATABASE_URL": "mysql://root:hunter2@db/x"})
    assert "DATABASE_URL" in str(info.value) and "hunter2" not in str(info.value)


def test_secrets_are_read_from_the_named_variable_when_needed() -> None:
    env = {"MY_SECRET": "s3cret", "EMPTY": ""}
    assert secret("MY_SECRET", env) == "s3cret"
    assert secret("EMPTY", env) is None
    assert secret("UNSET", env) is None
    assert secret("", env) is None
    config = load_config_text('[database]\npassword_env = "MY_SECRET"\n')
    assert config.database.password_env == "MY_SECRET"
    assert secret(config.database.password_env, env) == "s3cret"


def test_secret_reads_the_process_environment_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOKENPROXY_TEST_SECRET", "v")
    assert secret("TOKENPROXY_TEST_SECRET") == "v"


# -- the report -------------------------------------------------------------------------


def test_load_config_raises_every_problem_one_per_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[http]\nupsteam = "x"\nread_timeout = "30"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    lines = str(info.value).splitlines()
    assert lines == [
        f"{path}:2: http.upsteam: unknown key 'upsteam' in [http] (did you mean 'upstream'?)",
        f"{path}:3: http.read_timeout: expected a number of seconds, got a string "
        "(write it like read_timeout = 30.0)",
    ]
    assert len(info.value.problems) == 2


def test_format_and_exit_code() -> None:
    assert format_problems([]) == ""
    assert check_exit_code([]) == EXIT_CLEAN == 0
    found = problems("[htpp]\n")
    assert check_exit_code(found) == EXIT_PROBLEMS == 1
    assert format_problems(found) == "t.toml:1: htpp: unknown section [htpp] (did you mean [http]?)"


def test_an_unreadable_file_is_one_problem(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    found = check_file(missing)
    assert len(found) == 1 and "cannot read the config" in found[0].message
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(missing, env={})


# -- every kind of mistake --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "key", "message", "suggestion"),
    [
        # unknown keys and sections, with a suggestion
        ('[http]\nlisten = "127.0.0.1:1"\nupsteam = "x"\n', 3, "http.upsteam",
         "unknown key 'upsteam' in [http]", "did you mean 'upstream'?"),
        ("[htpp]\n", 1, "htpp", "unknown section [htpp]", "did you mean [http]?"),
        ("[zzz]\n", 1, "zzz", "unknown section [zzz]", "expected one of [keys]"),
        ("[budget]\nper_week = 3\n", 2, "budget.per_week", "unknown key 'per_week'",
         "expected one of 'per_hour', 'per_day'"),
        # wrong types
        ('[database]\nconnect_timeout = "5"\n', 2, "database.connect_timeout",
         "expected a number of seconds, got a string", "write it like connect_timeout = 5.0"),
        ("[database]\nconnect_timeout = true\n", 2, "database.connect_timeout",
         "expected a number of seconds, got true/false", "5.0"),
        ("[database]\nconnect_timeout = 0\n", 2, "database.connect_timeout",
         "must be more than zero seconds", "5.0"),
        ("[tickets]\ncache_ttl = -1\n", 2, "tickets.cache_ttl", "must be zero or more", "2.0"),
        ("[tickets]\ncache_ttl = nan\n", 2, "tickets.cache_ttl", "zero or more", ""),
        ('[budget]\nper_hour = "20"\n', 2, "budget.per_hour",
         "expected a whole number, got a string", "per_hour = 20"),
        ("[budget]\nper_hour = 2.5\n", 2, "budget.per_hour", "expected a whole number", ""),
        ("[budget]\nper_day = -1\n", 2, "budget.per_day", "must be at least 0", ""),
        ('[database]\nmigrate_on_start = "true"\n', 2, "database.migrate_on_start",
         "expected true or false", "write true without quotes"),
        ("[keys]\ndir = 5\n", 2, "keys.dir", "expected a string in quotes, got a whole number",
         'write it like dir = "keys"'),
        ('[identity]\njwt_algorithms = "HS256"\n', 2, "identity.jwt_algorithms",
         "expected an array of strings", '["HS256"]'),
        ('[defaults]\nname_fields = ["name", 3]\n', 2, "defaults.name_fields[1]",
         "expected a non-empty string, got a whole number", ""),
        ("http = 5\n", 1, "http", "expected a table, got a whole number", ""),
        # addresses and URLs
        ('[http]\nlisten = "127.0.0.1"\n', 2, "http.listen", "must be host:port", "127.0.0.1:8080"),
        ('[http]\nlisten = "127.0.0.1:99999"\n', 2, "http.listen", "invalid port '99999'", ""),
        ('[http]\nlisten = "::1:8080"\n', 2, "http.listen", "needs brackets", "[::1]:8080"),
        ('[http]\nlisten = "[::zz]:8080"\n', 2, "http.listen", "invalid IPv6", ""),
        ('[http]\nlisten = "bad host:80"\n', 2, "http.listen", "invalid host", ""),
        ('[admin]\nlisten = ":8081"\n', 2, "admin.listen", "must be host:port", ""),
        ('[pg]\nupstream = "db.internal"\n', 2, "pg.upstream", "must be host:port", ""),
        ('[http]\nupstream = "127.0.0.1:9000"\n', 2, "http.upstream",
         "must be an http:// or https:// URL", "http://127.0.0.1:9000"),
        ('[http]\nupstream = "http://h:99999"\n', 2, "http.upstream", "invalid port", ""),
        ('[database]\nurl = "mysql://h/db"\n', 2, "database.url", "PostgreSQL URL", ""),
        # values of a fixed set, with difflib suggestions
        ('[logging]\nlevel = "inof"\n', 2, "logging.level",
         "level must be one of debug, info, warning, error, critical, got 'inof'",
         "did you mean 'info'?"),
        ('[logging]\nformat = "text"\n', 2, "logging.format", "format must be one of json",
         "expected one of 'json', 'console'"),
        ('[identity]\njwt_algorithms = ["HS265"]\n', 2, "identity.jwt_algorithms[0]",
         "must be one of", "did you mean 'HS256'?"),
        ('[identity]\njwt_algorithms = ["none"]\n', 2, "identity.jwt_algorithms[0]",
         "got 'none'", ""),
        ('[tokens]\ndefault_region = "id"\n', 2, "tokens.default_region", "must be upper case",
         'write "ID"'),
        ('[tokens]\ndefault_region = "XX"\n', 2, "tokens.default_region",
         "is not a phone region", ""),
        # identity, justification and other cross-field rules
        ('[identity]\ntrusted_peers = ["10.0.0.1/8"]\n', 2, "identity.trusted_peers[0]",
         "has host bits set", 'write "10.0.0.0/8"'),
        ('[identity]\ntrusted_peers = ["localhost"]\n', 2, "identity.trusted_peers[0]",
         "is not an IP network", ""),
        ('[identity]\njwt_algorithms = ["RS256"]\n', 2, "identity.jwt_algorithms",
         "RS256 needs jwt_public_key_file", ""),
        ('[identity]\njwt_algorithms = []\n', 2, "identity.jwt_algorithms",
         "jwt_algorithms is empty", ""),
        ('[identity]\njwt_secret_env = ""\n', 2, "identity.jwt_secret_env", "HS256 needs a secret",
         ""),
        ('[identity]\ntrusted_header = "X Auth"\n', 2, "identity.trusted_header",
         "not a valid HTTP header name", ""),
        ('[justification]\ncookie_name = "a;b"\n', 2, "justification.cookie_name",
         "not a valid cookie name", ""),
        ('[justification]\nticket_header = ""\n', 2, "justification.ticket_header",
         "ticket_header is empty", 'ticket_header = "X-Ticket-Id"'),
        ('[http]\nlisten = ""\n', 2, "http.listen", "listen is empty", ""),
        ("[justification]\ncookie_ttl = 0\n", 2, "justification.cookie_ttl",
         "must be at least 1", ""),
        ("[database]\npool_min = 5\npool_max = 2\n", 2, "database.pool_min",
         "pool_min (5) is above pool_max (2)", ""),
        ('[http]\ntls_cert_file = "c.pem"\n', 1, "http.tls_key_file",
         "tls_key_file is missing", "or neither"),
        ('[http]\nreserved_prefix = "_tp"\n', 2, "http.reserved_prefix",
         "must start and end with '/'", ""),
        ('[defaults]\nname_fields = ["name", "mobile"]\n', 2, "defaults.name_fields[1]",
         "'mobile' is in both name_fields and phone_fields", "keep it in one list"),
        ('[defaults]\ncustomer_id_fields = ["id", "fullName"]\n', 2,
         "defaults.customer_id_fields[1]", "in both name_fields and customer_id_fields",
         "a customer id is never tokenized"),
        ('[defaults]\ncustomer_id_fields = ["*_id"]\n', 2, "defaults.customer_id_fields[0]",
         "customer id fields cannot be globs", ""),
        ('[defaults]\nphone_fields = ["*phone$"]\n', 2, "defaults.phone_fields[0]",
         "a glob may use only", ""),
    ],
)
def test_each_mistake_is_reported_with_line_key_and_fix(
    text: str, line: int, key: str, message: str, suggestion: str
) -> None:
    found = problems(text)
    assert found, "expected a problem"
    match = [p for p in found if p.key == key]
    assert match, format_problems(found)
    p = match[0]
    assert (p.file, p.line) == ("t.toml", line), format_problems(found)
    assert message in p.message, p.message
    assert suggestion in p.suggestion, p.suggestion


def test_empty_means_none_where_the_example_says_so() -> None:
    text = ('[identity]\ntrusted_header = ""\n[keys]\nkek_file = ""\n'
            '[database]\npassword_env = ""\n')
    assert problems(text) == []
    assert load_config_text(text).identity.trusted_header == ""


def test_mixing_hmac_and_public_key_algorithms_is_refused() -> None:
    found = problems('[identity]\njwt_algorithms = ["HS256", "RS256"]\n'
                     'jwt_public_key_file = "k.pem"\n')
    assert [p.message for p in found] == [
        "mixing HMAC (HS*) and public-key algorithms invites algorithm confusion"
    ]


def test_secrets_never_appear_in_the_report() -> None:
    found = problems(
        '[database]\nurl = "postgresql://app:hunter2@db/x"\npassword_env = "hunter2 pass"\n'
        '[identity]\njwt_secret_env = "c2VjcmV0-c2lnbmluZw=="\n'
    )
    report = format_problems(found)
    assert len(found) == 3
    assert "hunter2" not in report and "c2VjcmV0" not in report
    assert "secrets never go in the config file" in report
    assert "must name an environment variable" in report


# -- routes -----------------------------------------------------------------------------

ROUTES = """\
[http]
listen = "127.0.0.1:8080"

[[http.routes]]
method = "GET"
path = "/customers/{id}"
customer_id = "$.id"
fields = [
  { path = "$.full_name", kind = "name" },
  { path = "$.phone", kind = "phone" },
]

[[http.routes]]
method = "GET"
path = "/customers"
customer_id = "$.customers[*].id"
fields = [
  { path = "$.customers[*].full_name", kind = "name" },
  # a comment, then a mistake
  { path = "$.customers[*].phone", kind = "nmae" },
  { path = "$.customers[?(@.vip)].phone", kind = "phone" },
]
"""


def test_route_mistakes_point_into_inline_tables_on_their_own_lines() -> None:
    found = problems(ROUTES)
    assert [(p.line, p.key) for p in found] == [
        (20, "http.routes[1].fields[1].kind"),
        (21, "http.routes[1].fields[2].path"),
    ]
    assert found[0].message == "kind must be one of name, phone, text, got 'nmae'"
    assert found[0].suggestion == "did you mean 'name'?"
    assert "filters are not supported" in found[1].message
    assert "$.customers[?(@.vip)].phone" in found[1].message


@pytest.mark.parametrize(
    ("route", "key", "message", "suggestion"),
    [
        ('metod = "GET"\npath = "/a"', "http.routes[0].metod",
         "unknown key 'metod' in [[http.routes]] #1", "did you mean 'method'?"),
        ('path = "a/{id}"', "http.routes[0].path", "must start with '/'", ""),
        ('path = "/a/*/b"', "http.routes[0].path", "must be the last segment", ""),
        ('method = "G T"\npath = "/a"', "http.routes[0].method", "HTTP method", ""),
        ('method = "GET"', "http.routes[0]", "the route's path is missing", 'add path = '),
        ('path = "/a"\ncustomer_id = "id"', "http.routes[0].customer_id",
         "must start with '$'", "write '$.id'"),
        ('path = "/a"\ncustomer_id = 3', "http.routes[0].customer_id",
         "expected a JSON path in quotes", ""),
        ('path = "/a"\nfields = [{ kind = "name" }]', "http.routes[0].fields[0]",
         "the field's JSON path is missing", ""),
        ('path = "/a"\nfields = [{ path = "$.a" }]', "http.routes[0].fields[0]",
         "kind is missing", ""),
        ('path = "/a"\nfields = [{ path = "$.a", kind = 1 }]', "http.routes[0].fields[0].kind",
         "got a whole number", ""),
        ('path = "/a"\nfields = [{ path = "$.a", kind = "name", knd = "x" }]',
         "http.routes[0].fields[0].knd", "unknown key 'knd'", "did you mean 'kind'?"),
        ('path = "/a"\nfields = ["$.a"]', "http.routes[0].fields[0]", "expected a table", ""),
        ('path = "/a"\non_unparseable = "allow"', "http.routes[0].on_unparseable",
         "on_unparseable must be one of refuse, pass", ""),
        ('path = "/_tokenproxy/x"', "http.routes[0].path", "is under reserved_prefix", ""),
    ],
)
def test_route_mistakes(route: str, key: str, message: str, suggestion: str) -> None:
    found = problems(f"[[http.routes]]\n{route}\n")
    match = [p for p in found if p.key == key]
    assert match, format_problems(found)
    assert message in match[0].message and suggestion in match[0].suggestion


def test_a_misspelt_method_gets_a_suggestion_or_passes_as_a_custom_method() -> None:
    # "GTE" is a valid token (custom methods exist), so it is accepted as written
    assert problems('[[http.routes]]\nmethod = "GTE"\npath = "/a"\n') == []
    config = load_config_text('[[http.routes]]\nmethod = "get"\npath = "/a"\n')
    assert config.http.routes[0].method == "GET"


def test_a_route_without_method_matches_any() -> None:
    config = load_config_text('[[http.routes]]\npath = "/a"\n')
    assert config.http.routes[0].method == "*"


def test_duplicate_routes_name_the_first_ones_line() -> None:
    text = ('[[http.routes]]\nmethod = "GET"\npath = "/c/{id}"\n\n'
            '[[http.routes]]\nmethod = "GET"\npath = "/c/{cid}"\n')
    p = one(text)
    assert (p.line, p.key) == (5, "http.routes[1]")
    assert p.message == "duplicate route GET /c/{}: the same method and path as the route at line 1"
    assert p.suggestion == "merge their fields into one [[http.routes]]"


def test_routes_as_an_inline_array_are_indexed_too() -> None:
    text = '[http]\nroutes = [\n  { path = "/a" },\n  { path = "b" },\n]\n'
    p = one(text)
    assert (p.line, p.key) == (4, "http.routes[1].path")


# -- pg tables and admin tokens ---------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "key", "message", "suggestion"),
    [
        ('table = "customers"\ncolumns = { phone = "phone" }', "pg.tables[0].table",
         "table must be written schema.table, got 'customers'", 'write "public.customers"'),
        ('table = "a.b.c"\ncolumns = { phone = "phone" }', "pg.tables[0].table",
         "schema.table", ""),
        ('columns = { phone = "phone" }', "pg.tables[0]", "the table is missing", ""),
        ('table = "public.c"', "pg.tables[0]", "columns is missing", ""),
        ('table = "public.c"\ncolumns = { phone = "fone" }', "pg.tables[0].columns.phone",
         "kind must be one of name, phone, text, got 'fone'", "did you mean 'phone'?"),
        ('table = "public.c"\ncolumns = { "bad col" = "phone" }',
         'pg.tables[0].columns."bad col"', "is not a column name", ""),
        ('table = "public.c"\ncustomer_id = "phone"\ncolumns = { phone = "phone" }',
         "pg.tables[0].customer_id", "both the customer id and protected", ""),
        ('table = "public.c"\ncolumns = { phone = "phone" }\ncolumn = 1',
         "pg.tables[0].column", "unknown key 'column'", "did you mean 'columns'?"),
    ],
)
def test_pg_table_mistakes(table: str, key: str, message: str, suggestion: str) -> None:
    found = problems(f"[[pg.tables]]\n{table}\n")
    match = [p for p in found if p.key == key]
    assert match, format_problems(found)
    assert message in match[0].message and suggestion in match[0].suggestion


def test_duplicate_pg_tables() -> None:
    text = ('[[pg.tables]]\ntable = "public.c"\ncolumns = { a = "name" }\n'
            '[[pg.tables]]\ntable = "public.c"\ncolumns = { b = "name" }\n')
    p = one(text)
    assert (p.line, p.key) == (5, "pg.tables[1].table")
    assert "listed twice (first at line 1)" in p.message


def test_admin_tokens() -> None:
    good = "a" * 64
    text = (f'[admin]\ntokens = [\n  {{ name = "a", sha256 = "{good}" }},\n'
            f'  {{ name = "a", sha256 = "{good}" }},\n  {{ name = "b", sha256 = "XYZ" }},\n]\n')
    found = problems(text)
    assert [(p.line, p.key) for p in found] == [
        (4, "admin.tokens[1].name"), (5, "admin.tokens[2].sha256")
    ]
    assert "XYZ" not in format_problems(found)
    config = load_config_text(f'[admin]\ntokens = [{{ name = "a", sha256 = "{good}" }}]\n')
    assert config.admin.tokens[0].sha256 == good


# -- TOML syntax and the line index -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "hint"),
    [
        ('[http]\nlisten = 127.0.0.1:8080\n', 2, "strings need quotes"),
        ('[http]\nlisten "x"\n', 2, "followed by ="),
        ('[http]\nlisten = "a"\nlisten = "b"\n', 3, "once per table"),
        ('[http]\nlisten = "unclosed\n', 2, ""),
        ("[http\n", 1, ""),
    ],
)
def test_toml_syntax_errors_keep_tomllibs_line(text: str, line: int, hint: str) -> None:
    p = one(text)
    assert p.line == line
    assert p.message.startswith("TOML syntax error: ") and "(at line" not in p.message
    assert hint in p.suggestion


def test_the_line_index_survives_strings_comments_and_dotted_keys() -> None:
    text = '''\
# [not.a.table]
[http]  # a comment with key = "value"
listen = "127.0.0.1:1"   # upstream = "x"
reserved_prefix = """
upstream = "not a key"
"""
"odd key" = 1
a.b = 2
[[http.routes]]
path = '/a'
fields = [ # comment
  {path = "$.a", kind = "name"}, {path = "$.b", kind = "name"},
  # a comment line
  {path = "$.c", kind = "name"},
]
[[http.routes]]
path = "/b"
[http.routes.extra]
x = 1
'''
    tomllib.loads(text)
    index = _LineIndex(text)
    assert index.line_of(("http",)) == 2
    assert index.line_of(("http", "listen")) == 3
    assert index.line_of(("http", "reserved_prefix")) == 4
    assert index.line_of(("http", "upstream")) == 2  # not there: falls back to [http]
    assert index.line_of(("http", "odd key")) == 7
    assert index.line_of(("http", "a", "b")) == 8
    assert index.line_of(("http", "routes", 0)) == 9
    assert index.line_of(("http", "routes", 0, "fields", 1, "kind")) == 12
    assert index.line_of(("http", "routes", 0, "fields", 2)) == 14
    assert index.line_of(("http", "routes", 0, "fields", 2, "kind")) == 14
    assert index.line_of(("http", "routes", 1)) == 16
    assert index.line_of(("http", "routes", 1, "extra", "x")) == 19
    assert index.line_of(("nothing",)) == 1


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def test_every_key_of_the_example_is_found_on_a_line_that_names_it() -> None:
    text = EXAMPLE.read_text()
    index = _LineIndex(text)
    lines = text.splitlines()
    for path in _paths(tomllib.loads(text)):
        if isinstance(path[-1], str):
            assert path in index.lines, path
            assert path[-1] in lines[index.lines[path] - 1], path
