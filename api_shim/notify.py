"""Waiting for jobs without a thread or a sleep loop: one pub/sub connection per API process.

Every move of a job record is published on the job's channel (`rag.records.jobs`). A long
poll or an event stream asks `JobWatcher.watch(job_id)` for a `Watch`: the watcher subscribes
the process's one pub/sub connection to that channel (once, however many requests wait on the
job), waits for Redis to confirm it, and only then does the request read the record, so that
no move can fall between the read and the subscription. A message on the channel sets each of
its watches; the request reads the record or the stream again.

A thousand waiting requests are a thousand coroutines and one connection, never a thread
each. If the pub/sub connection drops, every watch is woken when it is back (a move may have
been missed meanwhile), and a watch's `wait` is also bounded by its caller: a long poll reads
the record again at most every `RECHECK_S`, the backstop should a message ever be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from rag.keys import job_events_key, job_key
from rag.records.jobs import JobEvent, JobRecord, decode_job, read_events

__all__ = ["RECHECK_S", "JobWatcher", "LiveJobs", "Watch"]

log = logging.getLogger("scribes.api")

# How long a waiting request trusts the channel before reading the record again anyway.
RECHECK_S = 10.0
# How long to wait for Redis to confirm a subscription before reading without it.
_CONFIRM_S = 5.0


class Watch:
    """Set whenever the job moves; `wait` returns True on a move, False at the timeout.

    `ended` says whether what woke it may have ended the job: its `done` event, or a
    (re)subscription after which any move may have been missed. A waiter that wants only
    the finished job reads the record then, and not at every stage or piece of text."""

    def __init__(self) -> None:
        self._moved = asyncio.Event()
        self._ended = False

    def notify(self, kind: str | None = None) -> None:
        """Wake the waiter; `kind` is the event published (None: anything may have moved)."""
        if kind is None or kind == "done":
            self._ended = True
        self._moved.set()

    def reset(self) -> None:
        self._moved.clear()
        self._ended = False

    async def wait(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._moved.wait(), timeout=max(0.0, timeout_s))
        except TimeoutError:
            return False
        self._moved.clear()
        return True

    def ended(self) -> bool:
        """Whether the job may have ended since the last call; clears it."""
        ended, self._ended = self._ended, False
        return ended


class JobWatcher:
    """The process's subscriptions to job channels, shared by every waiting request."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._watches: dict[str, set[Watch]] = {}
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        # A channel of this process's own keeps the connection subscribed while no job is.
        self._idle_channel = f"scribes:api:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = asyncio.Lock()
        # Set once the connection is made and listened on: a subscription made before then
        # would race the reader to make the connection, and might land on one nobody reads.
        self._listening = asyncio.Event()

    @property
    def waiting(self) -> int:
        """Requests waiting on a job now."""
        return sum(len(watches) for watches in self._watches.values())

    async def start(self) -> None:
        """Start listening; Redis may be down now (the API then answers 503 until it is up)."""
        self._pubsub = self._redis.pubsub()
        self._reader = asyncio.create_task(self._read(), name="scribes-job-watcher")

    async def close(self) -> None:
        """Stop listening; bounded, so that a Redis that is away never holds a shutdown."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, TimeoutError):
                await asyncio.wait_for(self._reader, timeout=2)
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(self._pubsub.aclose(), timeout=2)

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[Watch]:
        """A `Watch` on the job, subscribed before this yields; read the record after."""
        channel = job_events_key(job_id)
        watch = Watch()
        async with self._lock:
            first = channel not in self._watches
            self._watches.setdefault(channel, set()).add(watch)
            confirmed = self._confirmed.get(channel)
            if first:
                if not self._listening.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._listening.wait(), timeout=_CONFIRM_S)
                confirmed = asyncio.get_running_loop().create_future()
                self._confirmed[channel] = confirmed
                try:
                    await self._pubsub.subscribe(channel)
                except RedisError:
                    log.warning("could not subscribe to %s; the request reads on a timer", channel)
                    confirmed.set_result(None)
        try:
            if confirmed is not None and not confirmed.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(confirmed), timeout=_CONFIRM_S)
            # The confirmation woke it; what came before, the caller's first read sees.
            watch.reset()
            yield watch
        finally:
            async with self._lock:
                watches = self._watches.get(channel)
                if watches is not None:
                    watches.discard(watch)
                    if not watches:
                        del self._watches[channel]
                        self._confirmed.pop(channel, None)
                        with contextlib.suppress(RedisError):
                            await self._pubsub.unsubscribe(channel)

    async def _read(self) -> None:
        while True:
            try:
                await self._pubsub.subscribe(self._idle_channel)
                self._listening.set()
                break
            except (RedisError, OSError) as exc:
                log.warning("job notifications not available yet (%s); retrying", exc)
                await asyncio.sleep(1.0)
        failures = 0
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                # The connection is re-made (and its channels subscribed again) by the next
                # read; a move published meanwhile is lost, so every watch looks again.
                if not failures:
                    log.warning("job notifications interrupted (%s); reconnecting", exc)
                failures += 1
                self._wake_all()
                await asyncio.sleep(min(5.0, 0.5 * failures))
                continue
            if failures:
                log.warning("job notifications back after %d failed reads", failures)
                failures = 0
            if message is None:
                continue
            kind, channel = message.get("type"), message.get("channel")
            if kind == "subscribe":
                confirmed = self._confirmed.get(channel)
                if confirmed is not None and not confirmed.done():
                    confirmed.set_result(None)
                # A subscription made again after a reconnect: what it missed, it reads now.
                for watch in self._watches.get(channel, ()):
                    watch.notify()
            elif kind == "message":
                event = message.get("data")
                for watch in self._watches.get(channel, ()):
                    watch.notify(event if isinstance(event, str) else None)

    def _wake_all(self) -> None:
        for watches in self._watches.values():
            for watch in watches:
                watch.notify()


class LiveJobs:
    """Job records read from the event loop (no thread), and waits on them."""

    def __init__(self, redis: Redis, watcher: JobWatcher) -> None:
        self._redis = redis
        self.watcher = watcher

    async def get(self, job_id: str) -> JobRecord | None:
        raw: dict[str, str] = await self._redis.hgetall(job_key(job_id))  # type: ignore[assignment]
        return decode_job(raw) if raw else None

    async def get_many(self, job_ids: list[str]) -> list[JobRecord | None]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(job_key(job_id))
            rows: list[dict[str, str]] = await pipe.execute()
        return [decode_job(raw) if raw else None for raw in rows]

    async def events(self, job_id: str, *, after: str | None) -> list[JobEvent]:
        start = f"({after}" if after else "-"
        entries: Any = await self._redis.xrange(job_events_key(job_id), start, "+", count=500)
        return read_events(entries)

    async def wait_finished(self, job_id: str, *, timeout_s: float) -> JobRecord | None:
        """The job once it has finished, or as it is when `timeout_s` runs out.

        The record is read when the job may have ended, not at each of its moves: a record
        is a few kilobytes (the vector, the passages), and an answer streamed by the model
        moves it at every piece of text."""
        deadline = time.monotonic() + timeout_s
        async with self.watcher.watch(job_id) as watch:
            job = await self.get(job_id)
            moved_since_read = False
            while job is not None and not job.finished:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if await watch.wait(min(left, RECHECK_S)) and not watch.ended():
                    moved_since_read = True  # a stage or text: not the end yet
                    continue
                job, moved_since_read = await self._read_again(job_id, job, deadline), False
            if moved_since_read:
                # The wait ran out: the job as it is now, stage and all.
                job = await self._read_again(job_id, job, deadline)
            return job

    async def _read_again(
        self, job_id: str, last: JobRecord | None, deadline: float
    ) -> JobRecord | None:
        try:
            return await self.get(job_id)
        except (RedisError, OSError):
            # Redis is away (restarting): the wait goes on, and the job as last read is the
            # answer should the wait run out first.
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            return last
