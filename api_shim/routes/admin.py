"""`/v1/admin/reindex`: start, watch, cancel and roll back a reindex (operators only).

`POST /v1/admin/reindex` `{"model"?: str, "tenant"?: str}` starts one (202); a second while
one runs is a 409. `GET` gives the run and the store's generations. `POST .../cancel` stops
a run before its switch; `POST .../rollback` switches back to the generation kept by the
last switch.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api_shim.deps import Admin, AppDeps
from api_shim.errors import ApiError
from rag.keys import TENANT_PATTERN
from rag.reindex import ReindexBusy
from rag.services import Services
from rag.tokens import resolve_model_path
from tasks.reindex import start_reindex, start_rollback

__all__ = ["router"]

log = logging.getLogger("scribes.api")

router = APIRouter(prefix="/v1/admin/reindex")


class ReindexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, min_length=1, max_length=1000)
    tenant: str | None = None


def _status(services: Services) -> dict[str, Any]:
    run = services.reindexes.get()
    return {
        "run": run.to_json() if run is not None else None,
        "live": services.live().to_json(),
        "generations": [g.to_json() for g in services.generations.all()],
    }


@router.get("")
def reindex_status(_: Admin, deps: AppDeps) -> dict[str, Any]:
    return _status(deps.services)


@router.post("", status_code=202)
def reindex_start(_: Admin, deps: AppDeps, body: ReindexRequest | None = None) -> dict[str, Any]:
    body = body or ReindexRequest()
    if body.tenant is not None and not TENANT_PATTERN.fullmatch(body.tenant):
        raise ApiError(422, "invalid_request", f"tenant {body.tenant!r} is not a tenant name")
    if body.model is not None:
        try:
            resolve_model_path(body.model)
        except ValueError as exc:
            raise ApiError(422, "invalid_model", str(exc)) from None
    try:
        start_reindex(deps.services, model=body.model, tenant=body.tenant)
    except ReindexBusy as exc:
        raise ApiError(409, "reindex_running", str(exc)) from None
    return _status(deps.services)


@router.post("/cancel")
def reindex_cancel(_: Admin, deps: AppDeps) -> dict[str, Any]:
    run = deps.services.reindexes.get()
    if run is not None and run.phase.active and run.checks.get("switched_at"):
        raise ApiError(409, "already_switched", "the run has switched already; roll back instead")
    if deps.services.reindexes.request_cancel() is None:
        raise ApiError(409, "no_reindex_running", "no reindex is running")
    return _status(deps.services)


@router.post("/rollback", status_code=202)
def reindex_rollback(_: Admin, deps: AppDeps) -> dict[str, Any]:
    try:
        start_rollback(deps.services)
    except ReindexBusy as exc:
        raise ApiError(409, "reindex_running", str(exc)) from None
    except LookupError as exc:
        raise ApiError(409, "nothing_to_roll_back", str(exc)) from None
    return _status(deps.services)
