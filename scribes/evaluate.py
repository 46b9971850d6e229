"""`scribes eval`: a labelled question set asked over the API, scored for retrieval.

A labelled set is JSON Lines, one question per line:

    {"question": "Why did the father run?", "expected": ["001-the-prodigal-son"]}
    {"question": "What is the capital of Peru?", "unanswerable": true}

Retrieval is judged on what the job retrieved (`quality.retrieved_documents`, best passage
first), not on what the writer chose to cite. An answerable question's rank is the place of
the first passage that comes from one of its expected documents:

- hit@1: the share of answerable questions whose best passage is from an expected document;
- hit@k: the share with such a passage anywhere among the k retrieved;
- MRR: the mean of 1/rank, 0 for a miss;
- no-context rate: the share of unanswerable questions answered "not in your notes";
- false no-context rate: the share of answerable questions answered so (each is also a miss).

A job that failed, or that carries no quality, is not measured: it is reported and the
command exits 1, as its figures would be incomplete.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scribes.client import Scribes, ScribesError

__all__ = [
    "EvalReport",
    "LabelledQuestion",
    "LabelledSetError",
    "QuestionResult",
    "format_report",
    "read_labelled_set",
    "result_of_job",
    "run_labelled_set",
]

_KEYS = frozenset({"question", "expected", "unanswerable"})
# Failures that no other question would escape: stop the run rather than report each one.
_FATAL_STATUSES = frozenset({401, 403})


class LabelledSetError(ValueError):
    """A labelled set that cannot be read; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class LabelledQuestion:
    line: int
    question: str
    expected: tuple[str, ...] = ()

    @property
    def unanswerable(self) -> bool:
        return not self.expected


@dataclass(frozen=True, slots=True)
class QuestionResult:
    """What the job for one labelled question showed; `error` set when it measured nothing."""

    labelled: LabelledQuestion
    job_id: str | None
    no_context: bool = False
    retrieved: tuple[str, ...] = ()
    cached: str | None = None
    error: str | None = None

    @property
    def rank(self) -> int | None:
        """1-based place of the first retrieved passage from an expected document."""
        for place, document_id in enumerate(self.retrieved, start=1):
            if document_id in self.labelled.expected:
                return place
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "line": self.labelled.line,
            "question": self.labelled.question,
            "expected": list(self.labelled.expected),
            "unanswerable": self.labelled.unanswerable,
            "job_id": self.job_id,
            "no_context": self.no_context,
            "retrieved": list(self.retrieved),
            "rank": None if self.labelled.unanswerable else self.rank,
            "cached": self.cached,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class EvalReport:
    top_k: int
    results: tuple[QuestionResult, ...]

    @property
    def measured(self) -> list[QuestionResult]:
        return [r for r in self.results if r.error is None]

    @property
    def unmeasured(self) -> list[QuestionResult]:
        return [r for r in self.results if r.error is not None]

    @property
    def answerable(self) -> list[QuestionResult]:
        return [r for r in self.measured if not r.labelled.unanswerable]

    @property
    def unanswerable(self) -> list[QuestionResult]:
        return [r for r in self.measured if r.labelled.unanswerable]

    @property
    def hits_at_1(self) -> int:
        return sum(1 for r in self.answerable if r.rank == 1)

    @property
    def hits_at_k(self) -> int:
        return sum(1 for r in self.answerable if r.rank is not None and r.rank <= self.top_k)

    @property
    def hit_at_1(self) -> float | None:
        return _share(self.hits_at_1, len(self.answerable))

    @property
    def hit_at_k(self) -> float | None:
        return _share(self.hits_at_k, len(self.answerable))

    @property
    def mrr(self) -> float | None:
        ranks = [r.rank for r in self.answerable]
        if not ranks:
            return None
        return round(sum(1 / rank for rank in ranks if rank is not None) / len(ranks), 4)

    @property
    def no_context_count(self) -> int:
        return sum(1 for r in self.unanswerable if r.no_context)

    @property
    def no_context_rate(self) -> float | None:
        return _share(self.no_context_count, len(self.unanswerable))

    @property
    def false_no_context_count(self) -> int:
        return sum(1 for r in self.answerable if r.no_context)

    @property
    def false_no_context_rate(self) -> float | None:
        return _share(self.false_no_context_count, len(self.answerable))

    def to_json(self) -> dict[str, Any]:
        return {
            "questions": len(self.results),
            "answerable": len(self.answerable),
            "unanswerable": len(self.unanswerable),
            "unmeasured": len(self.unmeasured),
            "top_k": self.top_k,
            "hit_at_1": self.hit_at_1,
            "hit_at_k": self.hit_at_k,
            "mrr": self.mrr,
            "no_context_rate": self.no_context_rate,
            "false_no_context_rate": self.false_no_context_rate,
            "results": [r.to_json() for r in self.results],
        }


def _share(count: int, total: int) -> float | None:
    return round(count / total, 4) if total else None


