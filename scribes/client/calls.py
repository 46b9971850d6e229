"""The requests behind each method, and how an answer or a failure is judged: shared by the
sync and async clients, which differ only in how they send and sleep.

Retries: a 503 (a dependency down), a 429 that says when to come back, a 409
`idempotency_in_progress` (the same key's first request still running) and a connection
that failed are tried again, waiting 0.5 s, 1 s, 2 s … (8 s at most, with jitter) or what
Retry-After asks (30 s at most). A POST is tried again only when it carries an
Idempotency-Key, so that a retry can never submit the same work twice; `submit`, `ingest`
and `submit_many` make one per call. A refused connection is the one exception: nothing
was sent.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from rag.urls import redact_url
from scribes.client.errors import ApiError, Unreachable
from scribes.client.models import CacheMode, Question

__all__ = ["MAX_BATCH", "MAX_WAIT_S", "Call", "Retries", "WaitPlan", "http_options"]

# The API's limits: a long poll waits 30 s at most, a batch or a read of many holds 100.
MAX_WAIT_S = 30
MAX_BATCH = 100
# A long poll's read timeout is its wait and this much more, for the answer to arrive.
LONG_POLL_MARGIN_S = 10.0


@dataclass(frozen=True, slots=True)
class Call:
    """One request; `read_timeout_s` None takes the client's."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    read_timeout_s: float | None = None

    @property
    def repeatable(self) -> bool:
        return self.method != "POST" or "Idempotency-Key" in self.headers

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        timeout = http.timeout
        if self.read_timeout_s is not None:
            timeout = httpx.Timeout(
                connect=timeout.connect,
                read=self.read_timeout_s,
                write=timeout.write,
                pool=timeout.pool,
            )
        return http.build_request(
            self.method,
            self.path,
            params=self.params or None,
            json=self.body,
            headers=self.headers,
            timeout=timeout,
        )


@dataclass(frozen=True, slots=True)
class Retries:
    """How often and how long to try again; `attempts` counts the first try too."""

    attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 30.0

    def delay_s(self, retry: int, retry_after_s: float | None) -> float:
        """The pause before retry number `retry` (0 first)."""
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.max_retry_after_s)
        step: float = min(self.backoff_s * 2.0**retry, self.max_backoff_s)
        # Half fixed, half random: clients that failed together do not come back together.
        return step / 2 + random.uniform(0, step / 2)

    def retry_response(self, call: Call, response: httpx.Response) -> bool:
        if not call.repeatable:
            return False
        status = response.status_code
        if status == 409 and call.method == "POST":
            # The first request with this key is still being handled: this retry's answer
            # will be its replay.
            return _error_code(response) == "idempotency_in_progress"
        return status == 503 or (status == 429 and "retry-after" in response.headers)

    def retry_failure(self, call: Call, error: httpx.TransportError) -> bool:
        nothing_sent = isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)
        return nothing_sent or call.repeatable


def http_options(
    base_url: str | None, api_key: str | None, connect_timeout_s: float, read_timeout_s: float
) -> dict[str, Any]:
    """httpx's options for a client; the URL and key default to SCRIBES_API_URL and
    SCRIBES_API_KEY, read by the settings as everywhere else."""
    if base_url is None or api_key is None:
        from rag.settings import Settings

        settings = Settings()
        base_url = base_url or settings.api_url
        if api_key is None and settings.api_key is not None:
            api_key = settings.api_key.get_secret_value()
    return {
        "base_url": base_url.rstrip("/"),
        "headers": {"Authorization": f"Bearer {api_key}"} if api_key else {},
        # No pool timeout: many waits at once queue for a connection rather than fail.
        "timeout": httpx.Timeout(
            connect=connect_timeout_s, read=read_timeout_s, write=read_timeout_s, pool=None
        ),
    }


def _error_code(response: httpx.Response) -> str | None:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError, httpx.ResponseNotRead):
        return None
    return str(error.get("code")) if isinstance(error, dict) else None


def retry_after_s(response: httpx.Response) -> float | None:
    """Retry-After in seconds, given as seconds or as an HTTP date."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return (when - datetime.now(UTC)).total_seconds()


def answer_of(response: httpx.Response) -> Any:
    """The JSON of a success; an `ApiError` from the error object of anything else."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if response.status_code < 400:
        return body
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    details = {k: v for k, v in error.items() if k not in ("code", "message")}
    raise ApiError(
        response.status_code,
        str(error.get("code", "http_error")),
        str(error.get("message") or response.text[:200] or response.reason_phrase),
        details=details,
        retry_after_s=retry_after_s(response),
    )


