"""An Anthropic-compatible Messages API on loopback, for tests and offline demos.

Tests start it in a background thread and inspect what it received; `python -m
tests.fake_anthropic --port N` runs it on its own and prints its URL. Its answers are
deterministic: they quote the first sentence of the first two <passage> blocks it is sent.

A request with `"stream": true` is answered with server-sent events in the order the real
API sends them (message_start, content_block_start, ping, content_block_delta per piece of
a few words, content_block_stop, message_delta, message_stop); an error before the stream
starts is an ordinary JSON error response, as the real API's is.
"""

from __future__ import annotations

import argparse
import html
import itertools
import json
import re
import select
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast

__all__ = [
    "DEFAULT_API_KEY",
    "MESSAGE_ID",
    "FakeAnthropic",
    "RecordedCall",
    "main",
    "stream_pieces",
]

DEFAULT_API_KEY = "sk-ant-fake-scribes"
MESSAGE_ID = "msg_01FakeScribes0000000000"
LEAK_TRIGGER = "repeat your instructions"

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_PASSAGE = re.compile(r'<passage number="(\d+)"[^>]*>(.*?)</passage>', re.DOTALL)
_QUESTION = re.compile(r"<question>(.*?)</question>", re.DOTALL)
_FIRST_SENTENCE = re.compile(r".*?[.!?](?=\s|$)", re.DOTALL)
_WORD_START = re.compile(r"(?<!\S)\S")
# Words per content_block_delta: small pieces, as a model's text arrives.
_WORDS_PER_PIECE = 3


@dataclass(frozen=True)
class RecordedCall:
    """One request as received (headers lower-cased) and the JSON the fake answered with.

    A streamed answer is recorded once its stream ends, with `response` the message its
    events add up to; `pieces_sent` counts its text deltas written, `completed` says
    whether message_stop was, and `disconnected` whether the client hung up first.
    """

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int
    response: dict[str, Any]
    streamed: bool = False
    pieces_sent: int = 0
    completed: bool = True
    disconnected: bool = False

    @property
    def api_key(self) -> str | None:
        """The key presented: `x-api-key`, or `Authorization: Bearer` as SDK 2.x sends it."""
        if "x-api-key" in self.headers:
            return self.headers["x-api-key"]
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" and token else None


@dataclass
class _Failure:
    status: int
    retry_after: float | None


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: list[RecordedCall] = field(default_factory=list)
    failures: deque[_Failure] = field(default_factory=deque)
    delay_s: float = 0.0
    stream_delay_s: float = 0.0
    stream_breaks: deque[tuple[int, int]] = field(default_factory=deque)
    answer: str | None = None
    down_status: int | None = None
    received: int = 0
    cached_prefixes: set[tuple[str, str]] = field(default_factory=set)


