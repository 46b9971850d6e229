"""`samples/eval/paraphrases.jsonl`: the labelled paraphrase and near-miss pairs that the
semantic answer cache is tuned and benchmarked on (issue 8) stay well formed."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
PAIRS = SAMPLES / "eval" / "paraphrases.jsonl"

SAME_KINDS = {"reword", "reorder", "short", "synonym", "casual", "typo", "formal"}
NEAR_MISS_KINDS = {"negation", "number", "person", "book", "entity", "opposite", "scope"}
SAME_KEYS = {"a", "b", "same", "document", "kind"}
NEAR_MISS_KEYS = SAME_KEYS | {"document_b"}

MIN_SAME = 220
MIN_NEAR_MISSES = 120
MIN_SAME_DOCUMENTS = 40
MIN_PER_NEAR_MISS_KIND = 12


def _load() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(PAIRS.read_text(encoding="utf-8").splitlines(), start=1):
        assert line.strip(), f"line {number} is blank"
        row = json.loads(line)
        assert isinstance(row, dict), f"line {number} is not an object"
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return _load()


@pytest.fixture(scope="module")
def documents() -> set[str]:
    return {path.stem for path in SAMPLES.glob("*.md") if path.stem != "README"}


def test_every_line_has_exactly_the_allowed_keys_and_a_known_kind(
    rows: list[dict[str, Any]],
) -> None:
    for number, row in enumerate(rows, start=1):
        same = row.get("same")
        assert isinstance(same, bool), f"line {number}: same must be true or false"
        keys = SAME_KEYS if same else NEAR_MISS_KEYS
        assert set(row) == keys, f"line {number}: keys {sorted(row)}"
        assert row["kind"] in (SAME_KINDS if same else NEAR_MISS_KINDS), f"line {number}"
        for field in ("a", "b"):
            text = row[field]
            assert isinstance(text, str), f"line {number}: {field}"
            assert text == text.strip() and text, f"line {number}: {field} empty or padded"


def test_document_ids_name_sample_notes(rows: list[dict[str, Any]], documents: set[str]) -> None:
    assert len(documents) == 50
    for number, row in enumerate(rows, start=1):
        assert row["document"] in documents, f"line {number}: {row['document']}"
        if not row["same"]:
            other = row["document_b"]
            assert other is None or other in documents, f"line {number}: {other}"


def test_enough_pairs_of_each_sort(rows: list[dict[str, Any]]) -> None:
    same = [row for row in rows if row["same"]]
    near_misses = [row for row in rows if not row["same"]]
    assert len(same) >= MIN_SAME
    assert len(near_misses) >= MIN_NEAR_MISSES
    assert len({row["document"] for row in same}) >= MIN_SAME_DOCUMENTS
    per_kind = Counter(row["kind"] for row in near_misses)
    assert set(per_kind) == NEAR_MISS_KINDS
    short = {kind: n for kind, n in per_kind.items() if n < MIN_PER_NEAR_MISS_KIND}
    assert not short, short


def test_the_two_questions_differ_and_no_pair_repeats(rows: list[dict[str, Any]]) -> None:
    seen: set[frozenset[str]] = set()
    for number, row in enumerate(rows, start=1):
        a, b = row["a"].casefold(), row["b"].casefold()
        assert a != b, f"line {number}: a and b are the same question"
        pair = frozenset((a, b))
        assert pair not in seen, f"line {number} repeats an earlier pair"
        seen.add(pair)
