"""The transform both front ends call: tokenize all but revealed records, resolve tokens back."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.crypto.engine import AmbiguousTokenError, TokenEngine
from proxy.crypto.keyring import DataKey, Keyring
from proxy.crypto.registry import MemoryRegistry
from proxy.crypto.tokens import IssuedToken, Kind, Method, Tokenized
from proxy.crypto.vault import MemoryVault, Vault
from proxy.policy.records import Record, extract_records
from proxy.policy.routes import Route
from proxy.policy.transform import (
    RevealedField,
    apply_replacements,
    resolve_records,
    reveal_candidates,
    tokenize_records,
)


class ShiftTokenizer:
    """A stand-in tokenizer: letters and digits shifted by one, reversibly, nothing else."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind

    @staticmethod
    def _shift(value: str, step: int) -> str:
        out = []
        for ch in value:
            if "a" <= ch <= "z":
                out.append(chr((ord(ch) - 97 + step) % 26 + 97))
            elif "A" <= ch <= "Z":
                out.append(chr((ord(ch) - 65 + step) % 26 + 65))
            elif "0" <= ch <= "9":
                out.append(chr((ord(ch) - 48 + step) % 10 + 48))
            else:
                out.append(ch)
        return "".join(out)

    def tokenize(self, value: str, key: DataKey, vault: Vault) -> Tokenized:
        return Tokenized(self._shift(value, 1), Method.FF1)

    def detokenize(self, token: str, key: DataKey, vault: Vault) -> str:
        return self._shift(token, -1)


class CountingEngine(TokenEngine):
    def __init__(self) -> None:
        super().__init__(
            Keyring.single(bytes(32)),
            {k.value: ShiftTokenizer(k) for k in Kind},
            MemoryVault(),
            MemoryRegistry(),
        )
        self.batches: list[tuple[str, int]] = []

    def tokenize_many(self, kind: str, values: Any) -> list[str]:
        self.batches.append((kind, len(values)))
        return super().tokenize_many(kind, values)


@pytest.fixture
def engine() -> CountingEngine:
    return CountingEngine()


DOC = {
    "customers": [
        {"id": 1, "full_name": "Budi Santoso", "phone": "+62 812-3456-789", "notes": "Budi asked"},
        {"id": 2, "full_name": "Siti Rahayu", "phone": 6281234567, "notes": "callback"},
        {"full_name": "No Id", "phone": "999"},
    ]
}
ROUTE = Route.parse(
    "GET", "/customers", "$.customers[*].id",
    [("$.customers[*].full_name", "name"), ("$.customers[*].phone", "phone"),
     ("$.customers[*].notes", "text")],
)


def test_everything_is_tokenized_when_nobody_is_revealed(engine: CountingEngine) -> None:
    doc = copy.deepcopy(DOC)
    result = tokenize_records(extract_records(doc, ROUTE), set(), engine)
    out = apply_replacements(doc, result.replacements)
    assert out is doc
    assert doc["customers"][0] == {
        "id": 1, "full_name": "Cvej Tbouptp", "phone": "+73 923-4567-890", "notes": "Cvej btlfe"
    }
    assert doc["customers"][1]["phone"] == 7392345678  # a number stays a number
    assert doc["customers"][2] == {"full_name": "Op Je", "phone": "000"}
    s = result.summary
    assert s.revealed_customers == frozenset() and s.revealed_fields == ()
    assert s.tokenized == {"name": 3, "phone": 3, "text": 2} and s.tokenized_total == 8
    assert s.records_without_id == 1
    assert sorted(engine.batches) == [("name", 3), ("phone", 3), ("text", 2)]  # one per kind


def test_only_the_revealed_customers_records_pass_in_clear(engine: CountingEngine) -> None:
    doc = copy.deepcopy(DOC)
    records = extract_records(doc, ROUTE)
    result = tokenize_records(records, {"2"}, engine)
    apply_replacements(doc, result.replacements)
    assert doc["customers"][1] == DOC["customers"][1]
    assert doc["customers"][0]["full_name"] == "Cvej Tbouptp"
    assert result.summary.revealed_customers == frozenset({"2"})
    assert result.summary.revealed == {"name": 1, "phone": 1, "text": 1}
    assert RevealedField("2", Kind.PHONE, ("customers", 1, "phone")) in (
        result.summary.revealed_fields
    )


def test_a_record_without_a_customer_id_is_never_revealed(engine: CountingEngine) -> None:
    records = [Record(None, extract_records({"name": "X"})[0].fields)]
    result = tokenize_records(records, {"None", ""}, engine)
    assert result.replacements == {("name",): "Y"}


def test_a_phone_number_whose_token_starts_with_zero_becomes_a_string(
    engine: CountingEngine,
) -> None:
    doc = {"phone": 9123}
    apply_replacements(doc, tokenize_records(extract_records(doc), set(), engine).replacements)
    assert doc == {"phone": "0234"}  # never the original, even if the type must change


def test_reveal_candidates_are_the_records_the_ticket_names() -> None:
    records = extract_records(copy.deepcopy(DOC), ROUTE)
    assert reveal_candidates(records, frozenset({"2", "77"})) == {"2"}
    assert reveal_candidates(records, frozenset()) == set()


def test_tokens_coming_back_are_resolved_and_typed_values_pass(engine: CountingEngine) -> None:
    doc = copy.deepcopy(DOC)
    apply_replacements(doc, tokenize_records(extract_records(doc, ROUTE), set(), engine)
                       .replacements)
    doc["customers"][0]["notes"] = "typed by the agent"  # not a token: passes as typed
    result = resolve_records(extract_records(doc, ROUTE), engine)
    apply_replacements(doc, result.replacements)
    assert doc["customers"][0]["full_name"] == "Budi Santoso"
    assert doc["customers"][0]["notes"] == "typed by the agent"
    assert doc["customers"][1]["phone"] == 6281234567
    assert result.resolved == {"name": 3, "phone": 3, "text": 1}
    assert result.total == 7


def test_an_ambiguous_token_refuses_the_request() -> None:
    class Ambiguous(CountingEngine):
        def resolve(self, kind: str, value: str) -> Any:
            raise AmbiguousTokenError("ambiguous")

    with pytest.raises(AmbiguousTokenError):
        resolve_records(extract_records({"name": "X"}), Ambiguous())


def test_apply_replacements_can_replace_the_whole_document() -> None:
    assert apply_replacements("Budi", {(): "Cvej"}) == "Cvej"


def test_the_registry_records_every_token_issued(engine: CountingEngine) -> None:
    tokenize_records(extract_records(copy.deepcopy(DOC), ROUTE), set(), engine)
    rows = engine.registry.lookup("name", "Cvej Tbouptp")
    assert rows == (IssuedToken("name", "Cvej Tbouptp", 1, Method.FF1),)


# -- property: a write-back round trip gives the original document ----------------------

KEYS = ["id", "name", "phone", "notes", "items", "x"]
string_docs = st.recursive(
    st.text(alphabet="ab01 -", max_size=6) | st.integers(0, 50) | st.none(),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(KEYS), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(string_docs)
def test_tokenize_then_resolve_round_trips(doc: Any) -> None:
    engine = CountingEngine()
    original = copy.deepcopy(doc)
    tokenized = apply_replacements(
        doc, tokenize_records(extract_records(doc), set(), engine).replacements
    )
    restored = apply_replacements(
        tokenized, resolve_records(extract_records(tokenized), engine).replacements
    )
    assert restored == original