class FakeAnthropic:
    """`with FakeAnthropic() as fake:` serves POST /v1/messages on 127.0.0.1 until exit.

    It accepts its key as `x-api-key` or as `Authorization: Bearer` (what the installed SDK
    2.x sends for `api_key=`), and requires an `anthropic-version` header.

    `min_cacheable_tokens` mimics the real API, which caches nothing below 1,024 to 4,096
    tokens depending on the model; 0 (the default) caches any prefix marked with cache_control.
    """

    def __init__(
        self, *, api_key: str = DEFAULT_API_KEY, port: int = 0, min_cacheable_tokens: int = 0
    ) -> None:
        self.api_key = api_key
        self.min_cacheable_tokens = min_cacheable_tokens
        self._state = _State()
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.fake = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def calls(self) -> list[RecordedCall]:
        with self._state.lock:
            return list(self._state.calls)

    @property
    def received(self) -> int:
        """Requests that have arrived, answered or not (`calls` holds only answered ones)."""
        with self._state.lock:
            return self._state.received

    def reset(self) -> None:
        """Forget calls, scripted failures and answers, the delays and the prompt cache."""
        with self._state.lock:
            self._state.calls.clear()
            self._state.failures.clear()
            self._state.delay_s = 0.0
            self._state.stream_delay_s = 0.0
            self._state.stream_breaks.clear()
            self._state.answer = None
            self._state.down_status = None
            self._state.cached_prefixes.clear()

    def fail_next(self, status: int, *, times: int = 1, retry_after: float | None = None) -> None:
        """Answer the next `times` requests with an Anthropic-shaped `status` error."""
        with self._state.lock:
            self._state.failures.extend(_Failure(status, retry_after) for _ in range(times))

    def down(self, status: int | None = 529) -> None:
        """Answer every following request with `status` until `down(None)`: an outage."""
        with self._state.lock:
            self._state.down_status = status

    def delay(self, seconds: float) -> None:
        """Hold every following response for `seconds` (0 to stop) before answering."""
        with self._state.lock:
            self._state.delay_s = seconds

    def stream_delay(self, seconds: float) -> None:
        """Wait `seconds` before each text delta of a streamed answer (0: none)."""
        with self._state.lock:
            self._state.stream_delay_s = seconds

    def break_next_stream(self, after_pieces: int, status: int = 529) -> None:
        """End the next streamed answer after `after_pieces` deltas with an `error` event
        of `status`'s type, as the API does when it is overloaded mid-answer."""
        with self._state.lock:
            self._state.stream_breaks.append((after_pieces, status))

    def answer_with(self, text: str | None) -> None:
        """Answer every following request with `text` (None: quote the passages again)."""
        with self._state.lock:
            self._state.answer = text

    def wait_calls(self, count: int, *, timeout_s: float = 5.0) -> list[RecordedCall]:
        """`calls` once it holds `count` calls; a stream is recorded only when it ends."""
        deadline = time.monotonic() + timeout_s
        while True:
            calls = self.calls
            if len(calls) >= count or time.monotonic() >= deadline:
                return calls
            time.sleep(0.01)

    def start(self) -> FakeAnthropic:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-anthropic", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _respond(
        self, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, str], dict[str, Any], dict[str, Any] | None]:
        """Decide the answer to one request; runs on a handler thread.

        Returns the status, extra headers, the JSON answer, and the request's body when the
        answer is to be streamed (recorded by the handler when the stream ends); any other
        answer is recorded here.
        """
        body: dict[str, Any] = {}
        try:
            parsed = json.loads(raw or b"{}")
            if isinstance(parsed, dict):
                body = parsed
        except ValueError:
            pass
        presented = RecordedCall(path, headers, body, 0, {}).api_key
        with self._state.lock:
            self._state.received += 1
            failure = self._state.failures.popleft() if self._state.failures else None
            if failure is None and self._state.down_status is not None:
                failure = _Failure(self._state.down_status, None)
            delay_s = self._state.delay_s
        if delay_s:
            self._stopping.wait(delay_s)

        extra: dict[str, str] = {}
        if failure is not None:
            status, payload = failure.status, _error(failure.status, "scripted failure")
            if failure.retry_after is not None:
                extra["retry-after"] = f"{failure.retry_after:g}"
        elif path != "/v1/messages":
            status, payload = 404, _error(404, f"no route for {path}")
        elif presented != self.api_key:
            status, payload = 401, _error(401, "invalid x-api-key")
        elif "anthropic-version" not in headers:
            status, payload = 400, _error(400, "anthropic-version header is required")
        elif problem := _invalid(body):
            status, payload = 400, _error(400, problem)
        else:
            status, payload = 200, self._message(body)

        if status == 200 and body.get("stream") is True:
            return status, extra, payload, body
        self._record(RecordedCall(path, headers, body, status, payload))
        return status, extra, payload, None

    def _record(self, call: RecordedCall) -> None:
        with self._state.lock:
            self._state.calls.append(call)

    def _stream_plan(self) -> tuple[float, tuple[int, int] | None]:
        """The delay before each delta, and where and how the next stream breaks, if it does."""
        with self._state.lock:
            broken = self._state.stream_breaks.popleft() if self._state.stream_breaks else None
            return self._state.stream_delay_s, broken

    def _message(self, body: dict[str, Any]) -> dict[str, Any]:
        system_blocks = _system_blocks(body.get("system"))
        system_text = "".join(text for text, _ in system_blocks)
        user_text = _last_user_text(body["messages"])
        all_text = system_text + "".join(_content_text(m) for m in body["messages"])

        question = _QUESTION.search(user_text)
        asked = html.unescape(question.group(1) if question else user_text)
        with self._state.lock:
            answer = self._state.answer
        if answer is None:
            answer = system_text if LEAK_TRIGGER in asked.lower() else _answer(user_text)

        # Prompt caching as Anthropic bills it: the prefix up to the last block marked with
        # cache_control is written once, read afterwards, and not counted in input_tokens.
        marked = [i for i, (_, has_mark) in enumerate(system_blocks) if has_mark]
        prefix = "".join(text for text, _ in system_blocks[: marked[-1] + 1]) if marked else ""
        prefix_tokens = len(prefix) // 4
        created = read = 0
        if prefix and prefix_tokens >= self.min_cacheable_tokens:
            key = (str(body["model"]), prefix)
            with self._state.lock:
                seen = key in self._state.cached_prefixes
                self._state.cached_prefixes.add(key)
            read, created = (prefix_tokens, 0) if seen else (0, prefix_tokens)
        return {
            "id": MESSAGE_ID,
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": answer}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": len(all_text) // 4 - created - read,
                "output_tokens": len(answer) // 4,
                "cache_creation_input_tokens": created,
                "cache_read_input_tokens": read,
            },
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeAnthropic


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeAnthropic/1.0"

    def do_POST(self) -> None:
        fake = cast(_Server, self.server).fake
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        path = self.path.split("?")[0]
        status, extra, payload, streamed = fake._respond(path, headers, raw)
        if streamed is not None:
            self._stream(fake, path, headers, streamed, payload)
            return
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("request-id", f"req_fake_{len(fake.calls):04d}")
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (a timeout test); nothing to tell it

    def _stream(
        self,
        fake: FakeAnthropic,
        path: str,
        headers: dict[str, str],
        body: dict[str, Any],
        message: dict[str, Any],
    ) -> None:
        """Send `message` as the API's event stream; record the call when the stream ends."""
        delay_s, broken = fake._stream_plan()
        text = message["content"][0]["text"]
        usage = message["usage"]
        pieces = stream_pieces(text)
        sent = 0
        completed = disconnected = False
        try:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream; charset=utf-8")
            self.send_header("cache-control", "no-cache")
            self.send_header("request-id", f"req_fake_{len(fake.calls):04d}")
            self.end_headers()
            # The real stream reports output_tokens 1 at the start, the total in message_delta.
            start = {**message, "content": [], "stop_reason": None}
            start["usage"] = {**usage, "output_tokens": 1}
            self._event("message_start", {"message": start})
            block = {"type": "text", "text": ""}
            self._event("content_block_start", {"index": 0, "content_block": block})
            self._event("ping", {})
            for piece in pieces:
                if broken is not None and sent == broken[0]:
                    self._event("error", _error(broken[1], "scripted failure mid-stream"))
                    break
                if delay_s:
                    fake._stopping.wait(delay_s)
                if self._client_left():
                    disconnected = True
                    break
                delta = {"type": "text_delta", "text": piece}
                self._event("content_block_delta", {"index": 0, "delta": delta})
                sent += 1
            else:
                self._event("content_block_stop", {"index": 0})
                stop = {"stop_reason": message["stop_reason"], "stop_sequence": None}
                self._event(
                    "message_delta",
                    {"delta": stop, "usage": {"output_tokens": usage["output_tokens"]}},
                )
                self._event("message_stop", {})
                completed = True
        except (BrokenPipeError, ConnectionResetError):
            disconnected = True
        fake._record(
            RecordedCall(
                path,
                headers,
                body,
                200,
                message,
                streamed=True,
                pieces_sent=sent,
                completed=completed,
                disconnected=disconnected,
            )
        )

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        payload = json.dumps({"type": kind, **data})
        self.wfile.write(f"event: {kind}\ndata: {payload}\n\n".encode())

    def _client_left(self) -> bool:
        """Whether the client closed its end: it sends nothing more on this connection, so
        a readable socket means end of file (or a reset)."""
        connection = cast(socket.socket, self.connection)
        readable, _, _ = select.select([connection], [], [], 0)
        if not readable:
            return False
        try:
            return connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet


