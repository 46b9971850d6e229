"""Chunking of notes with the real all-MiniLM-L6-v2 tokenizer."""

from __future__ import annotations

import itertools
import random

import pytest

from rag.chunking import Chunk, chunk_text, split_sentences
from rag.tokens import TokenCounter, load_token_counter

WORD_TEXT = (
    "grace faith hope love mercy covenant shepherd kingdom prayer scripture promise "
    "forgiveness wilderness jerusalem disciples parable resurrection steadfast neighbour "
    "humility patience harvest lamp vine branch bread water light salt"
)
WORDS = WORD_TEXT.split()
SPECIALS = ["Dr. Smith", "John 3:16", "Eph. 2:8", "e.g. this", "David vs. Goliath", "Ps. 23"]


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return load_token_counter("all-MiniLM-L6-v2")


def _sentence(rng: random.Random, low: int = 3, high: int = 14) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
    if rng.random() < 0.4:
        words.insert(rng.randrange(1, len(words)), rng.choice(SPECIALS))
    return words[0].capitalize() + " " + " ".join(words[1:]) + rng.choice(".?!")


def _note(rng: random.Random) -> tuple[str, list[str]]:
    """A Markdown note and the sentences, items and headings it is made of, in order."""
    parts: list[str] = []
    blocks: list[str] = []
    for _ in range(rng.randint(3, 12)):
        kind = rng.random()
        if kind < 0.15:
            heading = "#" * rng.randint(1, 3) + " " + rng.choice(WORDS).capitalize()
            parts.append(heading)
            blocks.append(heading)
        elif kind < 0.4:
            items = [f"- {_sentence(rng, 2, 8)}" for _ in range(rng.randint(2, 5))]
            parts.append("\n".join(items))
            blocks.extend(items)
        else:
            sentences = [_sentence(rng) for _ in range(rng.randint(1, 8))]
            # Messy whitespace, as pasted notes have it.
            parts.append(rng.choice([" ", "  ", " \t"]).join(sentences))
            blocks.extend(sentences)
    return "\n\n".join(parts) + "\n", blocks


def _words(text: str) -> list[str]:
    return text.split()


def _is_subsequence(needle: list[str], haystack: list[str]) -> bool:
    remaining = iter(haystack)
    return all(word in remaining for word in needle)


def test_split_sentences_keeps_references_and_abbreviations_whole() -> None:
    text = (
        "Dr. Smith preached on John 3:16 tonight. It was David vs. Goliath all over again! "
        "Read Eph. 2:8 and 1 Pet. 2:9, e.g. before bed. Was it Ps. 23? "
        "Yes... “Quoted.” The end"
    )
    assert split_sentences(text) == [
        "Dr. Smith preached on John 3:16 tonight.",
        "It was David vs. Goliath all over again!",
        "Read Eph. 2:8 and 1 Pet. 2:9, e.g. before bed.",
        "Was it Ps. 23?",
        "Yes...",
        "“Quoted.”",
        "The end",
    ]


def test_split_sentences_normalises_whitespace() -> None:
    assert split_sentences("  One\tsentence  here.\n\nAnother   one. ") == [
        "One sentence here.",
        "Another one.",
    ]
    assert split_sentences(" \n ") == []


def test_empty_text_gives_no_chunks(counter: TokenCounter) -> None:
    assert chunk_text("", counter=counter, max_tokens=50, overlap_tokens=10) == []
    assert chunk_text(" \n\n\t ", counter=counter, max_tokens=50, overlap_tokens=10) == []


def test_short_note_is_one_chunk(counter: TokenCounter) -> None:
    chunks = chunk_text(
        "Hope is an  anchor.\nIt holds.", counter=counter, max_tokens=50, overlap_tokens=10
    )
    assert chunks == [
        Chunk(0, "Hope is an anchor.\nIt holds.", counter.count("Hope is an anchor. It holds."))
    ]


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize(("max_tokens", "overlap"), [(32, 8), (64, 16), (200, 40)])
def test_generated_notes_fit_and_lose_nothing(
    counter: TokenCounter, seed: int, max_tokens: int, overlap: int
) -> None:
    rng = random.Random(seed)
    text, blocks = _note(rng)
    chunks = chunk_text(text, counter=counter, max_tokens=max_tokens, overlap_tokens=overlap)
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text and chunk.text == chunk.text.strip()
        assert chunk.token_count == counter.count(chunk.text) <= max_tokens
    for block in blocks:
        if counter.count(block) <= max_tokens:
            assert any(block in chunk.text for chunk in chunks), block
    all_words = [word for chunk in chunks for word in _words(chunk.text)]
    assert _is_subsequence(_words(text), all_words)


