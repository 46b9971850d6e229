"""The writer that asks Anthropic's Messages API for the answer, with errors in domain terms."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType

import anthropic
from anthropic.types import TextBlockParam

from rag.types import Draft, Passage, Usage
from rag.urls import redact_url
from rag.writers.base import LLMError, PermanentLLMError, TransientLLMError
from rag.writers.prompt import Prompt, build_prompt

__all__ = [
    "DEFAULT_BASE_URL",
    "AnthropicWriter",
    "LLMError",
    "PermanentLLMError",
    "TransientLLMError",
    "retry_after_seconds",
]

# Passed explicitly when none is configured: the SDK would otherwise read ANTHROPIC_BASE_URL
# itself, and only rag.settings reads the environment.
DEFAULT_BASE_URL = "https://api.anthropic.com"


class AnthropicWriter:
    """Writes a draft answer with Claude; one SDK client per writer, SDK retries off."""

    name = "anthropic"

    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        base_url: str | None,
        timeout_s: float,
        max_output_tokens: int,
        context_max_tokens: int,
        count_tokens: Callable[[str], int],
    ) -> None:
        self.model = model
        self.base_url = base_url or DEFAULT_BASE_URL
        self._max_output_tokens = max_output_tokens
        self._context_max_tokens = context_max_tokens
        self._count_tokens = count_tokens
        # max_retries=0: Celery is the one retry layer, re-queuing with the server's retry-after.
        self._client = anthropic.Anthropic(
            api_key=api_key, base_url=self.base_url, timeout=timeout_s, max_retries=0
        )

    def prompt_for(self, question: str, passages: Sequence[Passage]) -> Prompt:
        """The prompt `write` sends, with the passages that fit the context budget."""
        return build_prompt(
            question,
            passages,
            context_max_tokens=self._context_max_tokens,
            count_tokens=self._count_tokens,
        )

    def write(self, question: str, passages: Sequence[Passage]) -> Draft:
        return self.write_prompt(self.prompt_for(question, passages))

    def write_prompt(self, prompt: Prompt) -> Draft:
        """One Messages API call; raises TransientLLMError or PermanentLLMError on failure."""
        # The system prompt is the same for every question: mark it as a cache breakpoint.
        system: list[TextBlockParam] = [
            {"type": "text", "text": prompt.system, "cache_control": {"type": "ephemeral"}}
        ]
        try:
            message = self._client.messages.create(
                model=self.model,
                max_tokens=self._max_output_tokens,
                system=system,
                messages=[{"role": "user", "content": prompt.user}],
            )
        except anthropic.APIStatusError as exc:
            raise self._status_error(exc) from exc
        except anthropic.APITimeoutError as exc:
            raise TransientLLMError(
                f"Anthropic at {redact_url(self.base_url)} did not answer within the timeout; "
                "the job will be retried (raise SCRIBES_LLM_TIMEOUT_S if this persists)"
            ) from exc
        except anthropic.APIConnectionError as exc:
            raise TransientLLMError(
                f"Anthropic at {redact_url(self.base_url)} is not reachable "
                f"({exc.__cause__ or exc}); the job will be retried; check the network or "
                "ANTHROPIC_BASE_URL"
            ) from exc
        except anthropic.AnthropicError as exc:
            raise PermanentLLMError(f"Anthropic call failed unexpectedly: {exc}") from exc

        text = "".join(block.text for block in message.content if block.type == "text")
        usage = message.usage
        return Draft(
            text=text,
            model=message.model or self.model,
            usage=Usage(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_input_tokens=usage.cache_read_input_tokens or 0,
                cache_creation_input_tokens=usage.cache_creation_input_tokens or 0,
            ),
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AnthropicWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _status_error(self, exc: anthropic.APIStatusError) -> LLMError:
        status = exc.status_code
        error_type = exc.type
        detail = exc.api_message or exc.message
        headers = exc.response.headers
        # Anthropic says per response whether a retry can succeed; the SDK obeys it, so do we.
        should_retry = headers.get("x-should-retry")
        transient = status in (408, 409, 429) or status >= 500
        if should_retry in ("true", "false"):
            transient = should_retry == "true"
        if transient:
            retry_after = retry_after_seconds(headers)
            when = f"after {retry_after:g}s" if retry_after is not None else "with backoff"
            return TransientLLMError(
                f"Anthropic answered {status} {error_type or ''}: {detail}; retry {when}",
                retry_after=retry_after,
                status=status,
                error_type=error_type,
            )
        return PermanentLLMError(
            f"Anthropic refused the request with {status} {error_type or ''}: {detail}; "
            f"{_PERMANENT_HINTS.get(status, 'retrying will not help; fix the request')}",
            status=status,
            error_type=error_type,
        )


_PERMANENT_HINTS = {
    400: "the request is malformed or too long; check the prompt and SCRIBES_LLM_MODEL",
    401: "check ANTHROPIC_API_KEY",
    403: "the API key may not use this model or feature; check the key's workspace",
    404: "the model or endpoint does not exist; check SCRIBES_LLM_MODEL and ANTHROPIC_BASE_URL",
    413: "the prompt is too large; lower SCRIBES_CONTEXT_MAX_TOKENS",
}


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks us to wait: `retry-after-ms`, else `retry-after` (secs or date)."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return max(0.0, float(email.utils.mktime_tz(parsed) - time.time()))
