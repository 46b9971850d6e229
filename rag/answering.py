"""An answer from the passages: written, cleaned of prompt echoes, cited and priced."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from rag.quality import NO_CONTEXT_QUALITY, measure_quality
from rag.types import Answer, Passage
from rag.writers.base import AnswerWriter
from rag.writers.extractive import EXTRACTIVE_MODEL
from rag.writers.postprocess import finish_answer
from rag.writers.pricing import cost_usd
from rag.writers.prompt import SYSTEM_PROMPT

__all__ = ["NO_CONTEXT_ANSWER", "compose_answer", "no_context_answer"]

NO_CONTEXT_ANSWER = (
    "Your notes don't cover this. Nothing you have written matches the question closely "
    "enough to answer it; try other words, or add notes on it."
)


def no_context_answer() -> Answer:
    """What a question gets when no passage is relevant; no writer is asked."""
    return Answer(text=NO_CONTEXT_ANSWER, no_context=True, quality=NO_CONTEXT_QUALITY)


def compose_answer(question: str, passages: Sequence[Passage], writer: AnswerWriter) -> Answer:
    """The writer's draft for `passages`, cleaned; an answer the leak filter emptied says so,
    cites nothing and is not usable, so it is never cached."""
    draft = writer.write(question, passages)
    finished = finish_answer(draft.text, passages, system_prompt=SYSTEM_PROMPT)
    price = Decimal(0) if draft.model == EXTRACTIVE_MODEL else cost_usd(draft.model, draft.usage)
    usage = draft.usage.priced(price)
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
