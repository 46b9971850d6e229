"""Latency summaries and ratios: the figures every benchmark prints."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Summary", "format_ratio", "ratio", "summarise"]


@dataclass(frozen=True, slots=True)
class Summary:
    """Milliseconds (or any unit) over `n` samples; percentiles by linear interpolation."""

    n: int
    mean: float
    p50: float
    p95: float
    p99: float
    min: float
    max: float

    def as_dict(self) -> dict[str, float]:
        return {key: round(float(value), 3) for key, value in asdict(self).items()}


def summarise(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("no samples to summarise; the benchmark measured nothing")
    data = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(data, [50, 95, 99])
    return Summary(
        n=len(values),
        mean=float(data.mean()),
        p50=float(p50),
        p95=float(p95),
        p99=float(p99),
        min=float(data.min()),
        max=float(data.max()),
    )


def ratio(measured: float, baseline: float) -> float:
    """measured / baseline; infinite when the baseline is zero (it never should be)."""
    return measured / baseline if baseline > 0 else float("inf")


def format_ratio(value: float) -> str:
    return f"{value:.2f}x" if value < 100 else f"{value:.0f}x"
