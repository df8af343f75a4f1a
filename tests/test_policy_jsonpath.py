"""The JSONPath subset: compile, find with locations, refuse the rest, agree with a reference."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import InvalidInputError
from proxy.policy.jsonpath import (
    JsonPath,
    JsonPathError,
    compile_path,
    format_location,
    get_at,
    set_at,
)

DOC = {
    "customers": [
        {"id": 1, "full_name": "Budi Santoso", "contact": {"phone": "+62 812"}},
        {"id": 2, "full_name": "Siti Rahayu", "contact": {"phone": "+62 813"}},
    ],
    "owner": {"full_name": "Agent Smith"},
    "a b": {"it's": 5},
}


ALL_NAMES = [("customers", 0, "full_name"), ("customers", 1, "full_name"), ("owner", "full_name")]
PHONES = [("customers", 0, "contact", "phone"), ("customers", 1, "contact", "phone")]


def locs(path: str, doc: Any = DOC) -> list[tuple[str | int, ...]]:
    return [loc for loc, _ in compile_path(path).find(doc)]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$", [()]),
        ("$.owner", [("owner",)]),
        ("$.owner.full_name", [("owner", "full_name")]),
        ("$['owner']['full_name']", [("owner", "full_name")]),
        ('$["owner"].full_name', [("owner", "full_name")]),
        ("$.customers[*].id", [("customers", 0, "id"), ("customers", 1, "id")]),
        ("$.customers[1].full_name", [("customers", 1, "full_name")]),
        ("$.customers[-1].id", [("customers", 1, "id")]),
        ("$.customers[5].id", []),
        ("$.customers[-3].id", []),
        ("$.owner[*]", [("owner", "full_name")]),  # [*] over an object: its member values
        ("$['a b']['it\\'s']", [("a b", "it's")]),
        ("$..full_name", ALL_NAMES),
        ("$..contact.phone", PHONES),
        ("$.customers..phone", PHONES),
        ("$..['full_name']", ALL_NAMES),
        ("$.missing.key", []),
        ("$.owner.full_name.deeper", []),  # a key of a string: no match, no error
        ("$.owner[0]", []),  # an index of an object: no match
    ],
)
def test_find_returns_each_match_with_its_location(path: str, expected: list[Any]) -> None:
    assert locs(path) == expected


def test_find_returns_the_values_at_the_locations() -> None:
    for loc, value in compile_path("$..phone").find(DOC):
        assert get_at(DOC, loc) is value


def test_recursive_descent_twice_reports_each_location_once() -> None:
    doc = {"a": {"a": {"b": 1}, "b": 2}}
    assert sorted(locs("$..a..b", doc)) == [("a", "a", "b"), ("a", "b")]


def test_recursive_descent_finds_a_key_inside_its_own_value() -> None:
    doc = {"x": {"x": {"x": 1}}}
    assert locs("$..x", doc) == [("x",), ("x", "x"), ("x", "x", "x")]


def test_deep_documents_do_not_hit_the_recursion_limit() -> None:
    doc: Any = {"phone": "1"}
    for _ in range(5000):
        doc = {"n": doc}
    assert len(locs("$..phone", doc)) == 1


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("customers", "must start with '$'"),
        ("$.a[?(@.x == 1)]", "filters are not supported"),
        ("$.a[0:2]", "slices are not supported"),
        ("$.a[0,1]", "unions are not supported"),
        ("$.a.*", "'.*' is not supported"),
        ("$..*", "expected a key after '..'"),
        ("$..[*]", "recursive descent takes a key only"),
        ("$.a[", "unclosed '['"),
        ("$.a['b", "unterminated quoted key"),
        ("$.a['b'", "unclosed '['"),
        ("$.a b", "unexpected ' '"),
        ("$.1a", "expected a key after '.'"),
        ("$.a[x]", "unexpected 'x' in brackets"),
        ("$.a()", "unexpected '('"),
        ("$$", "unexpected '$'"),
    ],
)
def test_anything_outside_the_subset_is_refused_with_where_and_what(
    path: str, problem: str
) -> None:
    with pytest.raises(JsonPathError) as info:
        compile_path(path)
    assert problem in str(info.value)
    assert f"position {info.value.position}" in str(info.value)
    assert isinstance(info.value, InvalidInputError)


def test_a_bare_name_gets_a_suggestion() -> None:
    with pytest.raises(JsonPathError, match=r"write '\$\.phone'"):
        compile_path("phone")


def test_wildcard_positions_feed_pairing() -> None:
    assert compile_path("$.customers[*].contacts[*].phone").wildcards == (1, 3)
    assert compile_path("$.id").wildcards == ()
    assert compile_path("$..id").wildcards is None
    assert compile_path("$..id").has_descent


def test_split_key() -> None:
    split = compile_path("$.customers[*].id").split_key()
    assert split is not None
    prefix, key = split
    assert key == "id"
    assert prefix.text == "$.customers[*]"
    assert prefix.find(DOC) == compile_path("$.customers[*]").find(DOC)
    assert compile_path("$.customers[*]").split_key() is None
    assert compile_path("$..id").split_key() is None


def test_format_location_is_a_path_to_the_same_place() -> None:
    assert format_location(("customers", 3, "full_name")) == "$.customers[3].full_name"
    assert format_location(()) == "$"
    loc = ("a b", "it's")
    assert format_location(loc) == "$['a b']['it\\'s']"
    assert locs(format_location(loc)) == [loc]


def test_set_at_writes_in_place_and_replaces_the_root() -> None:
    doc: dict[str, Any] = {"a": [{"b": 1}]}
    assert set_at(doc, ("a", 0, "b"), 2) is doc
    assert doc == {"a": [{"b": 2}]}
    assert set_at(doc, (), "x") == "x"


def test_compiled_paths_are_cached_and_hashable() -> None:
    assert compile_path("$.a[*].b") is compile_path("$.a[*].b")
    assert isinstance(hash(compile_path("$.a")), int)
    assert isinstance(compile_path("$.a"), JsonPath)


# -- property: agreement with a naive reference walker --------------------------------

KEYS = ["a", "b", "id", "a b", "it's", "0"]

json_docs = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text("xy", max_size=2),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS), children, max_size=4),
    max_leaves=25,
)

Step = tuple[str, Any]
steps_st = st.lists(
    st.one_of(
        st.tuples(st.just("key"), st.sampled_from(KEYS)),
        st.tuples(st.just("index"), st.integers(-3, 3)),
        st.tuples(st.just("wild"), st.none()),
        st.tuples(st.just("descend"), st.sampled_from(KEYS)),
    ),
    max_size=4,
)


def path_text(steps: list[Step]) -> str:
    out = "$"
    for op, arg in steps:
        if op == "key":
            quoted = "['" + arg.replace("\\", "\\\\").replace("'", "\\'") + "']"
            out += f".{arg}" if arg.isidentifier() else quoted
        elif op == "index":
            out += f"[{arg}]"
        elif op == "wild":
            out += "[*]"
        else:
            out += f"..{arg}" if arg.isidentifier() else "..['" + arg.replace("'", "\\'") + "']"
    return out


def preorder(loc: tuple[Any, ...], node: Any) -> list[tuple[tuple[Any, ...], Any]]:
    out = [(loc, node)]
    if isinstance(node, dict):
        for k, v in node.items():
            out += preorder((*loc, k), v)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += preorder((*loc, i), v)
    return out


def reference(doc: Any, steps: list[Step]) -> list[tuple[tuple[Any, ...], Any]]:
    current = [((), doc)]
    for op, arg in steps:
        nxt = []
        for loc, node in current:
            if op == "key" and isinstance(node, dict) and arg in node:
                nxt.append(((*loc, arg), node[arg]))
            elif op == "index" and isinstance(node, list) and -len(node) <= arg < len(node):
                i = arg % len(node)
                nxt.append(((*loc, i), node[i]))
            elif op == "wild" and isinstance(node, list):
                nxt += [((*loc, i), v) for i, v in enumerate(node)]
            elif op == "wild" and isinstance(node, dict):
                nxt += [((*loc, k), v) for k, v in node.items()]
            elif op == "descend":
                for here, sub in preorder(loc, node):
                    if isinstance(sub, dict) and arg in sub:
                        nxt.append(((*here, arg), sub[arg]))
        current = nxt
    return current


@settings(max_examples=150, deadline=None)
@given(json_docs, steps_st)
def test_matches_agree_with_a_naive_reference_walker(doc: Any, steps: list[Step]) -> None:
    path = compile_path(path_text(steps))
    found = path.find(doc)
    expected = reference(doc, steps)
    assert len({loc for loc, _ in found}) == len(found)  # each location once
    assert {loc for loc, _ in found} == {loc for loc, _ in expected}
    for loc, value in found:
        assert get_at(doc, loc) is value
    if sum(op == "descend" for op, _ in steps) <= 1:
        assert [loc for loc, _ in found] == [loc for loc, _ in expected]  # document order
