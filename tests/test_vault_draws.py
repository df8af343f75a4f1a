"""A vault token is never its own value, unless the format leaves nothing to draw."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.crypto.keyring import Keyring
from proxy.crypto.vault import MemoryVault, fresh_token
from proxy.errors import VaultMissError


def test_a_draw_equal_to_the_value_is_drawn_again() -> None:
    draws = iter(["Li", "Li", "Qo"])
    assert fresh_token("name", "Li", lambda: next(draws), lambda t: False) == "Qo"


def test_a_format_with_nothing_random_gives_the_value_itself() -> None:
    assert fresh_token("name", "-", lambda: "-", lambda t: False) == "-"


def test_taken_tokens_and_an_exhausted_format_fail_closed() -> None:
    cycle = itertools.cycle(["A", "B"])
    with pytest.raises(VaultMissError):
        fresh_token("name", "A", lambda: next(cycle), lambda t: t == "B")


@given(st.text(alphabet="ab", min_size=1, max_size=2), st.integers(0, 2**32))
def test_a_one_or_two_letter_value_never_gets_itself(value: str, seed: int) -> None:
    rng = random.Random(seed)

    def draw() -> str:
        return "".join(rng.choice("ab") for _ in value)

    token = fresh_token("name", value, draw, lambda t: False)
    assert token != value and len(token) == len(value)


def test_the_memory_vault_uses_it() -> None:
    vault = MemoryVault()
    key = Keyring.single(bytes(32)).active
    draws = iter(["J", "J", "J", "K"])
    assert vault.token_for("name", "J", key, lambda: next(draws)) == "K"
