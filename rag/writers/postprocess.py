"""Post-processing of a draft answer: the leak filter, citation marks, whitespace."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rag.chunking import split_sentences
from rag.types import Passage

__all__ = [
    "LEAK_REFUSAL",
    "LEAK_RUN_WORDS",
    "NO_USABLE_ANSWER",
    "SENTENCE_BREAK",
    "WORD",
    "AnswerSentence",
    "FinishedAnswer",
    "answer_sentences",
    "echo_runs",
    "finish_answer",
    "finish_rejoined",
]

LEAK_REFUSAL = "I can't share that."
NO_USABLE_ANSWER = (
    "No usable answer could be written: every sentence that answered the question repeated "
    "Scribes' own instructions and was withheld. Try asking in other words."
)
# A sentence sharing this many consecutive words with the system prompt is an echo of it.
LEAK_RUN_WORDS = 8
# Ranges such as [2-4] are expanded only when short, so a stray "[1-2000]" stays harmless.
_MAX_RANGE = 20

# The filter's words and sentence breaks, public so that the stream cleaner cuts where it does.
WORD = re.compile(r"\w+")
# A sentence ends at . ! or ? followed by space, unless a citation mark follows: "… it. [2]"
# belongs to the sentence before it.
SENTENCE_BREAK = re.compile(r"(?<=[.!?])[ \t]+(?!\[)")
_GROUP = r"\[[ \t]*\d{1,4}(?:[ \t]*[,;\-–][ \t]*\d{1,4})*[ \t]*\]"
_CITATION_RUN = re.compile(rf"([ \t]*)({_GROUP}(?:[ \t]*{_GROUP})*)")
_NUMBER_OR_RANGE = re.compile(r"(\d+)(?:[ \t]*[\-–][ \t]*(\d+))?")
_CANONICAL_MARK = re.compile(r"\[(\d+)\]")
_LEADING_MARKS = re.compile(r"^(?:[ \t]*\[\d+\])+")


@dataclass(frozen=True)
class FinishedAnswer:
    """The answer as shown to the user, and the passage numbers it cites in order of use.

    `usable` is False when the leak filter took every sentence that cited a passage: what
    is left (a lead-in such as "From your notes:", a closing remark) answers nothing.
    """

    text: str
    cited: tuple[int, ...]
    usable: bool = True


def finish_answer(text: str, passages: Sequence[Passage], *, system_prompt: str) -> FinishedAnswer:
    """Drop echoes of `system_prompt`, normalise citation marks to [n], trim whitespace.

    A draft that was nothing but an echo becomes LEAK_REFUSAL; one that lost every cited
    sentence to the filter but kept some words becomes NO_USABLE_ANSWER, not usable.
    """
    kept, leaked = _drop_prompt_echo(text, system_prompt)
    if leaked and not WORD.search(_CITATION_RUN.sub("", kept)):
        return FinishedAnswer(text=LEAK_REFUSAL, cited=())
    valid = frozenset(p.number for p in passages)
    cleaned, cited = _cite(kept, valid)
    if leaked and not cited and _cite(text, valid)[1]:
        return FinishedAnswer(text=NO_USABLE_ANSWER, cited=(), usable=False)
    return FinishedAnswer(text=cleaned, cited=cited)


def finish_rejoined(text: str, passages: Sequence[Passage]) -> str:
    """`text` finished as `finish_answer` finishes a draft in which it found an echo that
    does not touch `text`: every line re-joined from its stripped sentences.

    Where this differs from the plain finish (a tab after a full stop, an indented line),
    an echo written later would change how the text before it reads.
    """
    return _cite(_keep_sentences(text, []), frozenset(p.number for p in passages))[0]


@functools.lru_cache(maxsize=4)
def echo_runs(system_prompt: str) -> frozenset[tuple[str, ...]]:
    """Every run of LEAK_RUN_WORDS consecutive words of `system_prompt`, lower-cased."""
    prompt_words = [w.lower() for w in WORD.findall(system_prompt)]
    return frozenset(
        tuple(prompt_words[i : i + LEAK_RUN_WORDS])
        for i in range(len(prompt_words) - LEAK_RUN_WORDS + 1)
    )


@dataclass(frozen=True)
class AnswerSentence:
    """One sentence of a finished answer: its words without the marks, and the marks' numbers."""

    text: str
    cites: tuple[int, ...]


