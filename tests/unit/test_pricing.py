from __future__ import annotations

from decimal import Decimal

import pytest

from rag.types import Usage
from rag.writers.pricing import PRICES, ModelPrice, cost_usd, price_for


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("claude-opus-4-5", ("5", "25", "6.25", "0.50")),
        ("claude-opus-4-1", ("15", "75", "18.75", "1.50")),
        ("claude-opus-4", ("15", "75", "18.75", "1.50")),
        ("claude-sonnet-4-5", ("3", "15", "3.75", "0.30")),
        ("claude-sonnet-4", ("3", "15", "3.75", "0.30")),
        ("claude-haiku-4-5", ("1", "5", "1.25", "0.10")),
        ("claude-3-5-haiku", ("0.80", "4", "1", "0.08")),
    ],
)
def test_published_rates(model: str, expected: tuple[str, str, str, str]) -> None:
    assert PRICES[model] == ModelPrice(*(Decimal(v) for v in expected))


def test_every_cache_rate_follows_anthropics_multipliers() -> None:
    for name, price in PRICES.items():
        assert price.cache_write == price.input * Decimal("1.25"), name
        assert price.cache_read == price.input * Decimal("0.1"), name


@pytest.mark.parametrize(
    ("model", "name"),
    [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),  # not claude-opus-4
        ("claude-opus-4-20250514", "claude-opus-4"),
        ("claude-opus-4-5-20251101", "claude-opus-4-5"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
        ("Claude-Sonnet-4-5", "claude-sonnet-4-5"),
    ],
)
def test_dated_ids_match_the_longest_known_name(model: str, name: str) -> None:
    assert price_for(model) is PRICES[name]


@pytest.mark.parametrize(
    "model", ["gpt-4o", "claude-opus-4-9", "claude-sonnet-4-55", "claude-2", "", "claude"]
)
def test_unknown_models_have_no_price(model: str) -> None:
    assert price_for(model) is None
    assert cost_usd(model, Usage(input_tokens=1000)) is None


def test_cost_adds_all_four_kinds_of_token() -> None:
    usage = Usage(
        input_tokens=1_234,
        output_tokens=567,
        cache_read_input_tokens=2_000,
        cache_creation_input_tokens=3_000,
    )
    # 1234*3 + 567*15 + 2000*0.30 + 3000*3.75 = 3702 + 8505 + 600 + 11250 = 24057 micro-dollars
    assert cost_usd("claude-sonnet-4-5-20250929", usage) == Decimal("0.024057")


def test_cost_is_exact_where_float_arithmetic_drifts() -> None:
    usage = Usage(cache_read_input_tokens=1, output_tokens=5)
    assert 1 * 0.30 / 1e6 + 5 * 15 / 1e6 != 0.0000753  # why Decimal is used
    assert cost_usd("claude-sonnet-4", usage) == Decimal("0.0000753")


def test_single_tokens_keep_their_eighth_decimal() -> None:
    assert cost_usd("claude-3-5-haiku", Usage(cache_read_input_tokens=1)) == Decimal("0.00000008")
    assert cost_usd("claude-haiku-4-5", Usage(cache_read_input_tokens=1)) == Decimal("0.0000001")
    assert cost_usd("claude-haiku-4-5", Usage(cache_creation_input_tokens=1)) == Decimal(
        "0.00000125"
    )
    assert cost_usd("claude-opus-4-1", Usage(output_tokens=1_000_000)) == Decimal("75.0")


def test_zero_usage_costs_nothing() -> None:
    assert cost_usd("claude-opus-4-5", Usage()) == Decimal("0.0")
