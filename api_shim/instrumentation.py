"""Counts and times every request the API answers, by route template, for Prometheus.

A plain ASGI middleware: it reads the route Starlette matched (`scope["route"]`), so
label values are the templates (`/v1/questions/{job_id}`), never the raw paths, and the
number of series stays fixed.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag.telemetry.metrics import API_REQUEST_DURATION, API_REQUESTS

__all__ = ["RequestMetrics"]


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = str(scope.get("method", ""))
            API_REQUESTS.labels(template, method, f"{status // 100}xx").inc()
            API_REQUEST_DURATION.labels(template, method).observe(time.perf_counter() - started)
