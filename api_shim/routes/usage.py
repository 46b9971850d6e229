"""`GET /v1/usage`: the calling tenant's questions, cache hits, tokens and dollars, and budget.

The tenant is the one the request authenticated as; there is no parameter that names another.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from api_shim.deps import AppDeps, Tenant
from api_shim.errors import ApiError

__all__ = ["MAX_DAYS", "router"]

router = APIRouter()

# The ledger keeps a day 400 days; a longer range could only add days it no longer has.
MAX_DAYS = 400
_DATE = re.compile(r"\A\d{4}-\d{2}-\d{2}\Z")


def _date(name: str, value: str) -> date:
    try:
        if _DATE.fullmatch(value):
            return date.fromisoformat(value)
    except ValueError:
        pass
    raise ApiError(422, "invalid_request", f"{name} must be a date as YYYY-MM-DD, not {value!r}")


@router.get("/v1/usage")
def usage(
    tenant: Tenant,
    deps: AppDeps,
    start: Annotated[str | None, Query(alias="from")] = None,
    end: Annotated[str | None, Query(alias="to")] = None,
) -> dict[str, Any]:
    """From `from` to `to`, UTC days, both included; `to` defaults to today, `from` to `to`."""
    last = _date("to", end) if end is not None else datetime.now(UTC).date()
    first = _date("from", start) if start is not None else last
    if first > last:
        raise ApiError(422, "invalid_request", f"from ({first}) is after to ({last})")
    if (last - first).days + 1 > MAX_DAYS:
        raise ApiError(422, "invalid_request", f"a range may cover at most {MAX_DAYS} days")
    services = deps.services
    report = services.usage.report(tenant, first, last).to_json()
    budgets = services.budgets
    states = budgets.states(tenant)
    report["budget"] = (
        {"action": budgets.action, **{state.period: state.to_json() for state in states}}
        if states
        else None
    )
    return report
