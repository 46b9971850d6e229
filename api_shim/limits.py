"""Limits the API puts on a request before any route sees it."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from api_shim.errors import error_body

__all__ = ["BodyLimit"]


class BodyLimit:
    """Refuse a declared body over the limit before reading it (plain ASGI: no per-request
    task and stream copy, as `@app.middleware("http")` would add)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self._app = app
        self._max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"content-length" and value.isdigit() and int(value) > self._max_bytes:
                    response = JSONResponse(
                        error_body("body_too_large", "request body is too large"),
                        status_code=413,
                    )
                    await response(scope, receive, send)
                    return
        await self._app(scope, receive, send)
