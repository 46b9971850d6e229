"""`scribes eval`: reading a labelled set, scoring jobs, and failing plainly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from scribes.cli import SAMPLES_DIR, main
from scribes.client import Retries, Scribes, ScribesError
from scribes.evaluate import (
    EvalReport,
    LabelledQuestion,
    LabelledSetError,
    QuestionResult,
    format_report,
    read_labelled_set,
    result_of_job,
    run_labelled_set,
)
from scribes.localredis import free_port
from scribes.notefiles import collect_note_files, read_note

LABELLED_SET = SAMPLES_DIR / "eval" / "questions.jsonl"


def _write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reads_answerable_and_unanswerable_questions(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '{"question": "Why did he run?", "expected": ["001-the-prodigal-son"]}',
        "",
        '{"question": "Capital of Peru?", "unanswerable": true}',
    )
    assert read_labelled_set(path) == [
        LabelledQuestion(1, "Why did he run?", ("001-the-prodigal-son",)),
        LabelledQuestion(3, "Capital of Peru?"),
    ]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('{"question": "q", "expected": ["a"]', "not JSON"),
        ('["q", "a"]', "not a JSON object"),
        ('{"question": "", "expected": ["a"]}', '"question" must be a non-empty string'),
        ('{"question": "q"}', '"expected" must be a non-empty list'),
        ('{"question": "q", "expected": []}', '"expected" must be a non-empty list'),
        ('{"question": "q", "expected": "a"}', '"expected" must be a non-empty list'),
        ('{"question": "q", "expected": ["a", 3]}', '"expected" must be a non-empty list'),
        ('{"question": "q", "unanswerable": "yes"}', '"unanswerable" must be true or false'),
        ('{"question": "q", "unanswerable": true, "expected": ["a"]}', 'has no "expected"'),
        ('{"question": "q", "expect": ["a"]}', "unknown field 'expect'"),
    ],
)
def test_a_malformed_line_is_named_with_its_number(tmp_path: Path, line: str, why: str) -> None:
    path = _write(tmp_path, '{"question": "fine", "unanswerable": true}', line)
    with pytest.raises(LabelledSetError) as caught:
        read_labelled_set(path)
    assert str(caught.value).startswith(f"{path}:2: ") and why in str(caught.value)


def test_an_empty_or_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LabelledSetError, match="no questions"):
        read_labelled_set(_write(tmp_path, "", "  "))
    with pytest.raises(LabelledSetError, match="no such file"):
        read_labelled_set(tmp_path / "absent.jsonl")


def _job(retrieved: list[str], *, no_context: bool = False, **extra: Any) -> dict[str, Any]:
    quality = {"retrieved_documents": retrieved, "passages_used": len(retrieved)}
    return {"id": "j", "status": "succeeded", "no_context": no_context, "quality": quality, **extra}


def _result(expected: tuple[str, ...], job: dict[str, Any]) -> QuestionResult:
    return result_of_job(LabelledQuestion(1, "q", expected), job)


def test_rank_is_the_first_passage_from_an_expected_document() -> None:
    assert _result(("b", "c"), _job(["a", "c", "b"])).rank == 2
    assert _result(("b",), _job(["b", "b"])).rank == 1
    assert _result(("z",), _job(["a", "b"])).rank is None
    assert _result(("z",), _job([], no_context=True)).rank is None


def test_figures_over_a_set() -> None:
    results = [
        _result(("a",), _job(["a", "x", "y"])),  # rank 1
        _result(("b",), _job(["x", "y", "b"])),  # rank 3
        _result(("c",), _job(["x", "y", "z"])),  # miss
        _result(("d",), _job([], no_context=True)),  # miss, and a false no-context
        _result((), _job([], no_context=True)),  # unanswerable, refused
        _result((), _job(["x"])),  # unanswerable, answered anyway
        _result(("e",), {"id": "f", "status": "failed", "error": {"message": "boom"}}),
    ]
    report = EvalReport(top_k=3, results=tuple(results))
    assert (len(report.answerable), len(report.unanswerable), len(report.unmeasured)) == (4, 2, 1)
    assert report.hit_at_1 == 0.25 and report.hit_at_k == 0.5
    assert report.mrr == round((1 + 1 / 3) / 4, 4)
    assert report.no_context_rate == 0.5 and report.false_no_context_rate == 0.25
    figures = report.to_json()
    assert figures["hit_at_k"] == 0.5 and figures["unmeasured"] == 1
    assert [r["rank"] for r in figures["results"]] == [1, 3, None, None, None, None, None]
    assert figures["results"][-1]["error"] == "job failed: boom"

    table = format_report(report, misses=True)
    assert "hit@1             0.250  (1/4)" in table
    assert "hit@3             0.500  (2/4)" in table
    assert "MRR               0.333" in table
    assert "no-context rate   0.500  (1/2)" in table
    assert "unmeasured: line 1: job failed: boom" in table
    assert table.count("miss: ") == 3 and table.count("answered: ") == 1


def test_no_rates_without_questions_of_that_kind() -> None:
    report = EvalReport(top_k=5, results=(_result((), _job([], no_context=True)),))
    assert report.hit_at_1 is None and report.mrr is None and report.no_context_rate == 1.0
    assert "hit@1             —" in format_report(report)


def test_a_job_without_quality_is_not_measured() -> None:
    result = _result(("a",), {"id": "j", "status": "succeeded", "quality": None})
    assert result.error is not None and "quality" in result.error


def test_an_unreachable_api_stops_the_run() -> None:
    port = free_port()
    with (
        Scribes(f"http://127.0.0.1:{port}", api_key="", retries=Retries(attempts=1)) as client,
        pytest.raises(ScribesError) as caught,
    ):
        run_labelled_set(client, [LabelledQuestion(1, "q", ("a",))] * 6, top_k=3)
    assert caught.value.code == "api_unreachable"


def test_the_command_fails_in_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = _write(tmp_path, '{"question": "q", "expected": ["a"]}', "{oops")
    result = runner.invoke(main, ["eval", str(bad)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"scribes: {bad}:2: not JSON (Expecting property name enclosed in double quotes)"
    ]

    good = _write(tmp_path, '{"question": "q", "expected": ["a"]}')
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(main, ["eval", str(good), "--api-url", url])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"scribes: Scribes API at {url} is not reachable")


def test_the_shipped_set_names_only_sample_notes() -> None:
    questions = read_labelled_set(LABELLED_SET)
    notes = {read_note(root, file).document_id for root, file in collect_note_files([SAMPLES_DIR])}
    unanswerable = [q for q in questions if q.unanswerable]
    assert len(questions) >= 60 and len(unanswerable) >= 10
    assert {doc for q in questions for doc in q.expected} <= notes
    assert len({q.question.casefold() for q in questions}) == len(questions)
