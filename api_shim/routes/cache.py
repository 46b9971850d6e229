"""`DELETE /v1/cache`: empty the calling tenant's caches (exact answers, query vectors,
contexts, chunk vectors). Another tenant's entries are never touched."""

from __future__ import annotations

from fastapi import APIRouter

from api_shim.deps import AppDeps, Tenant
from rag.caches.control import clear_tenant_caches

__all__ = ["router"]

router = APIRouter(prefix="/v1/cache")


@router.delete("")
def clear_cache(tenant: Tenant, deps: AppDeps) -> dict[str, object]:
    removed = clear_tenant_caches(deps.services.redis, tenant)
    return {"tenant": tenant, "removed": removed}
