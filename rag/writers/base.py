"""What every answer writer is; the writers themselves are in the modules beside this one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from rag.types import Draft, Passage

__all__ = ["AnswerWriter", "LLMError", "PermanentLLMError", "TransientLLMError"]


class LLMError(Exception):
    """The model call failed; `status` and `error_type` are Anthropic's, when it answered."""

    def __init__(
        self, message: str, *, status: int | None = None, error_type: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


class TransientLLMError(LLMError):
    """Worth retrying later: rate limit, overload, server error, timeout, no connection."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message, status=status, error_type=error_type)
        self.retry_after = retry_after


class PermanentLLMError(LLMError):
    """Retrying the same request cannot help: bad request, key, permission, model or size."""


class AnswerWriter(Protocol):
    name: str

    def write(self, question: str, passages: Sequence[Passage]) -> Draft:
        """A draft answer from `passages` alone; a model's failure raises an `LLMError`."""
        ...
