"""Routes: patterns, the most specific match, normalisation, duplicates and record shapes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.crypto.tokens import Kind
from proxy.errors import InvalidInputError
from proxy.policy.routes import Route, RouteTable, parse_pattern, split_path


def table(*specs: str) -> RouteTable:
    routes = []
    for spec in specs:
        method, pattern = spec.split(" ", 1)
        routes.append(Route(method, pattern))
    return RouteTable(routes)


def matched(t: RouteTable, method: str, path: str) -> str | None:
    route, _ = t.match(method, path)
    return None if route is None else str(route)


def test_a_param_matches_one_segment_and_comes_back() -> None:
    t = table("GET /customers/{id}")
    route, params = t.match("GET", "/customers/42")
    assert route is not None and params == {"id": "42"}
    assert t.match("GET", "/customers/42/notes") == (None, {})
    assert t.match("GET", "/customers") == (None, {})


def test_star_matches_the_rest_including_nothing() -> None:
    t = table("GET /files/*")
    assert matched(t, "GET", "/files/a/b/c") == "GET /files/*"
    assert matched(t, "GET", "/files") == "GET /files/*"
    assert matched(t, "GET", "/other") is None


def test_literal_beats_param_beats_star() -> None:
    t = table("GET /customers/*", "GET /customers/{id}", "GET /customers/export", "GET /*")
    assert matched(t, "GET", "/customers/export") == "GET /customers/export"
    assert matched(t, "GET", "/customers/7") == "GET /customers/{id}"
    assert matched(t, "GET", "/customers/7/notes") == "GET /customers/*"
    assert matched(t, "GET", "/health") == "GET /*"


def test_an_exact_pattern_beats_a_star_that_matches_nothing_more() -> None:
    t = table("GET /customers/*", "GET /customers")
    assert matched(t, "GET", "/customers") == "GET /customers"


def test_specificity_is_segment_by_segment() -> None:
    t = table("GET /a/{x}/c", "GET /{y}/b/c")
    assert matched(t, "GET", "/a/b/c") == "GET /a/{x}/c"


def test_method_star_matches_any_and_an_explicit_method_wins() -> None:
    t = table("* /customers/{id}", "PUT /customers/{id}")
    assert matched(t, "PUT", "/customers/1") == "PUT /customers/{id}"
    assert matched(t, "get", "/customers/1") == "* /customers/{id}"
    assert matched(t, "DELETE", "/customers/1") == "* /customers/{id}"


def test_methods_are_case_insensitive_and_unconfigured_ones_do_not_match() -> None:
    t = table("get /customers")
    assert matched(t, "GET", "/customers") == "GET /customers"
    assert matched(t, "POST", "/customers") is None


@pytest.mark.parametrize(
    "path",
    ["/customers/7", "//customers//7/", "/customers/./7", "/x/../customers/7",
     "/customers/7?full=1"],
)
def test_spellings_of_one_path_cannot_dodge_a_route(path: str) -> None:
    t = table("GET /customers/{id}")
    route, params = t.match("GET", path)
    assert route is not None and params == {"id": "7"}


def test_literals_are_case_sensitive() -> None:
    assert matched(table("GET /customers"), "GET", "/Customers") is None


def test_split_path_cannot_climb_above_the_root() -> None:
    assert split_path("/../../a") == ["a"]
    assert split_path("/") == []


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("customers", "must start with '/'"),
        ("/a/*/b", "must be the last segment"),
        ("/a/{id}.json", "mixes text with"),
        ("/a/{id}/{id}", "appears twice"),
        ("/a?x=1", "query or fragment"),
        ("/a/../b", "never match"),
        ("/a/{1x}", "mixes text with"),
    ],
)
def test_bad_patterns_are_refused_with_the_fix(pattern: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_pattern(pattern)


def test_bad_methods_and_on_unparseable_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="HTTP method"):
        Route("GE T", "/a")
    with pytest.raises(InvalidInputError, match="on_unparseable"):
        Route("GET", "/a", on_unparseable="ignore")  # type: ignore[arg-type]


def test_duplicate_routes_are_refused_even_with_other_param_names() -> None:
    with pytest.raises(InvalidInputError, match="duplicate route"):
        table("GET /customers/{id}", "get /customers/{cid}")
    table("GET /customers/{id}", "PUT /customers/{id}", "* /customers/{id}")  # distinct


def test_route_parse_compiles_paths_and_kinds() -> None:
    route = Route.parse(
        "GET", "/customers", "$.customers[*].id",
        [("$.customers[*].full_name", "name"), ("$.customers[*].phone", "phone")],
    )
    assert route.customer_id is not None and route.customer_id.text == "$.customers[*].id"
    assert [f.kind for f in route.fields] == [Kind.NAME, Kind.PHONE]
    with pytest.raises(InvalidInputError):
        Route.parse("GET", "/x", None, [("$.a", "nmae")])


def test_record_shape_is_found_for_fields_of_the_same_objects() -> None:
    route = Route.parse(
        "GET", "/customers", "$.customers[*].id",
        [("$.customers[*].full_name", "name"), ("$.customers[*].phone", "phone"),
         ("$.customers[*].full_name", "text")],
    )
    assert route.shape is not None
    assert route.shape.records.text == "$.customers[*]"
    assert route.shape.fields == (("full_name", Kind.NAME), ("phone", Kind.PHONE))
    assert route.shape.id_key == "id"
    single = Route.parse("GET", "/customers/{id}", "$.id", [("$.full_name", "name")])
    assert single.shape is not None and single.shape.records.text == "$"


@pytest.mark.parametrize(
    ("customer_id", "fields"),
    [
        ("$.id", [("$.customers[*].full_name", "name")]),  # the id is elsewhere
        ("$.customers[*].id", [("$.customers[*].contact.phone", "phone")]),
        ("$..id", [("$.full_name", "name")]),
        (None, [("$..full_name", "name")]),
        (None, [("$.customers[*]", "name")]),
    ],
)
def test_no_record_shape_when_fields_and_id_are_not_keys_of_the_same_objects(
    customer_id: str | None, fields: list[tuple[str, str]]
) -> None:
    assert Route.parse("GET", "/x", customer_id, fields).shape is None


SEGMENTS = st.sampled_from(["a", "b", "{p}", "{q}"])


@given(
    st.lists(
        st.tuples(st.sampled_from(["GET", "*"]), st.lists(SEGMENTS, max_size=3), st.booleans()),
        max_size=6,
    ),
    st.sampled_from(["GET", "POST"]),
    st.lists(st.sampled_from(["a", "b", "c"]), max_size=4),
)
def test_the_chosen_route_is_at_least_as_specific_as_every_other_match(
    specs: list[tuple[str, list[str], bool]], method: str, segments: list[str]
) -> None:
    routes: dict[tuple[str, str], Route] = {}
    for m, segs, star in specs:
        pattern = "/" + "/".join(_unique_params(segs) + (["*"] if star else []))
        route = Route(m, pattern)
        routes.setdefault(route.key, route)
    t = RouteTable(routes.values())
    path = "/" + "/".join(segments)
    chosen, _ = t.match(method, path)
    candidates = [
        r for r in routes.values()
        if r.method in ("*", method) and r.compiled.match(segments) is not None
    ]
    if not candidates:
        assert chosen is None
        return
    assert chosen is not None
    best = max((r.compiled.rank, r.method != "*") for r in candidates)
    assert (chosen.compiled.rank, chosen.method != "*") == best


def _unique_params(segments: list[str]) -> list[str]:
    out = []
    for i, s in enumerate(segments):
        out.append(f"{{p{i}}}" if s.startswith("{") else s)
    return out
