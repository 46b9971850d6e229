"""What every route depends on: the process's services, settings and the asking tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api_shim.auth import AdminCheck, TenantResolver
from api_shim.idempotency import Idempotency
from api_shim.notify import LiveJobs
from rag.services import Services
from rag.settings import Settings
from rag.tokens import TokenCounter

__all__ = ["Admin", "AppDeps", "Deps", "Tenant", "current_tenant"]


class Deps:
    """Held on `app.state.deps`, built once per API process by `create_app`."""

    def __init__(self, services: Services, resolver: TenantResolver) -> None:
        self.services = services
        self.settings: Settings = services.settings
        self.resolve_tenant = resolver
        self.check_admin = AdminCheck(services.settings)
        self.counter: TokenCounter = services.token_counter()
        self.idempotency = Idempotency(services.redis)
        self._live: LiveJobs | None = None

    @property
    def live(self) -> LiveJobs:
        """Job reads and waits on the event loop; set when the app starts (its lifespan)."""
        if self._live is None:
            raise RuntimeError("the API's job watcher is not running: the app was not started")
        return self._live

    @live.setter
    def live(self, live: LiveJobs | None) -> None:
        self._live = live


def _deps(request: Request) -> Deps:
    deps: Deps = request.app.state.deps
    return deps


async def current_tenant(request: Request) -> str:
    # async: resolving is a dictionary lookup, not worth a hop to the thread pool
    return _deps(request).resolve_tenant(request)


async def app_deps(request: Request) -> Deps:
    return _deps(request)


async def require_admin(request: Request) -> None:
    _deps(request).check_admin(request)


Tenant = Annotated[str, Depends(current_tenant)]
AppDeps = Annotated[Deps, Depends(app_deps)]
Admin = Annotated[None, Depends(require_admin)]
