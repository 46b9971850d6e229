"""The offline extractive writer over real passages, chunked by the real chunker."""

from __future__ import annotations

import re

import pytest

from rag.chunking import chunk_text
from rag.tokens import load_token_counter
from rag.types import Passage, Usage
from rag.writers.extractive import NOTHING_FOUND, ExtractiveWriter

LINE = re.compile(r"- (?P<sentence>.+) \[(?P<number>\d+)\]")


def _passage(number: int, text: str, score: float, title: str = "Sermon notes") -> Passage:
    return Passage(number, f"chunk-{number}", f"doc-{number}", title, text, score)


PASSAGES = [
    _passage(
        1,
        "# Hope\nHope is the anchor of the soul, firm and secure. We hold on when storms come."
        "\nSee Heb. 6:19 for the anchor image.",
        0.71,
    ),
    _passage(
        2,
        "## The prodigal son\n- The father ran to meet his son while he was still far off.\n"
        "- Dr. Keller says the elder brother was lost too, only in a different way.\n\n"
        "The   feast celebrates the  return of the lost.",
        0.64,
    ),
    _passage(
        3,
        "Grace is unmerited favour. Paul teaches in Eph. 2:8 that we are saved by grace "
        "through faith, and John 3:16 shows the love behind it.",
        0.52,
    ),
]


def _lines(text: str) -> list[tuple[str, int]]:
    head, *rest = text.split("\n")
    assert head == "From your notes:"
    matches = [LINE.fullmatch(line) for line in rest]
    assert all(matches), text
    return [(m["sentence"], int(m["number"])) for m in matches if m]


def _assert_verbatim(text: str, passages: list[Passage]) -> None:
    by_number = {p.number: " ".join(p.text.split()) for p in passages}
    for sentence, number in _lines(text):
        assert sentence in by_number[number], (sentence, number)
        assert not sentence.startswith(("-", "#", "*"))


def test_answer_cites_the_passage_that_holds_it() -> None:
    draft = ExtractiveWriter().write("Why did the father run to his son?", PASSAGES)
    lines = _lines(draft.text)
    assert lines[0] == ("The father ran to meet his son while he was still far off.", 2)
    assert {number for _, number in lines} == {2}
    _assert_verbatim(draft.text, PASSAGES)
    assert draft.model == "extractive"
    assert draft.usage == Usage()


def test_best_passage_comes_first_even_when_ranked_lower() -> None:
    draft = ExtractiveWriter().write("What did Paul teach about being saved by grace?", PASSAGES)
    # Passage [3] holds the answer; its sentences come first, in the order they were written.
    assert _lines(draft.text)[:2] == [
        ("Grace is unmerited favour.", 3),
        (
            "Paul teaches in Eph. 2:8 that we are saved by grace through faith, "
            "and John 3:16 shows the love behind it.",
            3,
        ),
    ]
    _assert_verbatim(draft.text, PASSAGES)


def test_markers_are_stripped_and_abbreviations_kept() -> None:
    draft = ExtractiveWriter().write("What did Keller say about the elder brother?", PASSAGES)
    assert _lines(draft.text)[0] == (
        "Dr. Keller says the elder brother was lost too, only in a different way.",
        2,
    )


def test_whitespace_is_normalised_but_words_are_not_changed() -> None:
    draft = ExtractiveWriter().write("What does the feast celebrate?", PASSAGES)
    assert ("The feast celebrates the return of the lost.", 2) in _lines(draft.text)


def test_no_shared_word_falls_back_to_the_top_passage() -> None:
    draft = ExtractiveWriter().write("Any pizza recipes?", PASSAGES)
    assert _lines(draft.text) == [
        ("Hope is the anchor of the soul, firm and secure.", 1),
        ("We hold on when storms come.", 1),
    ]
    # A question of stopwords only shares no content word either.
    assert ExtractiveWriter().write("What is it about?", PASSAGES).text == draft.text


def test_no_passages_says_so() -> None:
    draft = ExtractiveWriter().write("What is grace?", [])
    assert draft.text == NOTHING_FOUND
    assert draft.usage == Usage()


def test_repeated_sentences_from_overlapping_chunks_appear_once() -> None:
    counter = load_token_counter("all-MiniLM-L6-v2")
    note = (
        "The vine bears fruit in its season. Abide in the vine and you will bear fruit. "
        "Branches cut off wither and dry. The gardener prunes every branch that bears fruit. "
        "Pruning hurts but it brings more fruit. Remain in my love."
    )
    chunks = chunk_text(note, counter=counter, max_tokens=24, overlap_tokens=12)
    assert len(chunks) >= 3
    passages = [_passage(n + 1, c.text, 0.6 - n / 100) for n, c in enumerate(chunks)]
    draft = ExtractiveWriter(max_sentences=4).write("How does the vine bear fruit?", passages)
    sentences = [sentence for sentence, _ in _lines(draft.text)]
    assert len(sentences) == len(set(sentences))
    assert "Abide in the vine and you will bear fruit." in sentences
    _assert_verbatim(draft.text, passages)


def test_max_sentences_is_respected() -> None:
    text = " ".join(f"Grace number {n} is a gift of {w}." for n, w in enumerate("abcdefgh"))
    passages = [_passage(1, text, 0.5)]
    for limit in (1, 2, 3):
        assert (
            len(_lines(ExtractiveWriter(max_sentences=limit).write("grace", passages).text))
            <= limit
        )
    with pytest.raises(ValueError, match="at least 1"):
        ExtractiveWriter(max_sentences=0)


def test_citations_use_the_passage_numbers() -> None:
    renumbered = [_passage(p.number + 6, p.text, p.score) for p in PASSAGES]
    draft = ExtractiveWriter().write("Why did the father run to his son?", renumbered)
    assert _lines(draft.text)[0][1] == 8
    _assert_verbatim(draft.text, renumbered)


@pytest.mark.parametrize(
    "question",
    ["What is hope?", "Why did the father run?", "grace through faith", "pizza", "John 3:16"],
)
def test_every_line_is_verbatim_and_output_is_deterministic(question: str) -> None:
    writer = ExtractiveWriter()
    draft = writer.write(question, PASSAGES)
    _assert_verbatim(draft.text, PASSAGES)
    assert writer.write(question, PASSAGES) == draft
    assert ExtractiveWriter().write(question, list(PASSAGES)) == draft


def test_weak_matches_do_not_pad_the_answer() -> None:
    passages = [
        _passage(1, "Hope is the anchor of the soul, firm and secure.", 0.6),
        _passage(2, "The soul longs for rest. My soul waits. The soul thirsts for God.", 0.5),
    ]
    draft = ExtractiveWriter().write("Which anchor holds the soul?", passages)
    assert _lines(draft.text) == [("Hope is the anchor of the soul, firm and secure.", 1)]
