"""Hostile and malformed input at the HTTP edge, on a real uvicorn server where it matters.

Slow and chunked clients are played with raw sockets against uvicorn serving the real app
with `api_shim.server`'s options, as `scribes api` does; what a route decides is checked
through FastAPI's TestClient. Redis is the tests' own, database 10, flushed for each test.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from fastapi.testclient import TestClient

from api_shim.app import create_app
from api_shim.server import TIMED_PROTOCOL, uvicorn_options
from rag.settings import Settings
from scribes.localredis import free_port

ROOT = Path(__file__).resolve().parents[2]
KEY = "key-hardening-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON_AUTH = {**AUTH, "Content-Type": "application/json"}
# Twice SCRIBES_DOCUMENT_MAX_BYTES is the most a request body may carry.
DOCUMENT_MAX_BYTES = 1_000
BODY_LIMIT = 2 * DOCUMENT_MAX_BYTES
# The body of a request that reaches the documents route and is refused there, before it
# touches the broker: a 400 `empty_title` proves the body arrived whole.
REACHES_THE_ROUTE = json.dumps({"title": "", "text": "words"}).encode()


@pytest.fixture
def store_url(redis_url: str) -> Iterator[str]:
    url = redis_url.rsplit("/", 1)[0] + "/10"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


def settings_for(url: str, **values: Any) -> Settings:
    base: dict[str, Any] = {
        "REDIS_URL": url,
        "SCRIBES_API_KEYS": f"{KEY}=hardening",
        "SCRIBES_DOCUMENT_MAX_BYTES": DOCUMENT_MAX_BYTES,
    }
    return Settings(**{**base, **values})


def scribes_keys(url: str) -> list[bytes]:
    return list(redis.Redis.from_url(url).scan_iter("scribes:*"))


@contextmanager
def serving(settings: Settings) -> Iterator[int]:
    """The app on a real uvicorn server in a thread, with the options `scribes api` uses."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        **uvicorn_options(settings),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def connect(port: int, timeout_s: float = 8) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.settimeout(timeout_s)
    return sock


def request_head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: scribes", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Status, headers and JSON body of the next response on `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += _received(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    while len(body) < int(headers["content-length"]):
        body += _received(sock)
    return int(status_line.split()[1]), headers, json.loads(body)


