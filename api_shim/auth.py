"""Who is asking: an API key maps to a tenant; everything the tenant touches is scoped by it."""

from __future__ import annotations

import hmac

from fastapi import Request

from api_shim.errors import ApiError
from rag.keys import TENANT_PATTERN
from rag.settings import Settings

__all__ = ["DEFAULT_TENANT", "AdminCheck", "TenantResolver"]

DEFAULT_TENANT = "default"
GATEWAY_TENANT_HEADER = "x-scribes-tenant"


class TenantResolver:
    def __init__(self, settings: Settings) -> None:
        self._keys = settings.api_keys
        self._trust_gateway = settings.trust_gateway_tenant
        for tenant in self._keys.values():
            if not TENANT_PATTERN.fullmatch(tenant):
                raise ValueError(f"tenant name {tenant!r} in SCRIBES_API_KEYS is not valid")

    @property
    def open_access(self) -> bool:
        return not self._keys and not self._trust_gateway

    def __call__(self, request: Request) -> str:
        if self._trust_gateway:
            claimed = request.headers.get(GATEWAY_TENANT_HEADER, "")
            if TENANT_PATTERN.fullmatch(claimed):
                return claimed
            if not self._keys:
                raise _unauthorized(f"missing or invalid {GATEWAY_TENANT_HEADER} header")
        if not self._keys:
            return DEFAULT_TENANT
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("missing API key; send Authorization: Bearer <key>")
        # Compare against every key so the time taken says nothing about which was close.
        found: str | None = None
        for key, owner in self._keys.items():
            if hmac.compare_digest(key.encode(), token.strip().encode()):
                found = owner
        if found is None:
            raise _unauthorized("unknown API key")
        return found


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


class AdminCheck:
    """Operators' endpoints: a key from SCRIBES_ADMIN_KEYS, never a tenant's. With no keys
    of either kind set (development's open access) anyone is the operator."""

    def __init__(self, settings: Settings) -> None:
        self._keys = settings.admin_keys
        self._open = not self._keys and not settings.api_keys and not settings.trust_gateway_tenant

    def __call__(self, request: Request) -> None:
        if self._open:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("missing admin key; send Authorization: Bearer <admin key>")
        found = False
        for key in self._keys:
            found |= hmac.compare_digest(key.encode(), token.strip().encode())
        if not found:
            raise ApiError(
                403,
                "forbidden",
                "this needs an operator's key from SCRIBES_ADMIN_KEYS; a tenant's key is not one",
            )
