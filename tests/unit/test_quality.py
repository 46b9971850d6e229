"""The quality of an answer: scores, citations, every-sentence-cited, and its metrics."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from prometheus_client import REGISTRY

from rag.answering import compose_answer, no_context_answer
from rag.quality import NO_CONTEXT_QUALITY, Quality, measure_quality
from rag.telemetry.metrics import observe_answer_quality
from rag.types import Answer, Draft, Passage
from rag.writers.extractive import ExtractiveWriter
from rag.writers.postprocess import AnswerSentence, answer_sentences

PASSAGES = [
    Passage(number=n, chunk_id=f"c{n}", document_id=doc, title="t", text=text, score=score)
    for n, doc, score, text in (
        (1, "manna", 0.61, "Manna fell every morning. It spoiled if kept overnight."),
        (2, "jonah", 0.48, "The plant that shaded Jonah withered in a day."),
        (3, "manna", 0.4, "On the sixth day they gathered twice as much."),
    )
]


class _Replying:
    """A writer that says exactly `text`, so post-processing and quality see a known draft."""

    name = "reply"

    def __init__(self, text: str) -> None:
        self.text = text

    def write(self, question: str, passages: Sequence[Passage]) -> Draft:
        return Draft(self.text, "claude-sonnet-4-6")


def test_sentences_keep_marks_that_follow_the_full_stop() -> None:
    assert answer_sentences("Manna fell [1]. It spoiled. [1][3] Jonah sulked.") == [
        AnswerSentence("Manna fell.", (1,)),
        AnswerSentence("It spoiled.", (1, 3)),
        AnswerSentence("Jonah sulked.", ()),
    ]


def test_abbreviations_and_verse_references_end_no_sentence() -> None:
    text = "From your notes:\n- Dr. Okafor read 1 Pet. 2:9 aloud [2]\n- St. Paul agreed [1]"
    assert [s.cites for s in answer_sentences(text)] == [(), (2,), (1,)]


def test_a_line_of_marks_alone_belongs_to_the_sentence_above() -> None:
    assert answer_sentences("Manna fell every morning.\n[1][2]") == [
        AnswerSentence("Manna fell every morning.", (1, 2))
    ]


def test_figures_of_a_fully_cited_answer() -> None:
    quality = measure_quality(PASSAGES, "From your notes:\n- Manna fell [1]\n- Twice as much [3]")
    assert quality == Quality(
        top_score=0.61,
        mean_score=0.4967,
        passages_used=3,
        passages_cited=2,
        all_sentences_cited=True,
        retrieved_documents=("manna", "jonah", "manna"),
    )


@pytest.mark.parametrize(
    ("text", "all_cited"),
    [
        ("Yes [1].", True),  # a short answer that cites passes
        ("Yes.", False),  # one that does not, fails
        ("Manna fell [1]. It spoiled overnight.", False),  # one uncited sentence is enough
        ("From your notes:", False),  # a lead-in alone states nothing, so cites nothing
        ("From your notes:\n-\n- Manna fell [1]", True),  # lead-ins and empty bullets exempt
        ("From your notes:\n- Three ways manna fell: [1]", True),  # a lead-in may cite too
        ("Manna fell [9].", False),  # a number no passage has is no citation
    ],
)
def test_every_sentence_cites(text: str, all_cited: bool) -> None:
    assert measure_quality(PASSAGES, text).all_sentences_cited is all_cited


def test_retrieved_documents_follow_the_rank_not_the_order_given() -> None:
    shuffled = [PASSAGES[2], PASSAGES[0], PASSAGES[1]]
    assert measure_quality(shuffled, "x [1]").retrieved_documents == ("manna", "jonah", "manna")


def test_no_passages_is_the_no_context_quality() -> None:
    assert measure_quality([], "anything") == NO_CONTEXT_QUALITY
    assert NO_CONTEXT_QUALITY.passages_used == 0 and NO_CONTEXT_QUALITY.top_score is None
    assert no_context_answer().quality == NO_CONTEXT_QUALITY


def test_compose_answer_measures_the_finished_text() -> None:
    answer = compose_answer("When did the manna fall?", PASSAGES, ExtractiveWriter())
    assert answer.quality is not None
    assert answer.quality == measure_quality(PASSAGES, answer.text)
    assert answer.quality.passages_used == 3 and answer.quality.top_score == 0.61
    assert answer.quality.all_sentences_cited
    assert answer.quality.passages_cited == len(answer.sources)

    # Citations the post-processor drops (no passage [7]) are not counted as cited.
    drafted = compose_answer("q", PASSAGES, _Replying("Manna fell [7]. It spoiled [1]."))
    assert drafted.text == "Manna fell. It spoiled [1]."
    assert drafted.quality is not None
    assert drafted.quality.passages_cited == 1 and not drafted.quality.all_sentences_cited


def test_quality_survives_the_json_of_the_answer_cache() -> None:
    answer = compose_answer("When did the manna fall?", PASSAGES, ExtractiveWriter())
    again = Answer.from_json(json.loads(json.dumps(answer.to_json())))
    assert again == answer and again.quality == answer.quality
    assert Answer.from_json(json.loads(json.dumps(no_context_answer().to_json()))).quality == (
        NO_CONTEXT_QUALITY
    )
    assert Answer.from_json({"answer": "old"}).quality is None


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_observed_metrics_follow_the_quality() -> None:
    before = {
        "no_context": _sample("scribes_answers_no_context_total"),
        "uncited": _sample("scribes_answers_uncited_total"),
        "scores": _sample("scribes_retrieval_top_score_count"),
        "score_sum": _sample("scribes_retrieval_top_score_sum"),
        "citations": _sample("scribes_answer_citations_count"),
        "two_or_fewer": _sample("scribes_answer_citations_bucket", {"le": "2.0"}),
    }
    cited = compose_answer("q", PASSAGES, _Replying("Manna fell [1]. Jonah sulked [2]."))
    uncited = compose_answer("q", PASSAGES, _Replying("Manna fell [1]. Jonah sulked."))
    for answer in (cited, uncited, no_context_answer()):
        observe_answer_quality(answer)

    assert _sample("scribes_answers_no_context_total") == before["no_context"] + 1
    assert _sample("scribes_answers_uncited_total") == before["uncited"] + 1
    # The no-context answer has no passages to score and stays out of both histograms.
    assert _sample("scribes_retrieval_top_score_count") == before["scores"] + 2
    assert _sample("scribes_retrieval_top_score_sum") == pytest.approx(before["score_sum"] + 1.22)
    assert _sample("scribes_answer_citations_count") == before["citations"] + 2
    assert _sample("scribes_answer_citations_bucket", {"le": "2.0"}) == before["two_or_fewer"] + 2
