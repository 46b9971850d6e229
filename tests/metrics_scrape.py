"""Reading a Prometheus text exposition in tests: samples by name and labels."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Scrape", "eventually", "scrape"]

T = TypeVar("T")


class Scrape:
    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = [
            (sample.name, dict(sample.labels), float(sample.value))
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def names(self) -> set[str]:
        return {name for name, _, _ in self.samples}

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """The sum of `name`'s samples whose labels include `labels` (0 when none)."""
        wanted = dict(labels or {})
        return sum(
            value
            for sample, have, value in self.samples
            if sample == name and all(have.get(k) == v for k, v in wanted.items())
        )

    def series(self, name: str) -> list[dict[str, str]]:
        return [labels for sample, labels, _ in self.samples if sample == name]


def scrape(url: str, token: str | None = None) -> Scrape:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(url, headers=headers, timeout=10)
    response.raise_for_status()
    return Scrape(response.text)


def eventually(check: Callable[[], T], timeout_s: float = 15.0) -> T:
    """`check()` once it stops raising AssertionError: each process writes its metric files
    as it counts, so a scrape may come a beat early."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
