"""Quantities compare by value, as the API server normalises them."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfleet_operator.plan import is_subset
from llmfleet_operator.quantity import parse_quantity, same_quantity


@pytest.mark.parametrize(
    ("ours", "servers"),
    [
        ("1.5Gi", "1536Mi"),
        ("1000m", "1"),
        (2, "2"),
        ("0.5", "500m"),
        ("1e3", "1k"),
        ("1Ki", "1024"),
    ],
)
def test_the_server_s_spelling_is_the_same_quantity(ours: object, servers: str) -> None:
    assert same_quantity(ours, servers)


@pytest.mark.parametrize("text", ["", "Gi", "1.5GB", "one", "1..5", "--1", "1i"])
def test_non_quantities_parse_to_none(text: str) -> None:
    assert parse_quantity(text) is None
    assert not same_quantity(text, text)  # never "equal" by accident


def test_different_values_differ() -> None:
    assert not same_quantity("1Gi", "1G")
    assert not same_quantity("500m", "0.6")


@given(st.integers(0, 10**6), st.sampled_from(["Ki", "Mi", "Gi"]))
def test_binary_suffixes_scale_by_1024(n: int, suffix: str) -> None:
    step = {"Ki": 1, "Mi": 2, "Gi": 3}[suffix]
    assert parse_quantity(f"{n}{suffix}") == Decimal(n) * 1024**step
    lower = {"Ki": "", "Mi": "Ki", "Gi": "Mi"}[suffix]
    assert same_quantity(f"{n * 1024}{lower}", f"{n}{suffix}")


def test_plans_compare_resources_by_value_and_other_strings_exactly() -> None:
    desired = {"spec": {"containers": [{"resources": {"limits": {"memory": "1.5Gi", "cpu": 2}}}]}}
    observed = {
        "spec": {"containers": [{"resources": {"limits": {"memory": "1536Mi", "cpu": "2"}}}]}
    }
    assert is_subset(desired, observed)
    observed["spec"]["containers"][0]["resources"]["limits"]["memory"] = "1Gi"
    assert not is_subset(desired, observed)
    # Outside resources, a string is a string.
    assert not is_subset(
        {"metadata": {"labels": {"size": "1k"}}}, {"metadata": {"labels": {"size": "1000"}}}
    )
