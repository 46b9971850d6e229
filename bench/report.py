"""How results are carried and printed: per-benchmark blocks, then one summary table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.stats import format_ratio, ratio

__all__ = ["BenchResult", "SummaryRow", "print_table", "summary_table"]


@dataclass(frozen=True, slots=True)
class SummaryRow:
    """One line of the summary: a figure, the same-run baseline it is read against, the ratio."""

    benchmark: str
    measure: str
    value: float
    baseline: float
    unit: str
    baseline_label: str

    @property
    def ratio(self) -> float:
        return ratio(self.value, self.baseline)

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "measure": self.measure,
            "value": round(self.value, 3),
            "baseline": round(self.baseline, 3),
            "baseline_label": self.baseline_label,
            "unit": self.unit,
            "ratio": round(self.ratio, 3),
        }


@dataclass
class BenchResult:
    name: str
    rows: list[SummaryRow] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"rows": [row.as_dict() for row in self.rows], "details": self.details}


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, indent: int = 2) -> None:
    """Left-aligned first column, right-aligned figures."""
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    pad = " " * indent
    for line in (header, *rows):
        cells = [
            str(cell).ljust(widths[i]) if i == 0 else str(cell).rjust(widths[i])
            for i, cell in enumerate(line)
        ]
        print(pad + "  ".join(cells).rstrip())


def summary_table(results: Sequence[BenchResult]) -> None:
    rows = [
        [
            row.benchmark,
            row.measure,
            f"{row.value:.2f} {row.unit}",
            f"{row.baseline:.2f} {row.unit}",
            row.baseline_label,
            format_ratio(row.ratio),
        ]
        for result in results
        for row in result.rows
    ]
    print_table(["benchmark", "measure", "value", "baseline", "baseline is", "ratio"], rows)
