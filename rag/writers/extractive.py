"""The offline answer writer: the passages' own best sentences, each with its citation mark."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from rag.chunking import split_blocks, split_sentences
from rag.types import Draft, Passage, Usage

__all__ = ["EXTRACTIVE_MODEL", "NOTHING_FOUND", "ExtractiveWriter"]

EXTRACTIVE_MODEL = "extractive"
NOTHING_FOUND = "I found nothing in your notes about this."

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
_LEADING_MARKERS = re.compile(r"^(?:#{1,6}\s+|(?:[-*+•]|\d{1,3}[.)])\s+|>\s*|\[[ xX]\]\s+)+")
_STOPWORD_TEXT = """
    a about above after again against all also am an and any are as at be because been
    before being below between both but by can could did do does doing down during each few
    for from further had has have having he her here hers herself him himself his how i if
    in into is it its itself just me more most my myself no nor not now of off on once only
    or other our ours ourselves out over own same she should so some such than that the
    their theirs them themselves then there these they this those through to too under until
    up very was we were what when where which while who whom whose why will with would you
    your yours yourself yourselves us let lets get got one two many much may might must
    shall say says said tell told mean means meant explain describe according mention
    mentioned note notes noted write wrote written know think
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
# BM25's usual k1; a milder length penalty than its usual b, as sentences vary less than pages.
_K1 = 1.2
_B = 0.5
_RELATIVE_FLOOR = 0.3  # a chosen sentence scores at least this share of the best one
_NEAR_DUPLICATE = 0.7  # Jaccard similarity of content words above which a sentence repeats
_FALLBACK_SENTENCES = 2


@dataclass(frozen=True, slots=True)
class _Sentence:
    passage: Passage
    rank: int  # the passage's place in the retrieval order, 0 first
    position: int  # the sentence's place within its passage
    text: str
    terms: Counter[str]
    heading: bool


class ExtractiveWriter:
    """Answers with the sentences of the passages that best match the question, cited.

    Free and offline: the default writer when no LLM key is configured. It never writes a
    word of its own beyond the opening line and the citation marks.
    """

    name = EXTRACTIVE_MODEL

    def __init__(self, *, max_sentences: int = 4) -> None:
        if max_sentences < 1:
            raise ValueError(f"max_sentences must be at least 1, not {max_sentences}")
        self.max_sentences = max_sentences

    def write(self, question: str, passages: Sequence[Passage]) -> Draft:
        sentences = [s for rank, p in enumerate(passages) for s in _sentences_of(p, rank)]
        candidates = [s for s in sentences if not s.heading and s.terms]
        query = set(_terms(question))
        scores = _bm25(query, candidates)
        chosen = self._best(candidates, scores)
        if not chosen:
            chosen = _opening(sentences, min(_FALLBACK_SENTENCES, self.max_sentences))
        if not chosen:
            return Draft(NOTHING_FOUND, EXTRACTIVE_MODEL, Usage())
        lines = [f"- {s.text} [{s.passage.number}]" for s in chosen]
        return Draft("From your notes:\n" + "\n".join(lines), EXTRACTIVE_MODEL, Usage())

    def _best(self, candidates: list[_Sentence], scores: list[float]) -> list[_Sentence]:
        ranked = sorted(
            (
                (score * _rank_bonus(s), s)
                for s, score in zip(candidates, scores, strict=True)
                if score > 0
            ),
            key=lambda pair: (-pair[0], pair[1].rank, pair[1].position),
        )
        if not ranked:
            return []
        floor = ranked[0][0] * _RELATIVE_FLOOR
        chosen: list[tuple[float, _Sentence]] = []
        for score, sentence in ranked:
            if len(chosen) == self.max_sentences or score < floor:
                break
            if not any(_repeats(sentence, kept) for _, kept in chosen):
                chosen.append((score, sentence))
        # Read passage by passage, the best passage first, each in its own sentence order.
        best_of: dict[int, float] = {}
        for score, sentence in chosen:
            best_of.setdefault(sentence.rank, score)
        return [
            s
            for _, s in sorted(
                chosen, key=lambda pair: (-best_of[pair[1].rank], pair[1].rank, pair[1].position)
            )
        ]


def _sentences_of(passage: Passage, rank: int) -> list[_Sentence]:
    sentences: list[_Sentence] = []
    for _, kind, block in split_blocks(passage.text):
        for sentence in split_sentences(block):
            text = _LEADING_MARKERS.sub("", sentence).strip()
            if _WORD.search(text):
                terms = Counter(_terms(text))
                position = len(sentences)
                sentences.append(_Sentence(passage, rank, position, text, terms, kind == "heading"))
    return sentences


def _terms(text: str) -> list[str]:
    words = (w.removesuffix("'s") for w in _WORD.findall(text.lower().replace("’", "'")))
    return [_stem(w) for w in words if w not in _STOPWORDS]


def _stem(word: str) -> str:
    """A light suffix stripper, enough to match "loves" with "loved" and "love"."""
    # Porter or Snowball would mean a new dependency for little gain on a handful of passages.
    if len(word) <= 3:
        return word
    if word.endswith(("ies", "ied")) and len(word) > 4:
        return word[:-3] + "y"
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            word = word[: -len(suffix)]
            break
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    return word


def _bm25(query: set[str], sentences: list[_Sentence]) -> list[float]:
    """Okapi BM25 of each sentence for `query`, with IDF over all the passages' sentences."""
    if not sentences or not query:
        return [0.0] * len(sentences)
    count = len(sentences)
    frequency = Counter(term for s in sentences for term in s.terms.keys() & query)
    average = sum(s.terms.total() for s in sentences) / count
    scores: list[float] = []
    for sentence in sentences:
        length = sentence.terms.total()
        score = 0.0
        for term in query & sentence.terms.keys():
            idf = math.log(1 + (count - frequency[term] + 0.5) / (frequency[term] + 0.5))
            tf = sentence.terms[term]
            score += idf * tf * (_K1 + 1) / (tf + _K1 * (1 - _B + _B * length / average))
        scores.append(score)
    return scores


def _rank_bonus(sentence: _Sentence) -> float:
    """A small lift for what retrieval ranked high: it breaks ties, it rarely reorders."""
    similarity = min(max(sentence.passage.score, 0.0), 1.0)
    return 1.0 + 0.1 * similarity + 0.1 / (sentence.rank + 1)


def _repeats(sentence: _Sentence, kept: _Sentence) -> bool:
    if sentence.text.lower() == kept.text.lower():
        return True
    ours, theirs = sentence.terms.keys(), kept.terms.keys()
    union = len(ours | theirs)
    return union > 0 and len(ours & theirs) / union >= _NEAR_DUPLICATE


def _opening(sentences: list[_Sentence], limit: int) -> list[_Sentence]:
    """The first sentences of the top passage that has any, headings only if nothing else."""
    if not sentences:
        return []
    top = [s for s in sentences if s.rank == sentences[0].rank]
    return ([s for s in top if not s.heading] or top)[:limit]
