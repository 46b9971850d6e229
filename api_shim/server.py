"""Serving the API with uvicorn, plus the one limit uvicorn lacks: time to send the headers.

uvicorn 0.54 bounds a request's header size (h11's 16 KiB) and an idle keep-alive connection
(5 s), but not the time a client takes to send its request line and headers: 300
connections that each sent half a request line were all still open after 23 s. This module
closes a connection whose request headers are not complete within
`SCRIBES_API_HEADER_TIMEOUT_S` of its opening (or, kept alive, of the first byte of its next
request); with the default 10 s those 300 were all closed 10.1 s after they opened, and the
API answered `/healthz` meanwhile. A body has its own limits, in `api_shim.limits`.

`serve` (what `scribes api` and `python -m api_shim.server` run) passes `uvicorn_options`;
uvicorn's own command line takes `--http api_shim.server:TimedH11Protocol`, and the protocol
then reads the timeout from the settings.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from api_shim.app import create_app
from rag.settings import ConfigurationError, Settings, get_settings

__all__ = [
    "GRACEFUL_SHUTDOWN_S",
    "TIMED_PROTOCOL",
    "TimedH11Protocol",
    "main",
    "serve",
    "uvicorn_options",
]

# Seconds a stopping API waits for requests in flight (long polls, event streams) to end.
GRACEFUL_SHUTDOWN_S = 5

# What uvicorn's `--http` option takes to use the protocol below.
TIMED_PROTOCOL = "api_shim.server:TimedH11Protocol"


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers come too slowly.

    The clock starts when the connection opens, or when the first byte of a later request
    on a kept-alive one arrives, and stops once h11 has parsed the request's headers. A
    subclass rather than a middleware: the ASGI app only sees a request once its headers
    are complete, too late to time them.
    """

    # None: SCRIBES_API_HEADER_TIMEOUT_S from the settings; `uvicorn_options` sets it.
    header_timeout_s: ClassVar[float | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        configured = type(self).header_timeout_s
        self._header_timeout_s = (
            configured if configured is not None else get_settings().api_header_timeout_s
        )
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_clock()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self._between_requests():
            self._start_header_clock()
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if not self._between_requests():
            self._stop_header_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_clock()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        # h11 leaves IDLE only once it has parsed a whole request line and headers.
        return self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE

    def _start_header_clock(self) -> None:
        self._header_timer = self.loop.call_later(self._header_timeout_s, self._headers_late)

    def _stop_header_clock(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self._between_requests() and not self.transport.is_closing():
            self.logger.debug("closing a connection whose request headers took too long")
            self.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What `uvicorn.run` or `uvicorn.Config` needs, beyond the app, to serve by `settings`."""
    protocol = type(
        "TimedH11Protocol",
        (TimedH11Protocol,),
        {"header_timeout_s": settings.api_header_timeout_s, "__module__": __name__},
    )
    # Long polls and event streams would hold a graceful shutdown for up to 30 s, or for
    # ever: after this long they are cut (a client reconnects, an event stream from its
    # Last-Event-ID), well inside a pool's 10 s soft shutdown and any stop timeout.
    return {"http": protocol, "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S}


def serve(settings: Settings, *, host: str, port: int, access_log: bool = True) -> None:
    """Serve the API by `settings` until interrupted."""
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        access_log=access_log,
        **uvicorn_options(settings),
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m api_shim.server", description="Serve the Scribes HTTP API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--no-access-log", action="store_true")
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
    except ConfigurationError as exc:
        raise SystemExit(f"scribes api: {exc}") from exc
    serve(settings, host=args.host, port=args.port, access_log=not args.no_access_log)


if __name__ == "__main__":
    main()
