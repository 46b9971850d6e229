"""How the semantic cache's threshold was chosen: hits and wrong hits on the labelled pairs.

    .venv/bin/python -m bench.semantic_threshold [--pairs samples/eval/paraphrases.jsonl]

Embeds both sides of every pair of `samples/eval/paraphrases.jsonl` with the configured
model (the bundled all-MiniLM-L6-v2 by default) and, for each threshold, counts the
orderings (a asked after b, and b after a) that the semantic cache would serve: similarity
at or above the threshold, and, in the guarded columns, the near-miss guard's consent
(`rag.caches.near_miss`, with the sample notes' titles as the known titles). A served
near miss is a wrong answer; a served rewording is a model call saved. Then the same over
every ordered pair of the workload benchmark's questions (`bench.workload`), counting
those served across meaning labels (`--show` lists them). Takes about half a minute.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rag.caches.near_miss import QuestionWords, near_miss
from rag.embedding import Embedder, load_embedder
from rag.settings import Settings

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = (0.75, 0.80, 0.85, 0.88, 0.90, 0.92, 0.95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=Path, default=ROOT / "samples/eval/paraphrases.jsonl")
    parser.add_argument("--notes", type=Path, default=ROOT / "samples")
    parser.add_argument(
        "--show", action="store_true", help="list the pairs labelled different served at 0.85"
    )
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
    _workload_check(titles, model, args.show)


def _workload_check(titles: list[str], model: Embedder, show: bool) -> None:
    """Every ordered pair of the workload benchmark's questions the cache would serve, and
    those whose meaning labels differ."""
    from bench.workload import build_workload  # the labels of every question it asks

    workload = build_workload(seed=0)
    texts = sorted({question.text for question in workload.questions})
    vectors = model.embed(texts)
    similarity = vectors @ vectors.T
    words = [QuestionWords.of(text, titles=titles) for text in texts]
    groups = [workload.group_of(text) for text in texts]
    print()
    print(f"the workload benchmark's {len(texts)} distinct questions, every ordered pair:")
    print(f"{'threshold':>9}  {'served':>6}  {'labelled different':>18}")
    for threshold in THRESHOLDS:
        served = [
            (i, j)
            for i, j in zip(*np.nonzero(similarity >= threshold), strict=True)
            if i != j and near_miss(words[i], words[j]) is None
        ]
        different = [(i, j) for i, j in served if groups[i] != groups[j]]
        print(f"{threshold:>9.2f}  {len(served):>6}  {len(different):>18}")
        if show and threshold == 0.85:
            for i, j in different:
                print(f"             {texts[i]!r} <- {texts[j]!r} ({similarity[i, j]:.3f})")


def _part(count: int, whole: int) -> str:
    return f"{count} ({count / whole:.0%})"


if __name__ == "__main__":
    main()