def answer_sentences(text: str) -> list[AnswerSentence]:
    """The sentences of a finished answer (marks already [n]), each with what it cites.

    Each line is split as notes are chunked, so the "Dr." or "1 Pet. 2:9" that an extractive
    answer quotes ends no sentence; marks that open a sentence ("… it. [2] Next") belong to
    the sentence before them on that line, as in the leak filter, and so does a line of
    nothing but marks.
    """
    found: list[tuple[str, list[int]]] = []
    for line in text.split("\n"):
        first_of_line = len(found)
        for sentence in split_sentences(line):
            lead = _LEADING_MARKS.match(sentence)
            if (
                lead
                and found
                and (len(found) > first_of_line or not sentence[lead.end() :].strip())
            ):
                found[-1][1].extend(int(n) for n in _CANONICAL_MARK.findall(lead.group()))
                sentence = sentence[lead.end() :]
            marks = [int(n) for n in _CANONICAL_MARK.findall(sentence)]
            words = " ".join(_CITATION_RUN.sub("", sentence).split())
            if words or marks:
                found.append((words, marks))
    return [AnswerSentence(words, tuple(dict.fromkeys(marks))) for words, marks in found]


def _cite(text: str, valid: frozenset[int]) -> tuple[str, tuple[int, ...]]:
    """`text` tidied with its citation marks as [n], and the valid numbers it cites."""
    cleaned = _tidy(_CITATION_RUN.sub(lambda m: _normalise_run(m, valid), text))
    cited = tuple(dict.fromkeys(int(m.group(1)) for m in _CANONICAL_MARK.finditer(cleaned)))
    return cleaned, cited


def _drop_prompt_echo(text: str, system_prompt: str) -> tuple[str, bool]:
    """Remove every sentence touching a run of LEAK_RUN_WORDS words found in the prompt.

    Runs are matched over the whole text, across lines, so short fragments of an echo
    ("Rules:", "1.") go with the sentences around them.
    """
    prompt_runs = echo_runs(system_prompt)
    words = list(WORD.finditer(text))
    lowered = [m.group().lower() for m in words]
    covered: list[tuple[int, int]] = []
    for i in range(len(words) - LEAK_RUN_WORDS + 1):
        if tuple(lowered[i : i + LEAK_RUN_WORDS]) in prompt_runs:
            covered.append((words[i].start(), words[i + LEAK_RUN_WORDS - 1].end()))
    if not covered:
        return text, False
    return _keep_sentences(text, covered), True


def _keep_sentences(text: str, covered: Sequence[tuple[int, int]]) -> str:
    """`text` without the sentences that overlap a `covered` span, each line re-joined."""
    lines: list[str] = []
    offset = 0
    for line in text.split("\n"):
        bounds: list[tuple[int, int]] = []
        start = 0
        for brk in SENTENCE_BREAK.finditer(line):
            bounds.append((start, brk.start()))
            start = brk.end()
        bounds.append((start, len(line)))
        sentences = [
            line[a:b]
            for a, b in bounds
            if not any(lo < offset + b and offset + a < hi for lo, hi in covered)
        ]
        remainder = " ".join(s.strip() for s in sentences if s.strip())
        if remainder or not line.strip():
            lines.append(remainder)
        offset += len(line) + 1
    return "\n".join(lines)


def _normalise_run(match: re.Match[str], valid: frozenset[int]) -> str:
    numbers: list[int] = []
    for group in re.findall(_GROUP, match.group(2)):
        for first, last in _NUMBER_OR_RANGE.findall(group):
            low = int(first)
            high = int(last) if last else low
            if not low <= high <= low + _MAX_RANGE:
                high = low
            numbers.extend(n for n in range(low, high + 1) if n in valid)
    marks = "".join(f"[{n}]" for n in dict.fromkeys(numbers))
    # A run that cites nothing real disappears with the space before it: "fact [9]." -> "fact."
    return f"{match.group(1)}{marks}" if marks else ""


def _tidy(text: str) -> str:
    lines = [re.sub(r"(?<=\S)[ \t]{2,}", " ", line).rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
