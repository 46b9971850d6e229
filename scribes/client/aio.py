"""`AsyncScribes`: the same client as `Scribes`, for asyncio; the same methods, awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from datetime import date
from typing import Any

import httpx

from scribes.client import calls
from scribes.client.calls import Call, Retries, WaitPlan
from scribes.client.errors import Timeout, Unreachable
from scribes.client.events import Event, JobEvent, SseDecoder, typed_event
from scribes.client.models import CacheMode, Document, Job, Question, UsageReport

__all__ = ["AsyncScribes"]


class AsyncScribes:
    """A client of one Scribes API: `AsyncScribes()` reads SCRIBES_API_URL and
    SCRIBES_API_KEY; pass `api_key=""` for none. Close it, or use `async with`."""

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
        self._http = httpx.AsyncClient(**options)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncScribes:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def ask(
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
        job = Job.from_json(await self._send(call))
        return job if job.finished else await self.wait(job.id, timeout_s=timeout_s)

    async def submit(
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
        return Job.from_json(await self._send(call), question=question)

    async def submit_many(
        self, questions: Sequence[str | Question], *, idempotency_key: str | None = None
    ) -> list[Job]:
        """Submit a batch (100 a request); the jobs in the questions' order."""
        jobs: list[Job] = []
        for call in calls.batches(questions, idempotency_key):
            sent = call.body["questions"]
            answer = (await self._send(call))["jobs"]
            jobs += [
                Job.from_json(j, question=q["question"]) for j, q in zip(answer, sent, strict=True)
            ]
        return jobs

    async def get(self, job_id: str) -> Job:
        return Job.from_json(await self._send(calls.poll(job_id)))

    async def get_many(self, job_ids: Sequence[str]) -> list[Job]:
        """The jobs that exist, in the order asked; unknown ids are left out."""
        jobs: list[Job] = []
        for call in calls.many(job_ids):
            jobs += [Job.from_json(j) for j in (await self._send(call))["jobs"]]
        return jobs

    async def wait(self, job_id: str, *, timeout_s: float = 120) -> Job:
        """Long-poll until the job finishes; `Timeout` (with the last job seen) if it has
        not within `timeout_s`."""
        plan = WaitPlan(timeout_s)
        job: Job | None = None
        while (wait_s := plan.next_wait_s()) is not None:
            started = time.monotonic()
            job = Job.from_json(await self._send(calls.poll(job_id, wait_s)))
            if job.finished:
                return job
            await asyncio.sleep(plan.pause_s(wait_s, time.monotonic() - started))
        raise Timeout(job or await self.get(job_id), timeout_s)

    async def cancel(self, job_id: str) -> Job:
        """Stop the job; `ApiError` 409 `already_finished` when it had already finished."""
        return Job.from_json(await self._send(calls.cancel(job_id)))

    async def stream(self, job_id: str, *, timeout_s: float | None = None) -> AsyncIterator[Event]:
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
                    raise Timeout(await self.get(job_id), timeout_s or 0)
                read_s = min(read_s, left)
            decoder.restart()
            call = calls.events(job_id, decoder.last_id, read_s)
            problem: str
            try:
                response = await self._open(call)
                try:
                    async for line in response.aiter_lines():
                        if deadline is not None and time.monotonic() > deadline:
                            raise Timeout(await self.get(job_id), timeout_s or 0)
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
                    await response.aclose()
                problem = "it ended before the job finished"
            except httpx.TransportError as exc:
                problem = exc.__class__.__name__
            if failures + 1 >= self.retries.attempts:
                raise Unreachable(
                    f"the event stream of question {job_id} at {self.base_url} broke off "
                    f"{failures + 1} times in a row ({problem}); try again later"
                )
            retry_s = decoder.retry_ms / 1000 if decoder.retry_ms else None
            await asyncio.sleep(self.retries.delay_s(failures, retry_s))
            failures += 1

    async def ingest(
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
        return Document.from_json(await self._send(call))

    async def document(self, document_id: str) -> Document:
        return Document.from_json(await self._send(calls.document(document_id)))

    async def usage(self, start: date | None = None, end: date | None = None) -> UsageReport:
        """The key's tenant's usage, UTC days from `start` to `end` (both today by default)."""
        return UsageReport.from_json(await self._send(calls.usage(start, end)))

    async def _send(self, call: Call) -> Any:
        return calls.answer_of(await self._response(call, stream=False))

    async def _open(self, call: Call) -> httpx.Response:
        """A streamed response that succeeded; the caller closes it."""
        response = await self._response(call, stream=True)
        if response.status_code >= 400:
            await response.aread()
            await response.aclose()
            calls.answer_of(response)
        return response

    async def _response(self, call: Call, *, stream: bool) -> httpx.Response:
        retry = 0
        while True:
            last_try = retry + 1 >= self.retries.attempts
            try:
                response = await self._http.send(call.request(self._http), stream=stream)
            except httpx.TransportError as exc:
                if last_try or not self.retries.retry_failure(call, exc):
                    raise calls.unreachable(self.base_url, exc) from exc
                await asyncio.sleep(self.retries.delay_s(retry, None))
            else:
                if last_try or not self.retries.retry_response(call, response):
                    return response
                await response.aclose()
                await asyncio.sleep(self.retries.delay_s(retry, calls.retry_after_s(response)))
            retry += 1
