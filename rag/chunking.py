"""Notes cut into overlapping chunks that fit the embedding model, on sentence boundaries."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from rag.tokens import TokenCounter

__all__ = ["Chunk", "chunk_text", "split_blocks", "split_sentences"]

BlockKind = Literal["heading", "item", "prose"]

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\f\v]*\n\s*")
_HEADING = re.compile(r"#{1,6}(?:\s|$)")
_LIST_ITEM = re.compile(r"(?:[-*+•]|\d{1,3}[.)])\s")
# A run of terminators, any closing quotes/brackets/emphasis, then the space before the next one.
_SENTENCE_END = re.compile(r"[.!?]+[\"'’”)\]*_]*\s+")
_INITIALISM = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")
_CHAPTER_VERSE = re.compile(r"\d+:\d+")
# Titles, Latin and reference words, then Bible books whose abbreviation is not a word.
_ABBREVIATION_WORDS = (
    "mr mrs ms dr prof rev fr sr jr st mt vs v vv cf etc al ch chap p pp no nos vol vols fig "
    "ed eds approx ca dept est inc ltd co corp ft gen exod lev deut josh judg neh esth ps psa "
    "prov eccl eccles isa jer ezek hos obad zeph zech matt mk lk jn rom cor gal eph phil "
    "thess tim heb jas"
)
_ABBREVIATIONS = frozenset(_ABBREVIATION_WORDS.split())
_OPENERS = "\"'“‘([*_"


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    text: str
    token_count: int


@dataclass(frozen=True, slots=True)
class _Unit:
    text: str
    tokens: int
    separator: str  # what joins it to the unit before it when both are in one chunk
    heading: bool


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, whitespace normalised; "Dr.", "vs." and "1 Pet. 2:9" end none."""
    text = " ".join(text.split())
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        end = match.end()
        if end >= len(text) or text[end].islower():
            continue
        if match.group().rstrip()[-1] == "." and match.group().count(".") == 1:
            word = text[text.rfind(" ", start, match.start()) + 1 : match.start()].lstrip(_OPENERS)
            if (
                word.lower() in _ABBREVIATIONS
                or (len(word) == 1 and word.isalpha())
                or _INITIALISM.fullmatch(word)
                or (word[:1].isupper() and _CHAPTER_VERSE.match(text, end))
            ):
                continue
        sentences.append(text[start:end].rstrip())
        start = end
    if start < len(text):
        sentences.append(text[start:])
    return sentences


def split_blocks(text: str) -> Iterator[tuple[int, BlockKind, str]]:
    """(paragraph number, kind, text) of each Markdown heading, list item or prose block.

    A line that starts in lower case continues the block above it (a wrapped line), and so
    does an indented line under a list item; every other line starts a block of its own.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    for paragraph_number, paragraph in enumerate(_PARAGRAPH_BREAK.split(text)):
        blocks: list[tuple[BlockKind, list[str]]] = []
        for raw_line in paragraph.split("\n"):
            line = raw_line.strip()
            if not line:
                continue
            kind: BlockKind
            if _HEADING.match(line):
                kind = "heading"
            elif _LIST_ITEM.match(line):
                kind = "item"
            elif (
                blocks
                and blocks[-1][0] != "heading"
                and (line[0].islower() or (raw_line[:1].isspace() and blocks[-1][0] == "item"))
            ):
                blocks[-1][1].append(line)
                continue
            else:
                kind = "prose"
            blocks.append((kind, [line]))
        for kind, lines in blocks:
            yield paragraph_number, kind, " ".join(" ".join(lines).split())


def _units(text: str, counter: TokenCounter, max_tokens: int) -> list[_Unit]:
    units: list[_Unit] = []
    last_paragraph = -1
    for paragraph, kind, block in split_blocks(text):
        separator = "\n" if paragraph == last_paragraph else "\n\n"
        last_paragraph = paragraph
        # Headings and list items stay whole when they fit; prose packs sentence by sentence.
        whole = counter.count(block) if kind != "prose" else max_tokens + 1
        sized = [(block, whole)] if whole <= max_tokens else _sized(block, counter, max_tokens)
        for part, tokens in sized:
            if tokens:
                units.append(_Unit(part, tokens, separator, kind == "heading"))
                separator = " "
    return units


def _sized(block: str, counter: TokenCounter, max_tokens: int) -> Iterator[tuple[str, int]]:
    for sentence in split_sentences(block):
        tokens = counter.count(sentence)
        if tokens <= max_tokens:
            yield sentence, tokens
            continue
        for piece in counter.split(sentence, max_tokens):
            if piece.strip():
                yield piece.strip(), counter.count(piece)


def chunk_text(
    text: str,
    *,
    counter: TokenCounter,
    max_tokens: int,
    overlap_tokens: int,
) -> list[Chunk]:
    """`text` packed greedily into chunks of at most `max_tokens` tokens.

    Each chunk after the first starts with the last sentences (or items) of the one before,
    as many as fit in `overlap_tokens`; a heading that would end a chunk moves to the next.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, not {max_tokens}")
    if not 0 <= overlap_tokens < max_tokens:
        raise ValueError(
            f"overlap_tokens must be at least 0 and below max_tokens ({max_tokens}), "
            f"not {overlap_tokens}"
        )
    units = _units(text, counter, max_tokens)
    packed: list[list[_Unit]] = []
    current: list[_Unit] = []
    size = 0
    for unit in units:
        if current and size + unit.tokens > max_tokens:
            headings = 0
            while headings < len(current) - 1 and current[-1 - headings].heading:
                headings += 1
            carried = current[len(current) - headings :]
            if headings and sum(u.tokens for u in carried) + unit.tokens <= max_tokens:
                # A heading belongs with what follows it, not at the end of a chunk.
                packed.append(current[: len(current) - headings])
            else:
                packed.append(current)
                carried = []
                budget = min(overlap_tokens, max_tokens - unit.tokens)
                used = 0
                # Never carry the whole chunk: it would be a prefix of the next one.
                for previous in reversed(current[1:]):
                    if used + previous.tokens > budget:
                        break
                    carried.insert(0, previous)
                    used += previous.tokens
            current, size = carried, sum(u.tokens for u in carried)
        current.append(unit)
        size += unit.tokens
    if current:
        packed.append(current)
    chunks: list[Chunk] = []
    for group in packed:
        body = group[0].text + "".join(unit.separator + unit.text for unit in group[1:])
        # Separators are whitespace, which WordPiece never counts, so the sum is exact.
        chunks.append(Chunk(len(chunks), body, sum(unit.tokens for unit in group)))
    return chunks
