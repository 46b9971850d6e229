"""The cache benchmark's baseline: one Redis GET returned as JSON, on the API's own HTTP stack.

Same server (uvicorn, one process, no access log), same framework (FastAPI, a sync route run
in the thread pool), same redis-py client settings as `api_shim.app`; nothing else.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import redis
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from scribes.localredis import free_port

__all__ = ["BASELINE_PATH", "create_app", "main", "running_baseline_api"]

BASELINE_PATH = "/v1/baseline"


def create_app(redis_url: str, key: str) -> FastAPI:
    client = redis.Redis.from_url(
        redis_url, decode_responses=True, socket_timeout=5, socket_connect_timeout=3
    )
    app = FastAPI(title="Scribes bench baseline")

    @app.post(BASELINE_PATH)
    def read_key() -> JSONResponse:
        raw = client.get(key)
        if raw is None:
            return JSONResponse(
                {"error": {"code": "not_found", "message": f"no value at {key}"}}, status_code=404
            )
        return JSONResponse(json.loads(str(raw)))

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


@contextmanager
def running_baseline_api(
    redis_url: str, key: str, *, log_file: Path, timeout_s: float = 30
) -> Iterator[str]:
    """The baseline served by uvicorn in a process of its own, as the API is; yields its URL."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "bench.baseline_api",
        "--redis-url",
        redis_url,
        "--key",
        key,
        "--port",
        str(port),
    ]
    url = f"http://127.0.0.1:{port}"
    with log_file.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=url, timeout=2) as http:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the baseline API exited early; see {log_file}")
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the baseline API did not start; see {log_file}")
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.baseline_api",
        description="Serve one Redis key as JSON at POST /v1/baseline (the cache benchmark's "
        "baseline; bench.run starts it for you).",
    )
    parser.add_argument("--redis-url", required=True, help="Redis to read from")
    parser.add_argument("--key", required=True, help="the key whose JSON value is served")
    parser.add_argument("--port", type=int, required=True, help="loopback port to bind")
    args = parser.parse_args(argv)
    # The API runs as `uvicorn … --no-access-log`: the same server with the same settings.
    uvicorn.run(
        create_app(args.redis_url, args.key), host="127.0.0.1", port=args.port, access_log=False
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
