"""What every answer writer is; the writers themselves are in the modules beside this one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from rag.types import Draft, Passage, Usage

__all__ = [
    "Abandoned",
    "AnswerWriter",
    "CallAbandoned",
    "LLMError",
    "PermanentLLMError",
    "StreamingWriter",
    "TransientLLMError",
]


class LLMError(Exception):
    """The model call failed; `status` and `error_type` are Anthropic's, when it answered.

    `spent` is what a call that failed part-way had already cost (a stream that broke off
    after it began: its input was read and some output written, and both are billed), or
    None when it failed before the model began.
    """

    def __init__(
        self, message: str, *, status: int | None = None, error_type: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.spent: Usage | None = None


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


class Abandoned(Exception):
    """Raised by a streaming call's `on_text` to stop the call: the answer is not wanted."""


class CallAbandoned(Exception):
    """The model call was stopped on purpose mid-answer; `spent` is what it had cost so far.

    Not an `LLMError`: nothing failed, and retrying would only spend again.
    """

    def __init__(self, spent: Usage, model: str) -> None:
        super().__init__(
            f"the {model} call was abandoned after {spent.input_tokens} input and "
            f"{spent.output_tokens} output tokens"
        )
        self.spent = spent
        self.model = model

    def __reduce__(self) -> tuple[type[CallAbandoned], tuple[Usage, str]]:
        return CallAbandoned, (self.spent, self.model)


class AnswerWriter(Protocol):
    name: str

    def write(self, question: str, passages: Sequence[Passage]) -> Draft:
        """A draft answer from `passages` alone; a model's failure raises an `LLMError`."""
        ...


@runtime_checkable
class StreamingWriter(AnswerWriter, Protocol):
    """A writer that can hand over its draft's text as the model writes it.

    `isinstance(writer, StreamingWriter)` says whether a writer streams.
    """

    def write_streaming(
        self, question: str, passages: Sequence[Passage], on_text: Callable[[str], None]
    ) -> Draft:
        """As `write`, calling `on_text` with each piece of raw draft text as it arrives.

        When `on_text` raises `Abandoned`, the call is stopped at once and `CallAbandoned`
        is raised with the usage spent so far.
        """
        ...
