"""What a model call cost, in US dollars, from the token counts Anthropic reports."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from types import MappingProxyType

from rag.types import Usage

__all__ = ["PRICES", "ModelPrice", "cost_usd", "price_for"]

_PER_MILLION = Decimal(1_000_000)
_EIGHT_DECIMALS = Decimal("0.00000001")


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million tokens. `cache_write` is the 5-minute (default) cache-write rate."""

    input: Decimal
    output: Decimal
    cache_write: Decimal
    cache_read: Decimal


def _price(input: str, output: str, cache_write: str, cache_read: str) -> ModelPrice:
    return ModelPrice(Decimal(input), Decimal(output), Decimal(cache_write), Decimal(cache_read))


_OPUS_4_5 = _price("5", "25", "6.25", "0.50")
_OPUS_4 = _price("15", "75", "18.75", "1.50")
_SONNET_4 = _price("3", "15", "3.75", "0.30")

# Source: Anthropic's public pricing page, https://platform.claude.com/docs/en/about-claude/pricing
# ("Model pricing": base input, output, 5m cache writes, cache hits), taken 2026-11-24; Sonnet 5
# from its model page (platform.claude.com/docs/.../models/sonnet-5/overview) the same day.
# Left out on purpose, so that they cost None rather than a wrong figure: Haiku 5.5 (priced by
# prompt length), Sonnet 5.5 and Opus 5.5 (cache-read rates changed in 2026-10), Fable and
# Mythos (limited availability). Long-context (>200K input) tiers are not modelled: Scribes
# prompts stay far below them.
PRICES: MappingProxyType[str, ModelPrice] = MappingProxyType(
    {
        "claude-opus-5": _OPUS_4_5,
        "claude-opus-4-8": _OPUS_4_5,
        "claude-opus-4-7": _OPUS_4_5,
        "claude-opus-4-6": _OPUS_4_5,
        "claude-opus-4-5": _OPUS_4_5,
        "claude-opus-4-1": _OPUS_4,
        "claude-opus-4-0": _OPUS_4,
        "claude-opus-4": _OPUS_4,
        "claude-sonnet-5": _price("2", "10", "2.50", "0.20"),
        "claude-sonnet-4-6": _SONNET_4,
        "claude-sonnet-4-5": _SONNET_4,
        "claude-sonnet-4-0": _SONNET_4,
        "claude-sonnet-4": _SONNET_4,
        "claude-haiku-4-5": _price("1", "5", "1.25", "0.10"),
        "claude-3-5-haiku": _price("0.80", "4", "1", "0.08"),
    }
)

# What may follow a known name: a snapshot date (`-20250929`, Vertex's `@20250929`, maybe with
# a platform suffix) or `-latest`. Anything else, e.g. `claude-opus-4-9`, is a different model
# and must not be priced as `claude-opus-4`.
_SUFFIX = re.compile(r"(?:[-@]\d{8}(?:\W.*)?|-latest)?")


def price_for(model: str) -> ModelPrice | None:
    """The price of `model`, matched on the longest known name it starts with; None if unknown."""
    model = model.strip().lower()
    for name in sorted(PRICES, key=len, reverse=True):
        if model.startswith(name) and _SUFFIX.fullmatch(model, len(name)):
            return PRICES[name]
    return None


def cost_usd(model: str, usage: Usage) -> Decimal | None:
    """Dollars for one call, rounded to 8 decimals; None when the model has no known price."""
    price = price_for(model)
    if price is None:
        return None
    total = (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_creation_input_tokens * price.cache_write
        + usage.cache_read_input_tokens * price.cache_read
    ) / _PER_MILLION
    return total.quantize(_EIGHT_DECIMALS, rounding=ROUND_HALF_EVEN)
