"""A job's server-sent events, decoded from the stream's lines into typed events.

Written here rather than taken from httpx-sse: that would be a new dependency for forty
lines, and it leaves the reconnect with Last-Event-ID, the part that matters, to us anyway.
The decoder follows the HTML standard's rules: `field: value` lines, a blank line ends an
event, `data` lines join with newlines, a line starting with ":" is a comment (the API's
keep-alive pings), and `id` is remembered across events for the reconnect.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scribes.client.models import Job

__all__ = [
    "Event",
    "JobEvent",
    "NoteEvent",
    "ServerSentEvent",
    "SseDecoder",
    "StageEvent",
    "TextEvent",
    "typed_event",
]


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None
    retry_ms: int | None = None


@dataclass(slots=True)
class SseDecoder:
    """Feed it the stream's lines, without their line endings; it returns each event as its
    blank line completes it. `last_id` is what a reconnect sends as Last-Event-ID: the id of
    the last whole event, never of one the connection cut in half."""

    last_id: str | None = None
    retry_ms: int | None = None
    _id: str | None = None
    _event: str = ""
    _data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None

    def restart(self) -> None:
        """A new connection: forget the half of an event the old one was cut in."""
        self._id, self._event, self._data = self.last_id, "", []

    def _dispatch(self) -> ServerSentEvent | None:
        self.last_id = self._id
        event, data = self._event, self._data
        self._event, self._data = "", []
        if not data:
            return None
        return ServerSentEvent(event or "message", "\n".join(data), self.last_id, self.retry_ms)


@dataclass(frozen=True, slots=True)
class StageEvent:
    """The job moved: `stage` queued, embed, retrieve, generate or done, with its `status`."""

    id: str | None
    stage: str
    status: str


@dataclass(frozen=True, slots=True)
class NoteEvent:
    """Why the job waits, e.g. a retry after a model error."""

    id: str | None
    note: str


@dataclass(frozen=True, slots=True)
class TextEvent:
    """The next piece of the answer, cleaned; the pieces since the last `RestartEvent`
    joined are the final answer."""

    id: str | None
    text: str


@dataclass(frozen=True, slots=True)
class RestartEvent:
    """The model is writing the answer again (its call broke off and was retried, or its
    worker was lost): drop the text received so far."""

    id: str | None


@dataclass(frozen=True, slots=True)
class JobEvent:
    """The finished job: always the stream's last event."""

    id: str | None
    job: Job


Event = StageEvent | NoteEvent | TextEvent | RestartEvent | JobEvent


def typed_event(sse: ServerSentEvent) -> Event | None:
    """The event the API meant, or None for a kind this client does not know (a newer API's)."""
    try:
        data: Any = json.loads(sse.data)
    except ValueError:
        return None
    if not isinstance(data, Mapping):
        return None
    if sse.event == "stage":
        return StageEvent(sse.id, str(data.get("stage", "")), str(data.get("status", "")))
    if sse.event == "note":
        return NoteEvent(sse.id, str(data.get("note") or ""))
    if sse.event == "text":
        return TextEvent(sse.id, str(data.get("text", "")))
    if sse.event == "restart":
        return RestartEvent(sse.id)
    if sse.event == "job":
        return JobEvent(sse.id, Job.from_json(data))
    return None
