"""`bench.workload`: the replayed workload is deterministic, big enough, has every kind of
question, and labels every question string with one meaning that the pairs agree with."""

from __future__ import annotations

import json
from collections import Counter
from typing import get_args

import pytest

from bench.workload import (
    EVAL_DIR,
    MIN_GAP,
    NoteChange,
    QuestionKind,
    Workload,
    build_workload,
)
from rag.caches.answers import normalise_question


@pytest.fixture(scope="module")
def workload() -> Workload:
    return build_workload(seed=7)


def test_same_seed_same_workload_other_seed_another(workload: Workload) -> None:
    again = build_workload(seed=7)
    assert again.steps == workload.steps
    assert again.labels == workload.labels
    other = build_workload(seed=8)
    assert other.steps != workload.steps


def test_at_least_2000_questions_of_every_kind(workload: Workload) -> None:
    kinds = workload.kinds()
    assert len(workload.questions) >= 2000
    assert set(kinds) == set(get_args(QuestionKind)), kinds
    assert kinds["near_miss"] >= 100
    # Repeats dominate, as they do when a few topics are hot.
    assert kinds["repeat"] + kinds["recased"] > len(workload.questions) / 3


def test_topics_are_hot_and_cold(workload: Workload) -> None:
    topics = Counter(q.topic for q in workload.questions if q.topic is not None)
    counts = sorted(topics.values(), reverse=True)
    assert counts[0] >= 4 * counts[len(counts) // 2]


def test_notes_are_edited_and_deleted_with_real_changes(workload: Workload) -> None:
    changes = workload.changes
    assert {c.kind for c in changes} == {"edit", "delete"}
    current = {note.id: note.text for note in workload.notes}
    for change in changes:
        assert change.document_id in current, f"{change.document_id} changed after its delete"
        if change.text is None:
            del current[change.document_id]
        else:
            assert change.text != current[change.document_id]
            current[change.document_id] = change.text
    positions = [n for n, step in enumerate(workload.steps) if isinstance(step, NoteChange)]
    assert positions[0] > MIN_GAP and positions[-1] < len(workload.steps) - MIN_GAP


def test_every_question_has_one_label(workload: Workload) -> None:
    seen: dict[str, str] = {}
    for question in workload.questions:
        key = normalise_question(question.text)
        assert seen.setdefault(key, question.group) == question.group, question.text
        assert workload.group_of(question.text) == question.group


def test_labels_agree_with_the_labelled_pairs(workload: Workload) -> None:
    pairs = [json.loads(line) for line in (EVAL_DIR / "paraphrases.jsonl").open()]
    for pair in pairs:
        a, b = workload.group_of(pair["a"]), workload.group_of(pair["b"])
        assert a is not None and b is not None
        assert (a == b) is pair["same"], pair
    questions = [json.loads(line) for line in (EVAL_DIR / "questions.jsonl").open()]
    groups = Counter(workload.group_of(q["question"]) for q in questions)
    unanswerable = {workload.group_of(q["question"]) for q in questions if q.get("unanswerable")}
    assert all(groups[group] == 1 for group in unanswerable)


def test_near_misses_come_after_their_partner_and_never_share_its_label(
    workload: Workload,
) -> None:
    first_asked: dict[str, int] = {}
    near_misses = 0
    for number, question in enumerate(workload.questions):
        first_asked.setdefault(normalise_question(question.text), number)
        if question.kind != "near_miss":
            continue
        near_misses += 1
        assert question.near_miss_of is not None
        partner = first_asked[normalise_question(question.near_miss_of)]
        assert number - partner >= MIN_GAP
        assert workload.group_of(question.near_miss_of) != question.group
    assert near_misses >= 100


def test_reused_questions_keep_their_meaning(workload: Workload) -> None:
    asked: set[str] = set()
    originals: dict[str, set[str]] = {}
    for question in workload.questions:
        if question.kind in ("first", "near_miss"):
            assert question.group not in asked, "a meaning is asked for the first time once"
        elif question.kind in ("repeat", "recased", "paraphrase"):
            assert question.group in asked, question
        if question.kind in ("first", "near_miss", "paraphrase"):
            originals.setdefault(question.group, set()).add(question.text)
        if question.kind == "recased":
            assert question.text not in originals[question.group]
        asked.add(question.group)