def _received(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    assert chunk, "the server closed the connection without a whole response"
    return chunk


def is_closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# --- request bodies ----------------------------------------------------------------------


def test_a_chunked_body_is_counted_and_refused_as_it_passes_the_limit(store_url: str) -> None:
    def pieces(body: bytes) -> Iterator[bytes]:
        for start in range(0, len(body), 7):
            yield body[start : start + 7]

    with serving(settings_for(store_url)) as port:
        # Under the limit, a chunked body reaches the route whole.
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/documents",
            content=pieces(REACHES_THE_ROUTE),
            headers=JSON_AUTH,
        )
        assert response.request.headers["transfer-encoding"] == "chunked"
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "empty_title"

        with closing(connect(port)) as sock:
            # No Authorization header: the size is refused before anyone asks who sent it.
            sock.sendall(
                request_head(
                    "/v1/documents",
                    {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                )
            )
            sent = 0
            while sent <= BODY_LIMIT:
                sock.sendall(b"1f4\r\n" + b"x" * 500 + b"\r\n")
                sent += 500
            # The body has not ended (no last chunk), yet the answer comes and the door closes.
            status, headers, body = read_response(sock)
            assert is_closed_by_server(sock)
    assert status == 413, body
    assert body["error"]["code"] == "body_too_large"
    assert headers["content-type"] == "application/json"
    assert scribes_keys(store_url) == []


def test_a_declared_length_over_the_limit_is_a_413_and_the_connection_closes(
    store_url: str,
) -> None:
    with serving(settings_for(store_url)) as port, closing(connect(port)) as sock:
        sock.sendall(
            request_head(
                "/v1/documents",
                {"Content-Type": "application/json", "Content-Length": str(BODY_LIMIT + 1)},
            )
        )
        status, _, body = read_response(sock)
        answered = time.monotonic()
        # Its body was never read, so the connection cannot carry another request: it
        # closes at once, not after uvicorn's 5 s keep-alive timeout.
        assert is_closed_by_server(sock)
        assert time.monotonic() - answered < 2
    assert status == 413 and body["error"]["code"] == "body_too_large"


def test_a_body_that_does_not_arrive_in_time_is_a_408(store_url: str) -> None:
    settings = settings_for(store_url, SCRIBES_API_BODY_TIMEOUT_S=1)
    with serving(settings) as port, closing(connect(port)) as sock:
        sock.sendall(
            request_head(
                "/v1/documents",
                {**AUTH, "Content-Type": "application/json", "Content-Length": "100"},
            )
            + b'{"title": "slow'
        )
        started = time.monotonic()
        status, _, body = read_response(sock)
        waited = time.monotonic() - started
        assert is_closed_by_server(sock)
    assert status == 408, body
    assert body["error"]["code"] == "body_timeout"
    assert 0.8 <= waited < 5
    assert scribes_keys(store_url) == []


def test_bodies_read_at_once_are_bounded_and_one_more_is_a_503(store_url: str) -> None:
    settings = settings_for(store_url, SCRIBES_API_MAX_CONCURRENT_BODIES=2)
    head = request_head(
        "/v1/documents", {**AUTH, "Content-Type": "application/json", "Content-Length": "100"}
    )
    with serving(settings) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:

        def post() -> httpx.Response:
            return http.post("/v1/documents", content=REACHES_THE_ROUTE, headers=JSON_AUTH)

        slow = [connect(port) for _ in range(2)]
        for sock in slow:
            sock.sendall(head + b'{"title": "half')
        deadline = time.monotonic() + 5
        response = post()
        while response.status_code != 503 and time.monotonic() < deadline:
            time.sleep(0.05)
            response = post()
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "busy"
        assert response.headers["retry-after"] == "1"

        # A client that leaves gives its place back.
        for sock in slow:
            sock.close()
        deadline = time.monotonic() + 5
        response = post()
        while response.status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
            response = post()
    assert response.status_code == 400 and response.json()["error"]["code"] == "empty_title"


# --- request headers ---------------------------------------------------------------------


def test_half_sent_requests_are_closed_after_the_header_timeout(store_url: str) -> None:
    settings = settings_for(store_url, SCRIBES_API_HEADER_TIMEOUT_S=1)
    with serving(settings) as port:
        opened = time.monotonic()
        silent = connect(port, timeout_s=6)
        halves = [connect(port, timeout_s=6) for _ in range(50)]
        for sock in halves:
            sock.sendall(b"GET /healthz HT")
        # Sending the rest slowly, but in time, is served.
        patient = connect(port, timeout_s=6)
        for piece in (b"GET /heal", b"thz HTTP/1.1\r\n", b"Host: scribes\r\n", b"\r\n"):
            patient.sendall(piece)
            time.sleep(0.15)
        assert read_response(patient)[0] == 200
        # A kept-alive connection gets the same limit for its next request.
        patient.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        assert all(is_closed_by_server(sock) for sock in [silent, *halves, patient])
        waited = time.monotonic() - opened
        for sock in [silent, *halves, patient]:
            sock.close()
    # Not before the timeout, and well before the 6 s each socket would wait.
    assert 1 <= waited < 5


@contextmanager
def api_process(store_url: str, command: list[str], **settings: str) -> Iterator[int]:
    """The API as its own process, with only `settings` on top of the defaults; its port."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("SCRIBES_")}
    env.update(REDIS_URL=store_url, SCRIBES_API_KEYS=f"{KEY}=hardening", HF_HUB_OFFLINE="1")
    env.update(settings)
    process = subprocess.Popen(
        [sys.executable, *command, "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the API did not start"
                time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "api_shim.server"],
        ["-m", "uvicorn", "api_shim.app:create_app", "--factory", "--http", TIMED_PROTOCOL],
    ],
    ids=["python -m api_shim.server", "uvicorn --http TimedH11Protocol"],
)
def test_the_api_started_as_a_process_closes_a_half_sent_request(
    store_url: str, command: list[str]
) -> None:
    """How `scribes up` can start the API: the timeout then comes from the environment."""
    with (
        api_process(store_url, command, SCRIBES_API_HEADER_TIMEOUT_S="1") as port,
        closing(connect(port, timeout_s=6)) as sock,
    ):
        sock.sendall(b"POST /v1/documents HTTP/1.1\r\nHost: scr")
        started = time.monotonic()
        assert is_closed_by_server(sock)
        assert 0.5 <= time.monotonic() - started < 4


def test_at_the_default_300_half_sent_requests_are_closed_after_ten_seconds(
    store_url: str,
) -> None:
    """The finding as it was reported, at the settings a user runs: nothing shortened."""
    with api_process(store_url, ["-m", "api_shim.server"]) as port:
        opened = time.monotonic()
        halves = [connect(port, timeout_s=20) for _ in range(300)]
        for sock in halves:
            sock.sendall(b"GET /healthz HT")
        # Meanwhile the API serves everyone else.
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        assert all(is_closed_by_server(sock) for sock in halves)
        waited = time.monotonic() - opened
        for sock in halves:
            sock.close()
    assert 10 <= waited < 16


def test_the_header_timeout_is_ten_seconds_by_default(store_url: str) -> None:
    # The README's figure; the environment of the tests does not set it.
    assert Settings.model_fields["api_header_timeout_s"].default == 10
    assert "SCRIBES_API_HEADER_TIMEOUT_S" not in os.environ
    options = uvicorn_options(Settings(REDIS_URL=store_url))
    assert options["http"].header_timeout_s == 10


# --- what routes are given ----------------------------------------------------------------


@pytest.fixture
def api(store_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(store_url)), headers=AUTH) as http:
        yield http


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ('"title": "t", "text": "a\\ud800b"', "control_characters"),
        ('"id": "lone", "title": "t", "text": "a\\ud800b"', "control_characters"),
        ('"title": "t\\ud800", "text": "words"', "invalid_title"),
        ('"title": "t", "text": "a\\udfffb"', "control_characters"),
    ],
)
def test_a_lone_surrogate_is_a_400_and_nothing_is_written(
    api: TestClient, store_url: str, fields: str, code: str
) -> None:
    response = api.post(
        "/v1/documents",
        content=("{" + fields + "}").encode(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code
    assert scribes_keys(store_url) == []


@pytest.mark.parametrize("document_id", ["dup\n", "dup\r\n", "\ndup"])
def test_an_id_with_a_line_break_is_refused(
    api: TestClient, store_url: str, document_id: str
) -> None:
    response = api.post("/v1/documents", json={"id": document_id, "title": "t", "text": "words"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_document_id"
    assert scribes_keys(store_url) == []


@pytest.mark.parametrize(
    "line_break",
    ["\n", "\r", "\r\n", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"],
)
def test_a_title_of_more_than_one_line_is_refused(
    api: TestClient, store_url: str, line_break: str
) -> None:
    title = f"First line{line_break}second line"
    response = api.post("/v1/documents", json={"title": title, "text": "words"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_title"
    assert scribes_keys(store_url) == []


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
@pytest.mark.parametrize(
    ("values", "served"),
    [
        ({"SCRIBES_ENV": "production"}, False),
        ({"SCRIBES_ENV": "production", "SCRIBES_API_DOCS": True}, True),
        ({"SCRIBES_ENV": "development"}, True),
        ({"SCRIBES_ENV": "development", "SCRIBES_API_DOCS": False}, False),
    ],
)
def test_api_docs_are_served_only_where_settings_allow(
    store_url: str, path: str, values: dict[str, Any], served: bool
) -> None:
    with TestClient(create_app(settings_for(store_url, **values))) as http:
        response = http.get(path)
    if served:
        assert response.status_code == 200
    else:
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_a_redis_password_never_appears_in_an_error() -> None:
    port = free_port()
    url = f"redis://scribes:hunter2@127.0.0.1:{port}/0?password=hunter2&socket_timeout=1"
    with TestClient(create_app(Settings(REDIS_URL=url))) as http:
        response = http.post("/v1/questions", json={"question": "is anyone there?"})
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert "hunter2" not in response.text
    assert message == (
        f"Redis at redis://scribes:***@127.0.0.1:{port}/0?password=***&socket_timeout=1 "
        "is not reachable; start it or set REDIS_URL"
    )
