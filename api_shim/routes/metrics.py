"""`GET /metrics`: every process on this host, plus the cluster's series, for Prometheus.

With `SCRIBES_METRICS_TOKEN` set, a scrape must send it as a Bearer token; a wrong or
missing one gets a JSON 401 like every other refusal.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api_shim.deps import AppDeps
from api_shim.errors import ApiError
from rag.services import Services
from rag.telemetry.collectors import ClusterCollector, budget_gauges
from rag.telemetry.exposition import CONTENT_TYPE_LATEST, render_metrics, scrape_registry
from tasks.names import QueueName
from workers.pools import POOLS

__all__ = ["cluster_collector", "router"]

router = APIRouter()


def cluster_collector(services: Services) -> ClusterCollector:
    return ClusterCollector(
        redis=services.redis,
        broker_url=services.settings.broker_url,
        queues=[queue.value for queue in QueueName],
        pools=list(POOLS),
        breakers=[services.llm_breaker],
        extra=[lambda: budget_gauges(services.budgets)],
    )


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, deps: AppDeps) -> Response:
    token = deps.settings.metrics_token
    if token is not None:
        sent = request.headers.get("authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        if not hmac.compare_digest(sent.encode(), expected.encode()):
            raise ApiError(
                401, "unauthorized", "/metrics needs SCRIBES_METRICS_TOKEN as a Bearer token"
            )
    registry = getattr(request.app.state, "metrics_registry", None)
    if registry is None:
        registry = scrape_registry(
            [cluster_collector(deps.services)], processes=deps.settings.metrics_enabled
        )
        request.app.state.metrics_registry = registry
    return Response(render_metrics(registry), media_type=CONTENT_TYPE_LATEST)