@pytest.mark.parametrize("seed", range(10))
def test_consecutive_chunks_overlap(counter: TokenCounter, seed: int) -> None:
    rng = random.Random(seed)
    sentences = [_sentence(rng, 3, 6) for _ in range(60)]
    text = " ".join(sentences)
    chunks = chunk_text(text, counter=counter, max_tokens=48, overlap_tokens=16)
    assert len(chunks) > 3
    for previous, following in itertools.pairwise(chunks):
        before, after = split_sentences(previous.text), split_sentences(following.text)
        shared = next(
            n for n in range(len(after), -1, -1) if before[len(before) - n :] == after[:n]
        )
        assert shared >= 1, (previous.text, following.text)
        assert counter.count(" ".join(after[:shared])) <= 16
        assert shared < len(before)


def test_no_overlap_when_asked_for_none(counter: TokenCounter) -> None:
    rng = random.Random(7)
    text = " ".join(_sentence(rng) for _ in range(40))
    chunks = chunk_text(text, counter=counter, max_tokens=40, overlap_tokens=0)
    assert _words(text) == [word for chunk in chunks for word in _words(chunk.text)]


def test_scripture_reference_stays_in_one_chunk(counter: TokenCounter) -> None:
    filler = "The shepherd walks ahead of the flock every single morning. "
    text = filler * 5 + "For God so loved the world, John 3:16 says. " + filler * 5
    for max_tokens in (16, 24, 40):
        chunks = chunk_text(text, counter=counter, max_tokens=max_tokens, overlap_tokens=4)
        assert any("For God so loved the world, John 3:16 says." in c.text for c in chunks)
        assert not any(c.text.endswith(("John", "John 3:", "3:")) for c in chunks)


def test_markdown_items_and_headings_stay_whole(counter: TokenCounter) -> None:
    items = [f"- Point {n}: grace is sufficient in weakness" for n in range(12)]
    text = "# Grace\n\n" + "\n".join(items) + "\n\n## Application\nLive it out. Share it."
    chunks = chunk_text(text, counter=counter, max_tokens=30, overlap_tokens=0)
    lines = [line for chunk in chunks for line in chunk.text.split("\n") if line]
    assert lines == ["# Grace", *items, "## Application", "Live it out. Share it."]
    # A heading opens the chunk of the text under it, never ends the one before.
    assert not any(chunk.text.splitlines()[-1].startswith("#") for chunk in chunks)


def test_overlong_sentence_is_cut_on_token_boundaries(counter: TokenCounter) -> None:
    sentence = "and the vine bears fruit " * 40
    text = f"Intro line. {sentence.strip()}. Closing line."
    chunks = chunk_text(text, counter=counter, max_tokens=25, overlap_tokens=5)
    assert all(chunk.token_count <= 25 for chunk in chunks)
    assert _is_subsequence(_words(text), [w for c in chunks for w in _words(c.text)])


def test_chunking_is_deterministic(counter: TokenCounter) -> None:
    text, _ = _note(random.Random(3))
    first = chunk_text(text, counter=counter, max_tokens=40, overlap_tokens=10)
    assert first == chunk_text(text, counter=counter, max_tokens=40, overlap_tokens=10)


def test_overlap_must_be_below_the_chunk_size(counter: TokenCounter) -> None:
    with pytest.raises(ValueError, match="below max_tokens"):
        chunk_text("Hope.", counter=counter, max_tokens=10, overlap_tokens=10)
    with pytest.raises(ValueError, match="at least 1"):
        chunk_text("Hope.", counter=counter, max_tokens=0, overlap_tokens=0)
