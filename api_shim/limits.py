"""Limits the API puts on a request body before any route, or authentication, sees it."""

from __future__ import annotations

import asyncio

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_shim.errors import error_body

__all__ = ["BodyLimit"]


class _TooLarge(Exception):
    """More bytes arrived than the limit allows."""


class BodyLimit:
    """Bound every request body in size, in time, and in how many are read at once.

    It reads the whole body itself, before the app runs (FastAPI reads a body whole before
    the route's dependencies, authentication included, so this buffers nothing more), then
    hands the app the body in one message:

    - a `Content-Length` over `max_bytes` is a 413 `body_too_large` before a byte is read,
      and a body of any framing, chunked included, is one as soon as the bytes received pass
      `max_bytes`;
    - a body not wholly received within `timeout_s` is a 408 `body_timeout`;
    - at most `max_concurrent` bodies are read at once; one more is a 503 `busy` straight
      away, with `Retry-After`, rather than a wait in a queue: a queue would let slow
      clients hold any number of connections and buffers, which is what the bound prevents.

    Each refusal closes the connection, as the rest of its body was never read. Plain ASGI
    rather than `@app.middleware("http")`, which adds a task and a stream copy per request.
    """

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, timeout_s: float, max_concurrent: int
    ) -> None:
        self._app = app
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        # Never waited on (see `locked` below), so it binds to no event loop.
        self._reading = asyncio.Semaphore(max_concurrent)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self._app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self._max_bytes:
            await self._too_large(scope, receive, send)
            return
        if self._reading.locked():
            await _refuse(
                503,
                "busy",
                "the API is receiving too many request bodies at once; try again shortly",
                {"retry-after": "1"},
            )(scope, receive, send)
            return
        async with self._reading:
            try:
                async with asyncio.timeout(self._timeout_s):
                    body = await self._read(receive)
            except _TooLarge:
                await self._too_large(scope, receive, send)
                return
            except TimeoutError:
                await _refuse(
                    408,
                    "body_timeout",
                    f"the request body did not arrive within {self._timeout_s:g} s; "
                    "send it again, faster",
                )(scope, receive, send)
                return
        if body is not None:  # None: the client left before sending all of it
            await self._app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self._max_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _refuse(
            413,
            "body_too_large",
            f"the request body is larger than {self._max_bytes} bytes",
        )(scope, receive, send)


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None


def _refuse(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        error_body(code, message),
        status_code=status,
        headers={"connection": "close", **(headers or {})},
    )


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the body read already, then whatever the client sends next."""
    delivered = False

    async def replayed() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
