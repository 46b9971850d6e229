"""`bench.replay`'s judge: a cached answer whose source changed before its question was
asked is stale, and a semantic hit first given for a question of another meaning is wrong."""

from __future__ import annotations

from typing import Any

import pytest

from bench.replay import Applied, Replay, Reply, judge_cached_answers
from bench.workload import NoteChange, Workload, WorkloadQuestion, build_workload

CHANGED_AT = 1_000.0


@pytest.fixture(scope="module")
def workload() -> Workload:
    return build_workload(seed=3, questions=300)


def _edit(workload: Workload) -> tuple[NoteChange, str, str]:
    """The first edit, a line of its note it changed, and one it left alone."""
    edit = next(c for c in workload.changes if c.text is not None)
    assert edit.text is not None
    before = next(n.text for n in workload.notes if n.id == edit.document_id).split("\n")
    after = set(edit.text.split("\n"))
    changed = next(line for line in before if line.strip() and line not in after)
    kept = next(line for line in before if len(line.split()) > 5 and line in after)
    return edit, changed, kept


def _reply(
    question: WorkloadQuestion, asked_at: float, cached: str, sources: list[dict[str, Any]]
) -> Reply:
    job: dict[str, Any] = {"status": "succeeded", "cached": cached, "sources": sources}
    return Reply(0, question, asked_at, 200, job, 1.0)


def test_a_hit_citing_changed_text_is_stale_only_after_the_change(workload: Workload) -> None:
    edit, changed, kept = _edit(workload)
    question = workload.questions[0]
    old = [{"document_id": edit.document_id, "text": "  ".join(changed.split())}]
    unchanged = [{"document_id": edit.document_id, "text": kept}]
    replay = Replay(
        "use",
        replies=[
            _reply(question, CHANGED_AT - 1, "exact", old),
            _reply(question, CHANGED_AT + 1, "exact", old),
            _reply(question, CHANGED_AT + 1, "exact", unchanged),
        ],
        applied=[Applied(edit, CHANGED_AT)],
    )
    assert judge_cached_answers(workload, replay).stale == {"exact": 1}


def test_a_hit_citing_a_deleted_note_is_stale(workload: Workload) -> None:
    delete = next(c for c in workload.changes if c.text is None)
    note = next(n for n in workload.notes if n.id == delete.document_id)
    sources = [{"document_id": note.id, "text": note.text.split("\n")[0]}]
    replay = Replay(
        "use",
        replies=[_reply(workload.questions[0], CHANGED_AT + 1, "semantic", sources)],
        applied=[Applied(delete, CHANGED_AT)],
    )
    replay.replies[0].job["semantic"] = {"question": workload.questions[0].text}
    assert judge_cached_answers(workload, replay).stale == {"semantic": 1}


def test_a_semantic_hit_is_judged_by_its_original_questions_meaning(
    workload: Workload,
) -> None:
    near_miss = next(q for q in workload.questions if q.kind == "near_miss")
    assert near_miss.near_miss_of is not None
    recased = next(q for q in workload.questions if q.kind == "recased")
    original = next(
        q for q in workload.questions if q.group == recased.group and q.kind != "recased"
    )
    asked = [
        (near_miss, near_miss.near_miss_of),  # wrong: the partner means something else
        (recased, original.text),  # right: the same meaning
        (recased, "A question nobody in the workload asked?"),
    ]
    replay = Replay("use")
    for question, served_for in asked:
        reply = _reply(question, CHANGED_AT, "semantic", [])
        reply.job["semantic"] = {"question": served_for, "similarity": 0.97}
        replay.replies.append(reply)
    judged = judge_cached_answers(workload, replay)
    assert [r.question for r in judged.other_meaning] == [near_miss]
    assert len(judged.unlabelled) == 1
    assert not judged.stale
