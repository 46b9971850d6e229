"""An answer from the passages: written, cleaned of prompt echoes, cited and priced."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal

from rag.quality import NO_CONTEXT_QUALITY, measure_quality
from rag.types import Answer, Draft, Passage, Usage
from rag.writers.base import Abandoned, AnswerWriter, CallAbandoned, StreamingWriter
from rag.writers.extractive import EXTRACTIVE_MODEL
from rag.writers.postprocess import finish_answer
from rag.writers.pricing import cost_usd
from rag.writers.prompt import SYSTEM_PROMPT
from rag.writers.stream import StreamCleaner

__all__ = ["NO_CONTEXT_ANSWER", "compose_answer", "no_context_answer", "priced"]

NO_CONTEXT_ANSWER = (
    "Your notes don't cover this. Nothing you have written matches the question closely "
    "enough to answer it; try other words, or add notes on it."
)


def no_context_answer() -> Answer:
    """What a question gets when no passage is relevant; no writer is asked."""
    return Answer(text=NO_CONTEXT_ANSWER, no_context=True, quality=NO_CONTEXT_QUALITY)


def compose_answer(
    question: str,
    passages: Sequence[Passage],
    writer: AnswerWriter,
    *,
    on_answer_text: Callable[[str], None] | None = None,
    keep_going: Callable[[], None] | None = None,
) -> Answer:
    """The writer's draft for `passages`, cleaned; an answer the leak filter emptied says so,
    cites nothing and is not usable, so it is never cached.

    With `on_answer_text` and a writer that streams, the answer's text is handed over as
    the model writes it, but only what the leak filter has cleared: the pieces join to the
    answer's text when it is usable and not a refusal, and are always a start of it. A
    writer that does not stream hands over nothing. If `on_answer_text` raises `Abandoned`,
    the call is stopped and `CallAbandoned` is raised with the usage spent, priced.
    `keep_going` is called at each piece the model writes, cleared or not, and may raise
    `Abandoned` too: a cancel stops the call at once, not at the next cleared sentence.
    """
    if on_answer_text is None or not isinstance(writer, StreamingWriter):
        draft = writer.write(question, passages)
    else:
        draft = _write_streaming(question, passages, writer, on_answer_text, keep_going)
    finished = finish_answer(draft.text, passages, system_prompt=SYSTEM_PROMPT)
    usage = priced(draft.model, draft.usage)
    quality = measure_quality(passages, finished.text)
    if not finished.usable:
        return Answer(
            text=finished.text, model=draft.model, usage=usage, usable=False, quality=quality
        )
    cited = set(finished.cited)
    # Sources are what the answer cites; an answer citing nothing shows all it was given.
    shown = tuple(p for p in passages if p.number in cited) or tuple(passages)
    return Answer(
        text=finished.text, sources=shown, model=draft.model, usage=usage, quality=quality
    )


def priced(model: str, usage: Usage) -> Usage:
    """`usage` with its dollars, at `model`'s price (the extractive writer's is 0)."""
    return usage.priced(Decimal(0) if model == EXTRACTIVE_MODEL else cost_usd(model, usage))


def _write_streaming(
    question: str,
    passages: Sequence[Passage],
    writer: StreamingWriter,
    on_answer_text: Callable[[str], None],
    keep_going: Callable[[], None] | None,
) -> Draft:
    cleaner = StreamCleaner(passages, system_prompt=SYSTEM_PROMPT)

    def on_text(delta: str) -> None:
        if keep_going is not None:
            keep_going()
        if cleared := cleaner.feed(delta):
            on_answer_text(cleared)

    try:
        draft = writer.write_streaming(question, passages, on_text)
    except CallAbandoned as exc:
        raise CallAbandoned(priced(exc.model, exc.spent), exc.model) from exc
    if rest := cleaner.finish():
        try:
            on_answer_text(rest)
        except Abandoned as exc:
            # The call is over: what it spent is the whole draft's usage.
            raise CallAbandoned(priced(draft.model, draft.usage), draft.model) from exc
    return draft
