"""`Scribes`: the blocking client (the `scribes` command's)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import date
from typing import Any

import httpx

from scribes.client import calls
from scribes.client.calls import Call, Retries, WaitPlan
from scribes.client.errors import Timeout, Unreachable
from scribes.client.events import Event, JobEvent, SseDecoder, typed_event
from scribes.client.models import CacheMode, Document, Job, Question, UsageReport

__all__ = ["Scribes"]


class Scribes:
    """A client of one Scribes API: `Scribes()` reads SCRIBES_API_URL and SCRIBES_API_KEY;
    pass `api_key=""` for none. Close it, or use it in a `with` block."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        stream_read_timeout_s: float = 60.0,
        retries: Retries | None = None,
    ) -> None:
        options = calls.http_options(base_url, api_key, connect_timeout_s, read_timeout_s)
        self.base_url: str = options["base_url"]
        self.retries = retries or Retries()
        self._stream_read_timeout_s = stream_read_timeout_s
        self._http = httpx.Client(**options)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Scribes:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def ask(
        self,
        question: str,
        *,
        top_k: int | None = None,
        cache: CacheMode | None = None,
        timeout_s: float = 120,
    ) -> Job:
        """Submit and wait; a cached answer returns at once. A failed job is returned, not
        raised: look at `job.status` and `job.error`."""
        # The submit itself waits first (`Prefer: wait`), then long polls if need be.
        call = calls.submit(
            question,
            top_k=top_k,
            cache=cache,
            callback_url=None,
            key=None,  # a fresh Idempotency-Key: safe to retry
            wait_s=min(calls.MAX_WAIT_S, timeout_s),
        )
        job = Job.from_json(self._send(call))
        return job if job.finished else self.wait(job.id, timeout_s=timeout_s)

    def submit(
        self,
        question: str,
        *,
        top_k: int | None = None,
        cache: CacheMode | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """The queued job, or the finished one when the exact cache answered."""
        call = calls.submit(
            question, top_k=top_k, cache=cache, callback_url=callback_url, key=idempotency_key
        )
        return Job.from_json(self._send(call), question=question)

    def submit_many(
        self, questions: Sequence[str | Question], *, idempotency_key: str | None = None
    ) -> list[Job]:
        """Submit a batch (100 a request); the jobs in the questions' order."""
        jobs: list[Job] = []
        for call in calls.batches(questions, idempotency_key):
            sent = call.body["questions"]
            answer = self._send(call)["jobs"]
            jobs += [
                Job.from_json(j, question=q["question"]) for j, q in zip(answer, sent, strict=True)
            ]
        return jobs

    def get(self, job_id: str) -> Job:
        return Job.from_json(self._send(calls.poll(job_id)))

    def get_many(self, job_ids: Sequence[str]) -> list[Job]:
        """The jobs that exist, in the order asked; unknown ids are left out."""
        jobs: list[Job] = []
        for call in calls.many(job_ids):
            jobs += [Job.from_json(j) for j in self._send(call)["jobs"]]
        return jobs

    def wait(self, job_id: str, *, timeout_s: float = 120) -> Job:
        """Long-poll until the job finishes; `Timeout` (with the last job seen) if it has
        not within `timeout_s`."""
        plan = WaitPlan(timeout_s)
        job: Job | None = None
        while (wait_s := plan.next_wait_s()) is not None:
            started = time.monotonic()
            job = Job.from_json(self._send(calls.poll(job_id, wait_s)))
            if job.finished:
                return job
            time.sleep(plan.pause_s(wait_s, time.monotonic() - started))
        raise Timeout(job or self.get(job_id), timeout_s)

    def cancel(self, job_id: str) -> Job:
        """Stop the job; `ApiError` 409 `already_finished` when it had already finished."""
        return Job.from_json(self._send(calls.cancel(job_id)))

    def stream(self, job_id: str, *, timeout_s: float | None = None) -> Iterator[Event]:
        """The job's events as they happen, ending with its `JobEvent`; a dropped connection
        is picked up again where it broke off (Last-Event-ID). With `timeout_s`, `Timeout`
        once that long has passed without the job finishing."""
        decoder = SseDecoder()
        failures = 0
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            read_s = self._stream_read_timeout_s
            if deadline is not None:
                if (left := deadline - time.monotonic()) <= 0:
                    raise Timeout(self.get(job_id), timeout_s or 0)
                read_s = min(read_s, left)
            decoder.restart()
            call = calls.events(job_id, decoder.last_id, read_s)
            problem: str
            try:
                response = self._open(call)
                try:
                    for line in response.iter_lines():
                        if deadline is not None and time.monotonic() > deadline:
                            raise Timeout(self.get(job_id), timeout_s or 0)
                        sse = decoder.feed(line)
                        if sse is None:
                            continue
                        failures = 0
                        event = typed_event(sse)
                        if event is not None:
                            yield event
                            if isinstance(event, JobEvent):
                                return
                finally:
                    response.close()
                problem = "it ended before the job finished"
            except httpx.TransportError as exc:
                problem = exc.__class__.__name__
            if failures + 1 >= self.retries.attempts:
                raise Unreachable(
                    f"the event stream of question {job_id} at {self.base_url} broke off "
                    f"{failures + 1} times in a row ({problem}); try again later"
                )
            retry_s = decoder.retry_ms / 1000 if decoder.retry_ms else None
            time.sleep(self.retries.delay_s(failures, retry_s))
            failures += 1

    def ingest(
        self,
        title: str,
        text: str,
        *,
        document_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Document:
        """Queue a note for indexing; the same id again replaces it. Poll `document()`."""
        call = calls.ingest(
            title, text, document_id=document_id, metadata=metadata, key=idempotency_key
        )
        return Document.from_json(self._send(call))

    def document(self, document_id: str) -> Document:
        return Document.from_json(self._send(calls.document(document_id)))

    def usage(self, start: date | None = None, end: date | None = None) -> UsageReport:
        """The key's tenant's usage, UTC days from `start` to `end` (both today by default)."""
        return UsageReport.from_json(self._send(calls.usage(start, end)))

    # Operators' and the command's calls, answered as the API's JSON.

    def ready(self) -> dict[str, Any]:
        return dict(self._send(Call("GET", "/readyz")))

    def status(self) -> dict[str, Any]:
        return dict(self._send(Call("GET", "/v1/status")))

    def reindex(self, *, model: str | None = None, tenant: str | None = None) -> dict[str, Any]:
        body = {k: v for k, v in (("model", model), ("tenant", tenant)) if v is not None}
        return dict(self._send(Call("POST", "/v1/admin/reindex", body=body)))

    def reindex_status(self) -> dict[str, Any]:
        return dict(self._send(Call("GET", "/v1/admin/reindex")))

    def reindex_cancel(self) -> dict[str, Any]:
        return dict(self._send(Call("POST", "/v1/admin/reindex/cancel")))

    def reindex_rollback(self) -> dict[str, Any]:
        return dict(self._send(Call("POST", "/v1/admin/reindex/rollback")))

    def _send(self, call: Call) -> Any:
        return calls.answer_of(self._response(call, stream=False))

    def _open(self, call: Call) -> httpx.Response:
        """A streamed response that succeeded; the caller closes it."""
        response = self._response(call, stream=True)
        if response.status_code >= 400:
            response.read()
            response.close()
            calls.answer_of(response)
        return response

    def _response(self, call: Call, *, stream: bool) -> httpx.Response:
        retry = 0
        while True:
            last_try = retry + 1 >= self.retries.attempts
            try:
                response = self._http.send(call.request(self._http), stream=stream)
            except httpx.TransportError as exc:
                if last_try or not self.retries.retry_failure(call, exc):
                    raise calls.unreachable(self.base_url, exc) from exc
                time.sleep(self.retries.delay_s(retry, None))
            else:
                if last_try or not self.retries.retry_response(call, response):
                    return response
                response.close()
                time.sleep(self.retries.delay_s(retry, calls.retry_after_s(response)))
            retry += 1