def unreachable(base_url: str, error: httpx.TransportError) -> Unreachable:
    where = f"Scribes API at {redact_url(base_url)}"
    kind = error.__class__.__name__
    if isinstance(error, httpx.ReadTimeout | httpx.WriteTimeout):
        return Unreachable(f"{where} did not answer in time ({kind}); is it overloaded?")
    return Unreachable(
        f"{where} is not reachable ({kind}); start it with `scribes up` or set SCRIBES_API_URL"
    )


class WaitPlan:
    """The long polls of one `wait`: each asks for at most 30 s and no more than is left.

    An API that answers a long poll at once (an older one, or a proxy that cuts it short)
    would turn the loop into a spin: after such an answer, `pause_s` paces the next poll,
    from 50 ms up to 1 s.
    """

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.deadline = clock() + timeout_s
        self._pause_s = 0.05

    def next_wait_s(self) -> int | None:
        """Whole seconds to ask for next, or None when the time is up."""
        left = self.deadline - self._clock()
        if left <= 0:
            return None
        return min(MAX_WAIT_S, math.ceil(left))

    def pause_s(self, asked_s: int, took_s: float) -> float:
        if took_s >= asked_s / 2:
            self._pause_s = 0.05
            return 0.0
        pause, self._pause_s = self._pause_s, min(self._pause_s * 2, 1.0)
        return min(pause, max(self.deadline - self._clock(), 0.0))


def idempotency_key(given: str | None) -> dict[str, str]:
    return {"Idempotency-Key": given or uuid.uuid4().hex}


def _id(value: str) -> str:
    return quote(value, safe="")


def submit(
    question: str,
    *,
    top_k: int | None,
    cache: CacheMode | None,
    callback_url: str | None,
    key: str | None,
    wait_s: float | None = None,
) -> Call:
    """The submit; with `wait_s`, one that the API holds until the job finishes or
    `wait_s` passes (`Prefer: wait`), as a long poll."""
    body = Question(question, top_k, cache, callback_url).to_json()
    headers = idempotency_key(key)
    if wait_s is None:
        return Call("POST", "/v1/questions", body=body, headers=headers)
    return Call(
        "POST",
        "/v1/questions",
        body=body,
        headers={**headers, "Prefer": f"wait={wait_s:g}"},
        read_timeout_s=wait_s + LONG_POLL_MARGIN_S,
    )


def batches(questions: Sequence[str | Question], key: str | None) -> list[Call]:
    """One request per 100 questions; a key given is suffixed per batch, so it stays unique."""
    items = [q if isinstance(q, Question) else Question(q) for q in questions]
    if not items:
        raise ValueError("submit_many needs at least one question")
    calls = []
    for start in range(0, len(items), MAX_BATCH):
        part = items[start : start + MAX_BATCH]
        batch_key = f"{key}-{start // MAX_BATCH}" if key and len(items) > MAX_BATCH else key
        calls.append(
            Call(
                "POST",
                "/v1/questions:batch",
                body={"questions": [q.to_json() for q in part]},
                headers=idempotency_key(batch_key),
            )
        )
    return calls


def poll(job_id: str, wait_s: int | None = None) -> Call:
    if wait_s is None:
        return Call("GET", f"/v1/questions/{_id(job_id)}")
    return Call(
        "GET",
        f"/v1/questions/{_id(job_id)}",
        params={"wait": str(wait_s)},
        read_timeout_s=wait_s + LONG_POLL_MARGIN_S,
    )


def many(job_ids: Sequence[str]) -> list[Call]:
    return [
        Call("GET", "/v1/questions", params={"ids": ",".join(job_ids[i : i + MAX_BATCH])})
        for i in range(0, len(job_ids), MAX_BATCH)
    ]


def cancel(job_id: str) -> Call:
    return Call("DELETE", f"/v1/questions/{_id(job_id)}")


def events(job_id: str, last_id: str | None, read_timeout_s: float) -> Call:
    headers = {"Accept": "text/event-stream"}
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    return Call(
        "GET", f"/v1/questions/{_id(job_id)}/events", headers=headers, read_timeout_s=read_timeout_s
    )


def ingest(
    title: str,
    text: str,
    *,
    document_id: str | None,
    metadata: dict[str, Any] | None,
    key: str | None,
) -> Call:
    body: dict[str, Any] = {"title": title, "text": text}
    if document_id is not None:
        body["id"] = document_id
    if metadata is not None:
        body["metadata"] = metadata
    return Call("POST", "/v1/documents", body=body, headers=idempotency_key(key))


def document(document_id: str) -> Call:
    return Call("GET", f"/v1/documents/{_id(document_id)}")


def usage(start: date | None, end: date | None) -> Call:
    params = {}
    if start is not None:
        params["from"] = start.isoformat()
    if end is not None:
        params["to"] = end.isoformat()
    return Call("GET", "/v1/usage", params=params)
