"""Steps 5 to 7: write the answer from the passages, clean it, cite it, and price it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from rag.postprocess import finish_answer
from rag.pricing import cost_usd
from rag.prompt import SYSTEM_PROMPT
from rag.settings import Settings
from rag.tokens import TokenCounter
from rag.types import Draft, Passage

__all__ = [
    "NO_CONTEXT_ANSWER",
    "AnswerWriter",
    "build_writer",
    "compose_answer",
    "no_context_result",
    "source_of",
]

NO_CONTEXT_ANSWER = (
    "Your notes don't cover this. Nothing you have written matches the question closely "
    "enough to answer it; try other words, or add notes on it."
)


class AnswerWriter(Protocol):
    name: str

    def write(self, question: str, passages: Sequence[Passage]) -> Draft: ...


def build_writer(settings: Settings, counter: TokenCounter) -> AnswerWriter:
    """Anthropic when a key is set, else the extractive writer, which needs no network."""
    if settings.uses_anthropic:
        from rag.anthropic_writer import AnthropicWriter

        assert settings.anthropic_api_key is not None
        return AnthropicWriter(
            api_key=settings.anthropic_api_key.get_secret_value(),
            model=settings.llm_model,
            base_url=settings.anthropic_base_url,
            timeout_s=settings.llm_timeout_s,
            max_output_tokens=settings.answer_max_tokens,
            context_max_tokens=settings.context_max_tokens,
            count_tokens=counter.count,
        )
    from rag.extractive import ExtractiveWriter

    return ExtractiveWriter()


def source_of(passage: Passage) -> dict[str, Any]:
    return {
        "number": passage.number,
        "document_id": passage.document_id,
        "chunk_id": passage.chunk_id,
        "title": passage.title,
        "score": passage.score,
        "text": passage.text,
    }


def no_context_result() -> dict[str, Any]:
    return {
        "answer": NO_CONTEXT_ANSWER,
        "sources": [],
        "no_context": True,
        "model": "",
        "usage": {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0},
    }


def compose_answer(
    question: str, passages: Sequence[Passage], writer: AnswerWriter
) -> dict[str, Any]:
    draft = writer.write(question, passages)
    finished = finish_answer(draft.text, passages, system_prompt=SYSTEM_PROMPT)
    cited = set(finished.cited)
    # Sources are what the answer cites; an answer citing nothing shows all it was given.
    shown = [p for p in passages if p.number in cited] or list(passages)
    usage = draft.usage
    price = 0.0 if writer.name == "extractive" else cost_usd(draft.model, usage)
    return {
        "answer": finished.text,
        "sources": [source_of(p) for p in shown],
        "no_context": False,
        "model": draft.model,
        "usage": {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_input_tokens": usage.cache_read_input_tokens,
            "cache_creation_input_tokens": usage.cache_creation_input_tokens,
            "cost_usd": price,
        },
    }