def read_labelled_set(path: Path) -> list[LabelledQuestion]:
    """The questions of a JSON Lines file; blank lines are skipped, anything else is checked."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise LabelledSetError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelledSetError(f"{path}: cannot be read ({exc.__class__.__name__})") from exc
    questions = [
        _labelled(path, number, line) for number, line in enumerate(lines, 1) if line.strip()
    ]
    if not questions:
        raise LabelledSetError(f"{path}: no questions in it")
    return questions


def _labelled(path: Path, number: int, line: str) -> LabelledQuestion:
    def bad(why: str) -> LabelledSetError:
        return LabelledSetError(f"{path}:{number}: {why}")

    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise bad(f"not JSON ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise bad("not a JSON object")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise bad(f"unknown field {unknown[0]!r}; use question, expected, unanswerable")
    question = data.get("question")
    if not isinstance(question, str) or not question.strip():
        raise bad('"question" must be a non-empty string')
    unanswerable = data.get("unanswerable", False)
    if not isinstance(unanswerable, bool):
        raise bad('"unanswerable" must be true or false')
    expected = data.get("expected")
    if unanswerable:
        if expected:
            raise bad('an unanswerable question has no "expected" documents')
        return LabelledQuestion(number, question)
    if (
        not isinstance(expected, list)
        or not expected
        or not all(isinstance(d, str) and d.strip() for d in expected)
    ):
        raise bad('"expected" must be a non-empty list of document ids, or set "unanswerable"')
    return LabelledQuestion(number, question, tuple(expected))


def result_of_job(labelled: LabelledQuestion, job: Mapping[str, Any]) -> QuestionResult:
    """What a finished job (as the API shows it) says about one labelled question."""
    job_id = str(job.get("id") or "") or None
    if job.get("status") != "succeeded":
        error = job.get("error") or {}
        message = error.get("message", "the job failed") if isinstance(error, dict) else error
        return QuestionResult(labelled, job_id, error=f"job failed: {message}")
    quality = job.get("quality")
    if not isinstance(quality, dict) or "retrieved_documents" not in quality:
        return QuestionResult(
            labelled,
            job_id,
            error="the job shows no quality.retrieved_documents (an API older than this command,"
            " or an answer cached before it recorded quality)",
        )
    return QuestionResult(
        labelled,
        job_id,
        no_context=bool(job.get("no_context")),
        retrieved=tuple(str(d) for d in quality["retrieved_documents"]),
        cached=job.get("cached"),
    )


def run_labelled_set(
    client: Scribes,
    questions: Sequence[LabelledQuestion],
    *,
    top_k: int,
    concurrency: int = 4,
    timeout_s: float = 120,
) -> EvalReport:
    """Ask every question, `concurrency` at a time, wait for each job, and score them.

    An unreachable API or a refused key stops the run (ScribesError); any other failure is
    that question's error.
    """

    def one(labelled: LabelledQuestion) -> QuestionResult:
        try:
            job = client.ask(labelled.question, top_k=top_k, timeout_s=timeout_s).raw
        except ScribesError as exc:
            if exc.code == "api_unreachable" or exc.status in _FATAL_STATUSES:
                raise
            return QuestionResult(labelled, None, error=exc.message)
        return result_of_job(labelled, job)

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="eval") as pool:
        futures = [pool.submit(one, labelled) for labelled in questions]
        try:
            for future in as_completed(futures):
                future.result()
        except ScribesError:
            pool.shutdown(cancel_futures=True)
            raise
    return EvalReport(top_k=top_k, results=tuple(future.result() for future in futures))


def format_report(report: EvalReport, *, misses: bool = False) -> str:
    """A small table of the figures, then each unmeasured question, then misses if asked."""

    def rate(value: float | None, count: int, total: int) -> str:
        return "—" if value is None else f"{value:.3f}  ({count}/{total})"

    answerable = len(report.answerable)
    unanswerable = len(report.unanswerable)
    mrr = "—" if report.mrr is None else f"{report.mrr:.3f}"
    rows = [
        (
            "questions",
            f"{len(report.results)} ({answerable} answerable, {unanswerable} "
            f"unanswerable, {len(report.unmeasured)} unmeasured)",
        ),
        ("top_k", str(report.top_k)),
        ("hit@1", rate(report.hit_at_1, report.hits_at_1, answerable)),
        (f"hit@{report.top_k}", rate(report.hit_at_k, report.hits_at_k, answerable)),
        ("MRR", mrr),
        ("no-context rate", rate(report.no_context_rate, report.no_context_count, unanswerable)),
        (
            "false no-context",
            rate(report.false_no_context_rate, report.false_no_context_count, answerable),
        ),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    for result in report.unmeasured:
        lines.append(f"unmeasured: line {result.labelled.line}: {result.error}")
    if misses:
        for result in report.answerable:
            if result.rank != 1:
                got = ", ".join(result.retrieved[:3]) or "no context"
                lines.append(
                    f"miss: line {result.labelled.line} (rank {result.rank or '-'}): "
                    f"{result.labelled.question}  expected {', '.join(result.labelled.expected)}"
                    f"; got {got}"
                )
        for result in report.unanswerable:
            if not result.no_context:
                lines.append(
                    f"answered: line {result.labelled.line}: {result.labelled.question}"
                    f"; got {', '.join(result.retrieved[:3])}"
                )
    return "\n".join(lines)
