"""Liveness, readiness and status.

`/readyz` checks only what this API process needs to serve (Redis and the broker), so that
one pool being down never takes every API replica out of a load balancer. The pools and the
vector store are reported by `GET /v1/status`, which `scribes status` reads.
"""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api_shim.deps import AppDeps, Deps, Tenant
from api_shim.errors import error_body
from rag.breaker import BreakerState
from rag.records.usage import usd
from rag.telemetry.collectors import read_queues
from tasks.names import QueueName
from tasks.pipeline import broker_answers
from workers.pools import POOLS

__all__ = ["router"]

router = APIRouter()


def _serving_checks(deps: Deps) -> dict[str, bool]:
    checks = {"redis": False, "broker": False}
    try:
        checks["redis"] = bool(deps.services.redis.ping())
    except redis.RedisError:
        return checks
    settings = deps.settings
    # With Redis as the broker, the ping above was the broker's check too.
    checks["broker"] = settings.broker_url == settings.redis_url or broker_answers()
    return checks


def _verdict(checks: dict[str, bool], ok: str) -> JSONResponse:
    if all(checks.values()):
        return JSONResponse({"status": ok, "checks": checks})
    missing = ", ".join(name for name, up in checks.items() if not up)
    return JSONResponse(
        {**error_body("not_ready", f"not ready: {missing}"), "checks": checks}, status_code=503
    )


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(deps: AppDeps) -> JSONResponse:
    return _verdict(_serving_checks(deps), "ready")


@router.get("/v1/status")
def status(tenant: Tenant, deps: AppDeps) -> dict[str, Any]:
    """Every part of the system: Redis, the broker, each pool's live processes, the store;
    and the calling tenant's questions and dollars today (UTC)."""
    checks: dict[str, bool] = _serving_checks(deps)
    processes: dict[str, int] = {}
    breakers: dict[str, Any] = {}
    usage: dict[str, Any] | None = None
    queues: dict[str, Any] | None = None
    if checks["redis"]:
        services = deps.services
        today = services.usage.today(tenant)
        usage = {
            "date": today.day.isoformat(),
            "questions": today.totals.questions,
            "cost_usd": usd(today.totals.cost_usd),
        }
        processes = services.heartbeats.alive(POOLS)
        queues = _queues(deps.settings.broker_url)
        checks.update({f"pool:{name}": count > 0 for name, count in processes.items()})
        checks["vector_store"] = services.heartbeats.store_answers()
        if deps.settings.uses_anthropic:
            llm = services.llm_breaker.status()
            # An open circuit is an outage of the model, reported as one; questions wait
            # for it (or get the fallback), they do not fail.
            checks["llm"] = llm.state is not BreakerState.OPEN
            breakers["llm"] = llm.to_json()
    return {
        "status": "ok" if all(checks.values()) else "degraded",
        "checks": checks,
        "pools": {name: {"processes": processes.get(name, 0)} for name in POOLS},
        "breakers": breakers,
        "queues": queues,
        "usage": usage,
    }


def _queues(broker_url: str) -> dict[str, Any] | None:
    """Each queue's waiting and unacknowledged messages, and its oldest message's age."""
    try:
        readings = read_queues(broker_url, [queue.value for queue in QueueName])
    except Exception:  # any transport's error; the broker's own check says it is down
        return None
    return {
        reading.queue: {
            "depth": reading.depth,
            "ready": reading.ready,
            "unacked": reading.unacked,
            "oldest_age_s": None
            if reading.oldest_age_s is None
            else round(reading.oldest_age_s, 1),
        }
        for reading in readings
    }
