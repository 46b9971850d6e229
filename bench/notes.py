"""What the benchmarks ingest and ask: the bundled sample notes, synthetic notes, questions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.corpus import synthetic_notes, synthetic_questions
from scribes.notefiles import collect_note_files, read_note

__all__ = ["SAMPLES_DIR", "BenchNote", "bench_notes", "unique_questions"]

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"


@dataclass(frozen=True, slots=True)
class BenchNote:
    id: str
    title: str
    text: str


def bench_notes(synthetic_count: int, *, seed: int = 0) -> list[BenchNote]:
    """Every `samples/*.md` note, then `synthetic_count` synthetic ones, so retrieval has work."""
    notes = [
        BenchNote(note.document_id, note.title, note.text)
        for note in (read_note(root, file) for root, file in collect_note_files([SAMPLES_DIR]))
    ]
    notes.extend(
        BenchNote(note.id, note.title, note.text)
        for note in synthetic_notes(synthetic_count, seed=seed)
    )
    return notes


def unique_questions(count: int, *, seed: int, tag: str) -> list[str]:
    """Questions no earlier request asked: the exact-answer cache can never serve them."""
    return [
        f"{question.rstrip('?')} (asked as {tag}-{number})?"
        for number, question in enumerate(synthetic_questions(count, seed=seed))
    ]
