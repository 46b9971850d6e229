"""A real HTTP server on loopback that answers as a test scripts it, and records every request:
for the client's retries and stream reconnects, which the live API cannot be made to show
on demand."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["Received", "ScriptedApi", "finished_job"]


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


Reply = Callable[[BaseHTTPRequestHandler, Received], None]


def finished_job(job_id: str, answer: str = "From your notes: 37 seeds [1].") -> dict[str, Any]:
    return {
        "id": job_id,
        "status": "succeeded",
        "stage": "done",
        "question": "How many mustard seeds?",
        "answer": answer,
        "sources": [
            {
                "number": 1,
                "document_id": "mustard",
                "chunk_id": "c1",
                "title": "Mustard",
                "text": "37 seeds",
                "score": 0.61,
                "a_field_from_a_newer_api": True,
            }
        ],
        "usage": {"input_tokens": 120, "output_tokens": 9, "cost_usd": 0.000495},
        "cached": None,
        "timings": {"total": 40.5},
        "error": None,
        "webhook": None,
    }


def send_json(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: Any,
    headers: dict[str, str] | None = None,
) -> None:
    raw = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(raw)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(raw)


class ScriptedApi:
    """Each request is answered by the next of `replies`, the last one over and over."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = replies
        self.received: list[Received] = []
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                request = Received(
                    self.command,
                    url.path,
                    parse_qs(url.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    json.loads(raw) if raw else None,
                )
                with api._lock:
                    api.received.append(request)
                    reply = api.replies[min(len(api.received), len(api.replies)) - 1]
                reply(self, request)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> ScriptedApi:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
