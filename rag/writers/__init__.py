"""Answer writers: Anthropic's Messages API, or the extractive writer that needs no network."""

from __future__ import annotations

from rag.settings import Settings
from rag.tokens import TokenCounter
from rag.writers.base import AnswerWriter

__all__ = ["AnswerWriter", "build_writer"]


def build_writer(settings: Settings, counter: TokenCounter) -> AnswerWriter:
    """Anthropic when a key is set, else the extractive writer."""
    # Imported on use: a process that never writes answers need not load the SDK.
    if settings.uses_anthropic:
        from rag.writers.anthropic import AnthropicWriter

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
    from rag.writers.extractive import ExtractiveWriter

    return ExtractiveWriter()
