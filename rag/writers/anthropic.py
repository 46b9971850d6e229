"""The writer that asks Anthropic's Messages API for the answer, with errors in domain terms.

Each call is a span `chat <model>` with OpenTelemetry's GenAI attributes; as those
conventions ask, `gen_ai.usage.input_tokens` counts every input token, the cached ones
(`gen_ai.usage.cache_read.input_tokens`, `…cache_creation…`) included, while `Usage` keeps
Anthropic's own split. The SDK's own span (`anthropic.messages.create`) is turned off: it
has no `gen_ai.usage.input_tokens`, and a second span per call would say the same again.

A streamed call (`on_text` given) reads the same answer as server-sent events. The API
reports usage twice in a stream: input and cache tokens with `output_tokens: 1` in
message_start, the output total in message_delta at the end; an error can also arrive
mid-stream as an `error` event after a 200 (overloaded_error, api_error), which the SDK
raises as an APIStatusError carrying that 200.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from urllib.parse import urlsplit

import anthropic
from anthropic.lib.streaming import MessageStream
from anthropic.types import Message, MessageParam, TextBlockParam
from opentelemetry.trace import Span, SpanKind

from rag.telemetry.tracing import tracer
from rag.types import Draft, Passage, Usage
from rag.urls import redact_url
from rag.writers.base import (
    Abandoned,
    CallAbandoned,
    LLMError,
    PermanentLLMError,
    TransientLLMError,
)
from rag.writers.prompt import Prompt, build_prompt

__all__ = [
    "DEFAULT_BASE_URL",
    "Abandoned",
    "AnthropicWriter",
    "CallAbandoned",
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
        self._server_address = urlsplit(self.base_url).hostname or self.base_url
        self._max_output_tokens = max_output_tokens
        self._context_max_tokens = context_max_tokens
        self._count_tokens = count_tokens
        # max_retries=0: Celery is the one retry layer, re-queuing with the server's retry-after.
        # open_telemetry=False: the span is ours (above), and the SDK then reads no
        # ANTHROPIC_OPEN_TELEMETRY* variables either.
        self._client = anthropic.Anthropic(
            api_key=api_key,
            base_url=self.base_url,
            timeout=timeout_s,
            max_retries=0,
            open_telemetry=False,
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

    def write_streaming(
        self, question: str, passages: Sequence[Passage], on_text: Callable[[str], None]
    ) -> Draft:
        return self.write_prompt(self.prompt_for(question, passages), on_text=on_text)

    def write_prompt(self, prompt: Prompt, on_text: Callable[[str], None] | None = None) -> Draft:
        """One Messages API call; raises TransientLLMError or PermanentLLMError on failure.

        With `on_text`, the answer is streamed and `on_text` gets each text delta as it
        arrives. If `on_text` raises `Abandoned`, the connection is closed at once (the
        model stops writing, and stops being billed) and `CallAbandoned` is raised.
        """
        with tracer.start_as_current_span(f"chat {self.model}", kind=SpanKind.CLIENT) as span:
            if span.is_recording():
                span.set_attributes(
                    {
                        "gen_ai.operation.name": "chat",
                        "gen_ai.system": "anthropic",
                        "gen_ai.provider.name": "anthropic",
                        "gen_ai.request.model": self.model,
                        "gen_ai.request.max_tokens": self._max_output_tokens,
                        "server.address": self._server_address,
                    }
                )
            try:
                if on_text is None:
                    message = self._create(prompt)
                    request_id = message._request_id
                else:
                    message, request_id = self._stream(prompt, on_text)
            except LLMError as exc:
                # The span's status and exception event come from the context manager.
                span.set_attribute("error.type", exc.error_type or type(exc).__name__)
                if exc.spent is not None and span.is_recording():
                    span.set_attributes(_usage_attributes(exc.spent))
                cause = exc.__cause__
                if isinstance(cause, anthropic.APIStatusError) and cause.request_id:
                    span.set_attribute("anthropic.request.id", cause.request_id)
                raise
            except CallAbandoned as exc:
                span.set_attribute("error.type", "abandoned")
                if span.is_recording():
                    span.set_attributes(_usage_attributes(exc.spent))
                raise
            draft = self._draft_of(message)
            if span.is_recording():
                _record_response(span, message, draft.usage, request_id)
            return draft

    def _request(self, prompt: Prompt) -> tuple[list[TextBlockParam], list[MessageParam]]:
        # The system prompt is the same for every question: mark it as a cache breakpoint.
        system: list[TextBlockParam] = [
            {"type": "text", "text": prompt.system, "cache_control": {"type": "ephemeral"}}
        ]
        return system, [{"role": "user", "content": prompt.user}]

    def _create(self, prompt: Prompt) -> Message:
        system, messages = self._request(prompt)
        try:
            return self._client.messages.create(
                model=self.model,
                max_tokens=self._max_output_tokens,
                system=system,
                messages=messages,
            )
        except anthropic.AnthropicError as exc:
            raise self._llm_error(exc) from exc

    def _stream(self, prompt: Prompt, on_text: Callable[[str], None]) -> tuple[Message, str | None]:
        system, messages = self._request(prompt)
        try:
            with self._client.messages.stream(
                model=self.model,
                max_tokens=self._max_output_tokens,
                system=system,
                messages=messages,
            ) as stream:
                received: list[str] = []
                begun = False
                try:
                    for event in stream:
                        if event.type == "message_start":
                            begun = True
                        elif event.type == "text":
                            received.append(event.text)
                            try:
                                on_text(event.text)
                            except Abandoned as exc:
                                # Leaving the `with` closes the response, and the connection.
                                spent = self._spent(stream, received)
                                raise CallAbandoned(spent, self.model) from exc
                except anthropic.AnthropicError as exc:
                    # Broken off part-way (an error event, a dropped connection): what the
                    # call had cost goes with the error, to be counted all the same.
                    error = self._llm_error(exc)
                    if begun:
                        error.spent = self._spent(stream, received)
                    raise error from exc
                return stream.get_final_message(), stream.request_id
        except anthropic.AnthropicError as exc:
            raise self._llm_error(exc) from exc

    def _spent(self, stream: MessageStream[None], received: list[str]) -> Usage:
        """Usage of a stream stopped early. Until message_delta reports the output total,
        the API has said only `output_tokens: 1`; the output is then estimated by counting
        the tokens of the text received (the model may have written a little more)."""
        snapshot = stream.current_message_snapshot
        usage = snapshot.usage
        output_tokens = usage.output_tokens
        if snapshot.stop_reason is None:  # message_delta not seen yet: only the estimate
            output_tokens = max(output_tokens, self._count_tokens("".join(received)))
        return Usage(
            input_tokens=usage.input_tokens,
            output_tokens=output_tokens,
            cache_read_input_tokens=usage.cache_read_input_tokens or 0,
            cache_creation_input_tokens=usage.cache_creation_input_tokens or 0,
        )

    def _llm_error(self, exc: anthropic.AnthropicError) -> LLMError:
        if isinstance(exc, anthropic.APIStatusError):
            if exc.status_code < 400:
                return _stream_error(exc)
            return self._status_error(exc)
        if isinstance(exc, anthropic.APITimeoutError):
            return TransientLLMError(
                f"Anthropic at {redact_url(self.base_url)} did not answer within the timeout; "
                "the job will be retried (raise SCRIBES_LLM_TIMEOUT_S if this persists)"
            )
        if isinstance(exc, anthropic.APIConnectionError):
            return TransientLLMError(
                f"Anthropic at {redact_url(self.base_url)} is not reachable "
                f"({exc.__cause__ or exc}); the job will be retried; check the network or "
                "ANTHROPIC_BASE_URL"
            )
        return PermanentLLMError(f"Anthropic call failed unexpectedly: {exc}")

    def _draft_of(self, message: Message) -> Draft:
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


# Mid-stream errors come after a 200; these are the statuses the same errors have up front.
_STATUS_OF_ERROR_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def _stream_error(exc: anthropic.APIStatusError) -> LLMError:
    """An `error` event in a stream that began with 200: transient unless its type is one
    that would have been a 4xx up front (an unknown type counts as a server error)."""
    error_type = exc.type
    detail = exc.api_message or exc.message
    status = _STATUS_OF_ERROR_TYPE.get(error_type or "", 500)
    if status in (408, 409, 429) or status >= 500:
        return TransientLLMError(
            f"Anthropic broke off its answer with {error_type or 'an error'}: {detail}; "
            "retry with backoff",
            error_type=error_type,
        )
    return PermanentLLMError(
        f"Anthropic broke off its answer with {error_type}: {detail}; "
        f"{_PERMANENT_HINTS.get(status, 'retrying will not help; fix the request')}",
        error_type=error_type,
    )


def _usage_attributes(usage: Usage) -> dict[str, int]:
    cached = usage.cache_read_input_tokens + usage.cache_creation_input_tokens
    return {
        "gen_ai.usage.input_tokens": usage.input_tokens + cached,
        "gen_ai.usage.output_tokens": usage.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": usage.cache_read_input_tokens,
        "gen_ai.usage.cache_creation.input_tokens": usage.cache_creation_input_tokens,
    }


def _record_response(span: Span, message: Message, usage: Usage, request_id: str | None) -> None:
    span.set_attributes(
        {
            "gen_ai.response.model": message.model,
            "gen_ai.response.id": message.id,
            "gen_ai.response.finish_reasons": [message.stop_reason or "unknown"],
            **_usage_attributes(usage),
        }
    )
    if request_id:  # what Anthropic's support asks for about a call
        span.set_attribute("anthropic.request.id", request_id)


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
