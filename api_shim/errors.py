"""Every error leaves the API as `{"error": {"code", "message"}}`: a 4xx for what the client
can fix, a 503 for a dependency that is down, a 500 for a fault of ours. Never plain text."""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rag.urls import redact_url
from rag.validation import InvalidInput

__all__ = ["ApiError", "error_body", "install_error_handlers"]

log = logging.getLogger("scribes.api")


class ApiError(Exception):
    """`details` go into the error object beside code and message (e.g. `resets_at`)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        details: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.details = details or {}


def error_body(
    code: str, message: str, details: dict[str, str] | None = None
) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message, **(details or {})}}


def _describe(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI, *, redis_url: str) -> None:
    redis_down = error_body(
        "redis_unavailable",
        f"Redis at {redact_url(redis_url)} is not reachable; start it or set REDIS_URL",
    )

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.message, exc.details),
            status_code=exc.status,
            headers=exc.headers,
        )

    @app.exception_handler(InvalidInput)
    async def _invalid(_: Request, exc: InvalidInput) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("invalid_request", _describe(exc)), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    async def _redis_down(_: Request, __: Exception) -> JSONResponse:
        return JSONResponse(redis_down, status_code=503)

    app.add_exception_handler(redis.ConnectionError, _redis_down)
    app.add_exception_handler(redis.TimeoutError, _redis_down)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the log; the client gets a body it can parse and report.
        log.error(
            "%s %s failed: %s",
            request.method,
            request.url.path,
            exc.__class__.__name__,
            exc_info=exc,
        )
        return JSONResponse(
            error_body(
                "internal_error",
                "the server failed on this request; it has been logged, try again",
            ),
            status_code=500,
        )
