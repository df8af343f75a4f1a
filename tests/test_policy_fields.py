"""The default rule: key names, their kinds, customer id keys, globs and refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.crypto.tokens import Kind
from proxy.errors import InvalidInputError
from proxy.policy import fields as fields_module
from proxy.policy.fields import (
    DEFAULT_FIELDS,
    DefaultFields,
    FieldRule,
    normalize_field_name,
    parse_kind,
)


@pytest.mark.parametrize(
    "key",
    ["full_name", "fullName", "FullName", "full-name", "FULL_NAME", "Full Name", "full__name",
     "_full_name_", "full.name"],
)
def test_spellings_of_one_field_name_normalise_alike(key: str) -> None:
    assert normalize_field_name(key) == "full_name"


@pytest.mark.parametrize(
    ("key", "normal"),
    [("phoneNUMBER", "phone_number"), ("customerID", "customer_id"), ("MSISDN", "msisdn"),
     ("HTTPStatus", "http_status"), ("tel", "tel"), ("phone2", "phone2")],
)
def test_normalisation_of_acronyms_and_digits(key: str, normal: str) -> None:
    assert normalize_field_name(key) == normal


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("fullName", Kind.NAME), ("FIRST_NAME", Kind.NAME), ("display-name", Kind.NAME),
        ("phone", Kind.PHONE), ("mobileNumber", Kind.PHONE), ("WhatsApp", Kind.PHONE),
        ("phone2", Kind.PHONE), ("phone_2", Kind.PHONE), ("tel1", Kind.PHONE),
        ("Notes", Kind.TEXT), ("comments", Kind.TEXT),
        ("fullname", Kind.NAME), ("PhoneNumber", Kind.PHONE),
        ("username", None), ("name_id", None), ("email", None), ("id", None),
        ("customer_id", None), ("phone_verified", None),
    ],
)
def test_the_default_rule_classifies_keys(key: str, kind: Kind | None) -> None:
    assert DEFAULT_FIELDS.kind_of(key) is kind


def test_customer_id_keys_rank_in_configured_order() -> None:
    assert DEFAULT_FIELDS.id_rank("customer_id") == 0
    assert DEFAULT_FIELDS.id_rank("customerId") == 0
    assert DEFAULT_FIELDS.id_rank("id") is None  # not by default: any object has an id
    rule = DefaultFields(customer_id_fields=("customer_id", "id"))
    assert rule.id_rank("ID") == 1
    assert rule.id_rank("id2") is None  # ids are exact: id2 is another thing
    assert rule.id_rank("full_name") is None


def test_globs_protect_families_of_keys() -> None:
    rule = DefaultFields(phone_fields=("phone", "*_phone"), name_fields=("name",))
    assert rule.kind_of("home_phone") is Kind.PHONE
    assert rule.kind_of("workPhone") is Kind.PHONE
    assert rule.kind_of("work-phone-2") is Kind.PHONE
    assert rule.kind_of("microphone") is None
    assert rule.kind_of("phone") is Kind.PHONE


def test_an_exact_entry_beats_a_glob_of_another_kind() -> None:
    rule = DefaultFields(name_fields=("*_name",), phone_fields=("contact_name",))
    assert rule.kind_of("contact_name") is Kind.PHONE
    assert rule.kind_of("first_name") is Kind.NAME


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name_fields": ("mobile",)}, "both phone and name|both name and phone"),
        ({"name_fields": ("fullName",), "text_fields": ("full_name",)}, "both"),
        ({"customer_id_fields": ("name",)}, "both a customer id field and a protected"),
        ({"customer_id_fields": ("*_id",)}, "globs are not allowed for ids"),
        ({"name_fields": "name"}, "a list of field names, not one string"),
        ({"name_fields": ("",)}, "non-empty strings"),
        ({"name_fields": ("a*$",)}, "a glob may use only"),
    ],
)
def test_contradictory_rules_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        DefaultFields(**kwargs)  # type: ignore[arg-type]


def test_parse_kind_lists_the_kinds() -> None:
    assert parse_kind("phone") is Kind.PHONE
    with pytest.raises(InvalidInputError, match="one of name, phone, text, got 'nmae'"):
        parse_kind("nmae")
    with pytest.raises(InvalidInputError):
        parse_kind(3)


def test_field_rule_parse() -> None:
    rule = FieldRule.parse("$.customers[*].phone", "phone")
    assert rule.kind is Kind.PHONE
    assert rule.path.text == "$.customers[*].phone"
    with pytest.raises(InvalidInputError):
        FieldRule.parse("$.customers[?(@.x)]", "phone")


def test_the_key_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fields_module, "_CACHE_LIMIT", 50)
    rule = DefaultFields()
    for i in range(500):
        rule.classify(f"key{i}")
    assert len(rule.cache) <= 50
    assert rule.kind_of("phone") is Kind.PHONE


def test_object_plans_are_cached_and_follow_the_rule() -> None:
    rule = DefaultFields()
    plan = rule.plan(("id", "customer_id", "fullName", "extra", "phone"))
    assert plan.protected == (("fullName", Kind.NAME), ("phone", Kind.PHONE))
    assert plan.id_key == "customer_id"  # customer_id outranks id wherever it is
    assert plan.others == ("id", "customer_id", "extra")
    assert rule.plan(("id", "customer_id", "fullName", "extra", "phone")) is plan


@given(st.text(max_size=30))
def test_normalisation_is_idempotent_and_total(key: str) -> None:
    once = normalize_field_name(key)
    assert normalize_field_name(once) == once
    DEFAULT_FIELDS.classify(key)  # never raises
