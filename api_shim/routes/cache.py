"""`DELETE /v1/cache`: empty the calling tenant's caches (exact and semantic answers, query
vectors, contexts, chunk vectors). Another tenant's entries are never touched."""

from __future__ import annotations

import logging

from fastapi import APIRouter

from api_shim.deps import AppDeps, Tenant
from rag.caches.control import clear_tenant_caches
from tasks.pipeline import enqueue_forget_questions

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/cache")


@router.delete("")
def clear_cache(tenant: Tenant, deps: AppDeps) -> dict[str, object]:
    # The exact answers go first: every semantic entry points at one, so from here on none
    # can be served. The index entries themselves are deleted by the store's owner; a
    # broker that is down leaves them there, unreachable, until they expire.
    removed = clear_tenant_caches(deps.services.redis, tenant)
    try:
        enqueue_forget_questions(tenant)
        semantic = "emptying"
    except Exception:
        log.warning("emptying of %s's semantic index not queued; its entries stay, unseen", tenant)
        semantic = "unreachable"
    return {"tenant": tenant, "removed": removed, "semantic": semantic}
