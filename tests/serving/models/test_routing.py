"""A/B routing: weighted split within statistical tolerance, stickiness, stability."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serving.models.routing import Router

pytestmark = pytest.mark.unit


def _binomial_tolerance(n: int, p: float, sigmas: float = 4.0) -> float:
    return sigmas * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize(
    "split",
    [
        {"champion": 90, "challenger": 10},
        {"champion": 50, "challenger": 50},
        {"champion": 70, "challenger": 20, "canary": 10},
    ],
)
def test_split_over_10000_keys_is_within_tolerance(split: dict[str, int]) -> None:
    router = Router("churn", split)
    n = 10_000
    counts = Counter(router.choose(f"user-{i}") for i in range(n))
    total = sum(split.values())
    for alias, weight in split.items():
        expected = n * weight / total
        assert abs(counts[alias] - expected) <= _binomial_tolerance(n, weight / total), counts


def test_random_routing_without_key_follows_the_split() -> None:
    router = Router("churn", {"champion": 80, "challenger": 20})
    n = 10_000
    counts = Counter(router.choose(None) for _ in range(n))
    assert abs(counts["challenger"] - 2000) <= _binomial_tolerance(n, 0.2)


def test_same_key_same_variant_and_independent_of_tag_order() -> None:
    a = Router("churn", {"champion": 90, "challenger": 10})
    b = Router("churn", {"challenger": 10, "champion": 90})
    for i in range(2000):
        key = f"k{i}"
        first = a.choose(key)
        assert all(a.choose(key) == first for _ in range(3))
        assert b.choose(key) == first


def test_moving_traffic_only_moves_keys_towards_the_grown_variant() -> None:
    before = Router("churn", {"champion": 90, "challenger": 10})
    after = Router("churn", {"champion": 80, "challenger": 20})
    for i in range(5000):
        key = f"k{i}"
        if before.choose(key) == "challenger":
            assert after.choose(key) == "challenger"


def test_zero_weights_are_refused_with_the_model_named() -> None:
    with pytest.raises(ValueError, match="model 'churn': the traffic split has no variant"):
        Router("churn", {"champion": 0})


@pytest.mark.property
@given(st.text(min_size=1, max_size=40), st.integers(min_value=1, max_value=99))
def test_choice_is_a_pure_function_of_key_and_split(key: str, challenger: int) -> None:
    router = Router("m", {"champion": 100 - challenger, "challenger": challenger})
    again = Router("m", {"champion": 100 - challenger, "challenger": challenger})
    assert router.choose(key) == again.choose(key) in {"champion", "challenger"}
