from __future__ import annotations

import itertools
import statistics
from datetime import date
from pathlib import Path

import pytest

from bench.corpus import main, synthetic_notes, synthetic_questions, write_corpus

_QUESTION_PHRASING = {
    "what", "which", "when", "were", "does", "should", "who", "was", "there", "can", "you",
    "summarize", "my", "notes", "from", "did", "say", "about", "sermon", "main", "points",
    "hear", "illustration", "use", "talk", "pray", "practices", "suggested", "preached",
    "series", "teach", "quote", "story", "questions", "asked", "think", "after", "speakers",
    "talked", "the", "and", "for", "how", "any", "we", "in", "on", "of", "a", "an", "to", "i",
}  # fmt: skip


def _words(text: str) -> int:
    return len(text.split())


def _field(text: str, name: str) -> str:
    prefix = f"{name}: "
    return next(line[len(prefix) :] for line in text.splitlines() if line.startswith(prefix))


def test_same_seed_gives_the_same_notes_and_questions() -> None:
    assert list(synthetic_notes(40, seed=3)) == list(synthetic_notes(40, seed=3))
    assert synthetic_questions(40, seed=3) == synthetic_questions(40, seed=3)


def test_different_seeds_give_different_notes_and_questions() -> None:
    first = [note.text for note in synthetic_notes(40, seed=1)]
    second = [note.text for note in synthetic_notes(40, seed=2)]
    assert not set(first) & set(second)
    assert synthetic_questions(40, seed=1) != synthetic_questions(40, seed=2)


def test_a_smaller_corpus_is_a_prefix_of_a_larger_one() -> None:
    assert list(synthetic_notes(10, seed=5)) == list(synthetic_notes(30, seed=5))[:10]


@pytest.mark.parametrize("count", [0, 1, 137])
def test_counts(count: int) -> None:
    assert len(list(synthetic_notes(count))) == count
    assert len(synthetic_questions(count)) == count


def test_word_counts_stay_in_the_default_range_and_use_it() -> None:
    counts = [_words(note.text) for note in synthetic_notes(500, seed=11)]
    assert all(150 <= n <= 600 for n in counts), (min(counts), max(counts))
    assert min(counts) < 200 and max(counts) > 550
    assert 300 < statistics.mean(counts) < 450


@pytest.mark.parametrize("words", [(40, 60), (120, 130), (900, 1200)])
def test_word_counts_follow_a_custom_range(words: tuple[int, int]) -> None:
    low, high = words
    for note in synthetic_notes(200, seed=4, words=words):
        assert low <= _words(note.text) <= high, note.text


def test_ids_are_distinct_and_notes_differ() -> None:
    notes = list(synthetic_notes(2000, seed=9))
    assert len({note.id for note in notes}) == len(notes)
    assert len({note.text for note in notes}) == len(notes)
    # Neighbouring notes share well under half their vocabulary, so embeddings spread out.
    vocab = [set(note.text.lower().split()) for note in notes[:300]]
    overlap = [len(a & b) / len(a | b) for a, b in itertools.pairwise(vocab)]
    assert statistics.mean(overlap) < 0.4


def test_notes_read_like_sermon_notes() -> None:
    for note in synthetic_notes(200, seed=2):
        lines = note.text.splitlines()
        assert lines[0] == f"# {note.title}"
        assert _field(note.text, "Speaker")
        assert 2015 <= date.fromisoformat(_field(note.text, "Date")).year <= 2025
        book_and_chapter, _, verses = _field(note.text, "Scripture").rpartition(":")
        assert book_and_chapter and verses.replace("-", "").isdigit()
        assert any(line.startswith(("- ", "1. ")) for line in lines) or len(lines) > 8
        assert note.text.endswith("\n")


def test_questions_are_questions_about_the_same_world() -> None:
    questions = synthetic_questions(500, seed=6)
    assert all(q.endswith("?") and q[0].isupper() for q in questions)
    assert len(set(questions)) > 400
    corpus = " ".join(note.text for note in synthetic_notes(300, seed=6)).lower()
    # Beyond the question's own phrasing, it names something the notes use: a topic, a
    # keyword, a book, a place, a job.
    for question in questions[:200]:
        words = {w.strip("?,.").lower() for w in question.split()} - _QUESTION_PHRASING
        assert any(len(w) >= 3 and w in corpus for w in words), question


def test_write_corpus_round_trips(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "corpus"
    paths = write_corpus(out, 25, seed=8)
    notes = list(synthetic_notes(25, seed=8))
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n.id}.md" for n in notes)
    assert [p.name for p in paths] == [f"{n.id}.md" for n in notes]
    for path, note in zip(paths, notes, strict=True):
        text = path.read_text(encoding="utf-8")
        assert text == note.text
        assert text.splitlines()[0] == f"# {note.title}"


def test_cli_writes_the_same_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "--count", "12", "--seed", "3", "--words", "80", "120"]) == 0
    assert "wrote 12 notes" in capsys.readouterr().out
    notes = list(synthetic_notes(12, seed=3, words=(80, 120)))
    for note in notes:
        assert (tmp_path / f"{note.id}.md").read_text(encoding="utf-8") == note.text


def test_cli_rejects_a_backwards_word_range(tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    with pytest.raises(SystemExit) as exited:
        main([str(out), "--count", "2", "--words", "300", "100"])
    assert exited.value.code == 2
    assert not out.exists()


@pytest.mark.parametrize("words", [(0, 10), (50, 40)])
def test_bad_word_ranges_are_refused(words: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="words must be"):
        list(synthetic_notes(1, words=words))


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="count"):
        synthetic_notes(-1)
    with pytest.raises(ValueError, match="count"):
        synthetic_questions(-1)
