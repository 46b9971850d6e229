"""What every route depends on: the process's services, settings and the asking tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api_shim.auth import TenantResolver
from rag.services import Services
from rag.settings import Settings
from rag.tokens import TokenCounter

__all__ = ["AppDeps", "Deps", "Tenant", "current_tenant"]


class Deps:
    """Held on `app.state.deps`, built once per API process by `create_app`."""

    def __init__(self, services: Services, resolver: TenantResolver) -> None:
        self.services = services
        self.settings: Settings = services.settings
        self.resolve_tenant = resolver
        self.counter: TokenCounter = services.token_counter()


def _deps(request: Request) -> Deps:
    deps: Deps = request.app.state.deps
    return deps


async def current_tenant(request: Request) -> str:
    # async: resolving is a dictionary lookup, not worth a hop to the thread pool
    return _deps(request).resolve_tenant(request)


async def app_deps(request: Request) -> Deps:
    return _deps(request)


Tenant = Annotated[str, Depends(current_tenant)]
AppDeps = Annotated[Deps, Depends(app_deps)]
