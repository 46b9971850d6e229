"""`Idempotency-Key` on the POSTs that create work: a repeat gets the first response back.

A client that did not hear the answer to its POST (a timeout, a dropped connection) sends it
again with the same key and gets what the first one got, with no second job or revision.
Keys are per tenant and kept for `KEEP_S` (24 h) after the first response. The same key with
another body (or on another endpoint) is a 409 `idempotency_conflict`; a repeat that arrives
while the first is still being handled is a 409 `idempotency_in_progress`, to retry shortly.

Only a success is kept. A request that fails (bad input, a dependency down) leaves no mark,
so that the client can send it again, corrected or later, under the same key. A request
whose process died while handling it leaves a mark that lapses after `PENDING_S`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from redis import Redis

from api_shim.errors import ApiError
from rag.keys import idempotency_key

__all__ = ["HEADER", "KEEP_S", "PENDING_S", "Idempotency"]

HEADER = "Idempotency-Key"
KEEP_S = 24 * 3600
PENDING_S = 60
_MAX_KEY_CHARS = 255


def fingerprint(path: str, body: Any) -> str:
    """What a repeat must match: the endpoint and the body, keys in any order."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{path}\n{canonical}".encode()).hexdigest()


class Idempotency:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    def respond(
        self,
        request: Request,
        tenant: str,
        body: Any,
        handle: Callable[[], JSONResponse],
    ) -> JSONResponse:
        """`handle()`'s response, or the first one's when this repeats a key already used."""
        key = request.headers.get(HEADER)
        if key is None:
            return handle()
        if not key or len(key) > _MAX_KEY_CHARS or not key.isprintable():
            raise ApiError(
                422,
                "invalid_request",
                f"{HEADER} must be 1 to {_MAX_KEY_CHARS} printable characters",
            )
        redis_key = idempotency_key(tenant, key)
        mark = fingerprint(request.url.path, body)
        pending = json.dumps({"fingerprint": mark, "state": "pending"})
        if not self._redis.set(redis_key, pending, nx=True, ex=PENDING_S):
            return self._replay(redis_key, mark)
        try:
            response = handle()
        except BaseException:
            self._redis.delete(redis_key)
            raise
        if response.status_code >= 300:
            self._redis.delete(redis_key)
            return response
        kept = {
            "fingerprint": mark,
            "state": "done",
            "status": response.status_code,
            "body": json.loads(bytes(response.body)),
            "location": response.headers.get("location"),
        }
        self._redis.set(redis_key, json.dumps(kept), ex=KEEP_S)
        return response

    def _replay(self, redis_key: str, mark: str) -> JSONResponse:
        raw = self._redis.get(redis_key)
        if raw is None:  # it lapsed between the two reads; the client may simply retry
            raise ApiError(
                409, "idempotency_in_progress", "a request with this key is being handled; retry"
            )
        kept = json.loads(str(raw))
        if kept.get("fingerprint") != mark:
            raise ApiError(
                409,
                "idempotency_conflict",
                f"this {HEADER} was used for another request; use a new key for a new request",
            )
        if kept.get("state") != "done":
            raise ApiError(
                409,
                "idempotency_in_progress",
                "a request with this key is being handled; retry in a moment",
                headers={"Retry-After": "1"},
            )
        headers = {"Idempotent-Replayed": "true"}
        if kept.get("location"):
            headers["Location"] = str(kept["location"])
        return JSONResponse(kept["body"], status_code=int(kept["status"]), headers=headers)
