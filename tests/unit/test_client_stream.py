"""The client's event stream: decoded from a real SSE server on loopback that drops the
first connection mid-stream, and picked up again where it broke off (Last-Event-ID)."""

from __future__ import annotations

import asyncio
import json
import socket
from http.server import BaseHTTPRequestHandler

import pytest

from scribes.client import (
    AsyncScribes,
    Event,
    JobEvent,
    RestartEvent,
    Retries,
    Scribes,
    StageEvent,
    TextEvent,
    Unreachable,
)
from tests.scripted_api import Received, ScriptedApi, finished_job

FAST = Retries(attempts=3, backoff_s=0.02, max_backoff_s=0.05)
ANSWER = "From your notes: 37 seeds [1]."


def _start(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()


def _chunk(handler: BaseHTTPRequestHandler, text: str) -> None:
    raw = text.encode()
    handler.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))
    handler.wfile.flush()


def first_connection(handler: BaseHTTPRequestHandler, _: Received) -> None:
    """Two events, then the connection dies without its closing chunk, as a proxy or a
    restarted API would leave it."""
    _start(handler)
    _chunk(handler, ": ping\n\n")
    _chunk(handler, 'id: 1-0\nevent: stage\ndata: {"stage": "generate", "status": "running"}\n\n')
    _chunk(handler, 'id: 2-0\r\nevent: text\r\ndata:{"text": "From your notes: "}\r\n\r\n')
    _chunk(handler, 'id: 2-5\nevent: text\ndata: {"text": "never fin')  # cut mid-event
    handler.connection.shutdown(socket.SHUT_RDWR)
    handler.close_connection = True


def second_connection(handler: BaseHTTPRequestHandler, _: Received) -> None:
    """The rest after 2-0, a kind of event this client does not know, and the job split over
    several data lines; then the end of the stream."""
    _start(handler)
    _chunk(handler, 'id: 3-0\nevent: text\ndata: {"text": "37 seeds [1]."}\n\n')
    _chunk(handler, 'id: 3-1\nevent: shiny_new_kind\ndata: {"x": 1}\n\n')
    _chunk(handler, 'id: 3-2\nevent: note\ndata: {"note": "all done"}\n\n')
    job = json.dumps(finished_job("j1", ANSWER), indent=1)
    lines = "".join(f"data: {line}\n" for line in job.splitlines())
    _chunk(handler, f": ping\nid: 4-0\nevent: job\n{lines}\n")
    _chunk(handler, "")


def restarted(handler: BaseHTTPRequestHandler, _: Received) -> None:
    """The model broke off after a piece and wrote the whole answer again."""
    _start(handler)
    _chunk(handler, 'id: 1-0\nevent: text\ndata: {"text": "From your notes: 36"}\n\n')
    _chunk(handler, "id: 2-0\nevent: restart\ndata: {}\n\n")
    _chunk(handler, f"id: 2-1\nevent: text\ndata: {json.dumps({'text': ANSWER})}\n\n")
    job = json.dumps(finished_job("j1", ANSWER))
    _chunk(handler, f"id: 3-0\nevent: job\ndata: {job}\n\n")
    _chunk(handler, "")


def test_a_restart_tells_the_reader_to_drop_the_text_before_it() -> None:
    with ScriptedApi([restarted]) as api, Scribes(api.url, api_key="", retries=FAST) as client:
        events = list(client.stream("j1"))
    assert [type(e).__name__ for e in events] == [
        "TextEvent",
        "RestartEvent",
        "TextEvent",
        "JobEvent",
    ]
    assert events[1] == RestartEvent("2-0")
    last = max(n for n, e in enumerate(events) if isinstance(e, RestartEvent))
    kept = "".join(e.text for e in events[last:] if isinstance(e, TextEvent))
    final = events[-1]
    assert isinstance(final, JobEvent) and kept == final.job.answer


def _check(events: list[Event], api: ScriptedApi) -> None:
    assert [type(e).__name__ for e in events] == [
        "StageEvent",
        "TextEvent",
        "TextEvent",
        "NoteEvent",
        "JobEvent",
    ]
    assert events[0] == StageEvent("1-0", "generate", "running")
    assert [e.id for e in events] == ["1-0", "2-0", "3-0", "3-2", "4-0"]
    final = events[-1]
    assert isinstance(final, JobEvent) and final.job.succeeded and final.job.id == "j1"
    assert "".join(e.text for e in events if isinstance(e, TextEvent)) == final.job.answer
    first, second = api.received
    assert first.path == second.path == "/v1/questions/j1/events"
    assert first.headers["accept"] == "text/event-stream"
    assert "last-event-id" not in first.headers
    # The half-sent event 2-5 never counted: the stream resumes after the last whole one.
    assert second.headers["last-event-id"] == "2-0"


def test_a_dropped_stream_resumes_after_the_last_event_and_ends_with_the_job() -> None:
    with (
        ScriptedApi([first_connection, second_connection]) as api,
        Scribes(api.url, api_key="", retries=FAST) as client,
    ):
        events = list(client.stream("j1"))
    _check(events, api)


def test_the_async_stream_resumes_the_same_way() -> None:
    async def read(url: str) -> list[Event]:
        async with AsyncScribes(url, api_key="", retries=FAST) as client:
            return [event async for event in client.stream("j1")]

    with ScriptedApi([first_connection, second_connection]) as api:
        events = asyncio.run(read(api.url))
    _check(events, api)


def test_a_stream_that_keeps_breaking_off_gives_up() -> None:
    def dropping(handler: BaseHTTPRequestHandler, _: Received) -> None:
        _start(handler)
        _chunk(handler, ": ping\n\n")
        handler.connection.shutdown(socket.SHUT_RDWR)
        handler.close_connection = True

    seen: list[Event] = []
    with (
        ScriptedApi([dropping]) as api,
        Scribes(api.url, api_key="", retries=FAST) as client,
        pytest.raises(Unreachable) as caught,
    ):
        seen.extend(client.stream("j1"))
    assert not seen and len(api.received) == FAST.attempts
    assert caught.value.message.startswith(
        f"the event stream of question j1 at {api.url} broke off 3 times in a row ("
    )