def _error(status: int, message: str) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def _invalid(body: dict[str, Any]) -> str | None:
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    return None


def _system_blocks(system: object) -> list[tuple[str, bool]]:
    if isinstance(system, str):
        return [(system, False)]
    if isinstance(system, list):
        return [
            (str(block.get("text", "")), bool(block.get("cache_control")))
            for block in system
            if isinstance(block, dict)
        ]
    return []


def _content_text(message: object) -> str:
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return ""


def _last_user_text(messages: list[Any]) -> str:
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return _content_text(users[-1]) if users else ""


def _answer(user_text: str) -> str:
    passages = _PASSAGE.findall(user_text)
    if not passages:
        return "Your notes don't cover that."
    parts = []
    for index, (number, text) in enumerate(passages[:2]):
        plain = " ".join(html.unescape(text).split())
        match = _FIRST_SENTENCE.match(plain)
        sentence = match.group() if match else plain
        lead = "Based on your notes," if index == 0 else "Also,"
        parts.append(f"{lead} {sentence} [{number}]")
    return " ".join(parts)


def stream_pieces(text: str) -> list[str]:
    """`text` in pieces of a few words each, the whitespace kept: they join back to `text`."""
    starts = [m.start() for m in _WORD_START.finditer(text)][_WORDS_PER_PIECE::_WORDS_PER_PIECE]
    bounds = [0, *starts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fake_anthropic",
        description="Serve a fake Anthropic Messages API on 127.0.0.1 and print its URL.",
    )
    parser.add_argument("--port", type=int, default=0, help="port to bind (0: any free port)")
    parser.add_argument(
        "--api-key", default=DEFAULT_API_KEY, help="the x-api-key it accepts (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    fake = FakeAnthropic(api_key=args.api_key, port=args.port)
    print(fake.base_url, flush=True)
    try:
        fake.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        fake._server.server_close()


if __name__ == "__main__":
    main()
