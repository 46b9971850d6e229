"""How the semantic cache's threshold was chosen: hits and wrong hits on the labelled pairs.

    .venv/bin/python -m bench.semantic_threshold [--pairs samples/eval/paraphrases.jsonl]

Embeds both sides of every pair of `samples/eval/paraphrases.jsonl` with the configured
model (the bundled all-MiniLM-L6-v2 by default) and, for each threshold, counts the
orderings (a asked after b, and b after a) that the semantic cache would serve: similarity
at or above the threshold, and, in the guarded columns, the near-miss guard's consent
(`rag.caches.near_miss`, with the sample notes' titles as the known titles). A served
near miss is a wrong answer; a served rewording is a model call saved. Prints a table;
takes about ten seconds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rag.caches.near_miss import QuestionWords, near_miss
from rag.embedding import load_embedder
from rag.settings import Settings

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = (0.75, 0.80, 0.85, 0.88, 0.90, 0.92, 0.95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=Path, default=ROOT / "samples/eval/paraphrases.jsonl")
    parser.add_argument("--notes", type=Path, default=ROOT / "samples")
    args = parser.parse_args()

    rows = [json.loads(line) for line in args.pairs.read_text().splitlines() if line.strip()]
    titles = [
        path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip()
        for path in sorted(args.notes.glob("*.md"))
    ]
    settings = Settings()
    model = load_embedder(settings.embedding_model, threads=settings.embedding_threads)
    first = model.embed([row["a"] for row in rows])
    second = model.embed([row["b"] for row in rows])
    similarity = np.sum(first * second, axis=1)

    guarded: list[bool] = []  # per ordering: does the guard let it through?
    same: list[bool] = []
    scores: list[float] = []
    for row, score in zip(rows, similarity, strict=True):
        a = QuestionWords.of(row["a"], titles=titles)
        b = QuestionWords.of(row["b"], titles=titles)
        for asked, cached in ((a, b), (b, a)):
            guarded.append(near_miss(asked, cached) is None)
            same.append(bool(row["same"]))
            scores.append(float(score))

    rewordings = sum(same)
    near_misses = len(same) - rewordings
    print(
        f"{len(rows)} labelled pairs, {rewordings} orderings of true rewordings and "
        f"{near_misses} of near misses; model {settings.embedding_model}"
    )
    print(
        f"{'threshold':>9}  {'rewordings served':>17}  {'near misses served':>18}  "
        f"{'with the guard: rewordings':>26}  {'near misses':>11}  {'wrong share':>11}"
    )
    for threshold in THRESHOLDS:
        above = [s >= threshold for s in scores]
        plain_same = sum(a and s for a, s in zip(above, same, strict=True))
        plain_wrong = sum(a and not s for a, s in zip(above, same, strict=True))
        kept = [a and g for a, g in zip(above, guarded, strict=True)]
        kept_same = sum(k and s for k, s in zip(kept, same, strict=True))
        kept_wrong = sum(k and not s for k, s in zip(kept, same, strict=True))
        share = kept_wrong / (kept_same + kept_wrong) if kept_same + kept_wrong else 0.0
        print(
            f"{threshold:>9.2f}  {_part(plain_same, rewordings):>17}  "
            f"{_part(plain_wrong, near_misses):>18}  {_part(kept_same, rewordings):>26}  "
            f"{_part(kept_wrong, near_misses):>11}  {share:>10.1%}"
        )


def _part(count: int, whole: int) -> str:
    return f"{count} ({count / whole:.0%})"


if __name__ == "__main__":
    main()
