"""The answer's text as the model writes it, let out only once the leak filter has cleared it.

`finish_answer` judges a whole draft, and a later word can change what it says about an
earlier one: a sentence is dropped when it touches a run of LEAK_RUN_WORDS words of the
system prompt, and such a run may cross into the sentences after it. So a sentence is
cleared only once it is complete and LEAK_RUN_WORDS - 1 complete words follow it, and
only at a cut where no such run crosses: the filter's decision about everything before the
cut can then no longer change. Cuts fall where the filter splits: at its sentence breaks
(which never fall before a citation mark, so "… it. [2]" stays whole) and at newlines.

What the filter makes of the draft up to a cut is then the start of what it makes of the
whole draft, with three exceptions, each held back:
- a whole-answer substitution (LEAK_REFUSAL, NO_USABLE_ANSWER) in place of the text;
- a later echo of the only cited sentence, or of every sentence with words, which turns
  the whole answer into one of those: text is let out only once it cites a passage and
  has a word besides its marks; both survive to the end, so neither substitution can;
- a draft with no echo yet, where one written later would re-join its lines differently
  (`finish_rejoined`): text is let out only where both ways read the same.

The draft is judged again only at a new cut, not at every delta: a few calls of
`finish_answer` per paragraph, over a draft of a few thousand characters.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rag.types import Passage
from rag.writers.postprocess import (
    LEAK_REFUSAL,
    LEAK_RUN_WORDS,
    NO_USABLE_ANSWER,
    SENTENCE_BREAK,
    WORD,
    echo_runs,
    finish_answer,
    finish_rejoined,
)
from rag.writers.prompt import SYSTEM_PROMPT

__all__ = ["StreamCleaner"]

_MARK = re.compile(r"\[\d+\]")
_SUBSTITUTIONS = frozenset({LEAK_REFUSAL, NO_USABLE_ANSWER})


class StreamCleaner:
    """Feed it the raw text deltas of one draft; it returns what may be sent on, in order.

    Everything `feed` and `finish` return, joined, is `finish_answer(draft).text` when that
    is an ordinary answer; whatever the answer, what has been returned so far is always a
    start of it. When the answer is a substitution nothing is returned: the final answer
    says what happened.
    """

    def __init__(self, passages: Sequence[Passage], *, system_prompt: str = SYSTEM_PROMPT) -> None:
        self._passages = tuple(passages)
        self._system_prompt = system_prompt
        self._runs = echo_runs(system_prompt)
        self._raw = ""
        self._emitted = ""
        # Complete words (a character follows them) as (start, end, lower-cased).
        self._words: list[tuple[int, int, str]] = []
        self._word_scan = 0
        # Spans of the echoes found among complete words.
        self._echoes: list[tuple[int, int]] = []
        # Cuts up to here have been considered.
        self._settled_to = 0

    @property
    def emitted(self) -> str:
        """Everything returned so far."""
        return self._emitted

    def feed(self, delta: str) -> str:
        """Take the next piece of the draft; the cleared text to send now (often "")."""
        self._raw += delta
        if not self._scan_words():
            return ""  # no word was completed: nothing new can be settled
        follow = LEAK_RUN_WORDS - 1
        if len(self._words) < follow:
            return ""
        # A cut is settled when `follow` complete words start at or after it.
        limit = self._words[-follow][0]
        for cut in reversed(self._cuts(self._settled_to, limit)):
            if not any(lo < cut < hi for lo, hi in self._echoes):
                self._settled_to = limit
                return self._clear(cut)
        self._settled_to = limit
        return ""

    def finish(self) -> str:
        """The draft is complete: the rest of the answer, or "" for a substitution."""
        final = finish_answer(self._raw, self._passages, system_prompt=self._system_prompt)
        if final.text in _SUBSTITUTIONS or not final.text.startswith(self._emitted):
            return ""
        rest = final.text[len(self._emitted) :]
        self._emitted = final.text
        return rest

    def _scan_words(self) -> bool:
        """Record the words completed since the last scan, and the echoes they end."""
        found = False
        for match in WORD.finditer(self._raw, self._word_scan):
            if match.end() == len(self._raw):
                break  # the next delta may continue this word
            self._words.append((match.start(), match.end(), match.group().lower()))
            self._word_scan = match.end()
            found = True
            if len(self._words) >= LEAK_RUN_WORDS:
                window = self._words[-LEAK_RUN_WORDS:]
                if tuple(w for _, _, w in window) in self._runs:
                    self._echoes.append((window[0][0], window[-1][1]))
        return found

    def _cuts(self, after: int, limit: int) -> list[int]:
        """The filter's sentence breaks and the newlines in (after, limit], in order."""
        cuts = [m.start() for m in SENTENCE_BREAK.finditer(self._raw, after, limit + 1)]
        newline = self._raw.find("\n", after + 1, limit + 1)
        while newline != -1:
            cuts.append(newline)
            newline = self._raw.find("\n", newline + 1, limit + 1)
        return sorted(c for c in cuts if after < c <= limit)

    def _clear(self, cut: int) -> str:
        """Let out what the filter makes of the draft up to `cut`, if it is safe to."""
        head = self._raw[:cut]
        finished = finish_answer(head, self._passages, system_prompt=self._system_prompt)
        text = finished.text
        if text in _SUBSTITUTIONS or not finished.cited or not WORD.search(_MARK.sub("", text)):
            return ""
        echoed = any(hi <= cut for _, hi in self._echoes)
        if not echoed and finish_rejoined(head, self._passages) != text:
            return ""
        if not text.startswith(self._emitted):
            return ""  # cannot happen if the reasoning above holds; never send a non-start
        new = text[len(self._emitted) :]
        self._emitted = text
        return new
