"""Spending limits per tenant: which applies, what has been spent, and when it resets.

A tenant's budget is `SCRIBES_BUDGET_DAILY_USD` and `SCRIBES_BUDGET_MONTHLY_USD`, with its entry
in `SCRIBES_TENANT_BUDGETS` on top (a limit named there replaces the global one; null lifts it).
Days and months are UTC. Spend is what the usage ledger has added up from each finished job's
exact cost, so a budget is checked before a model call and counted after it: once it is spent
no new call starts, and the overshoot is bounded by the calls already past the check.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from rag.records.usage import UsageLedger, usd
from rag.settings import Settings

__all__ = ["Budget", "BudgetState", "Budgets", "Period", "resets_at"]

Period = Literal["daily", "monthly"]


@dataclass(frozen=True, slots=True)
class Budget:
    """A tenant's limits in dollars; None: no limit for that period."""

    daily_usd: Decimal | None = None
    monthly_usd: Decimal | None = None

    def limits(self) -> dict[Period, Decimal]:
        found: dict[Period, Decimal] = {}
        if self.daily_usd is not None:
            found["daily"] = self.daily_usd
        if self.monthly_usd is not None:
            found["monthly"] = self.monthly_usd
        return found


@dataclass(frozen=True, slots=True)
class BudgetState:
    """One period of a tenant's budget, as it stands at `at`."""

    tenant: str
    period: Period
    limit_usd: Decimal
    spent_usd: Decimal
    resets_at: datetime
    at: float

    @property
    def remaining_usd(self) -> Decimal:
        return max(Decimal(0), self.limit_usd - self.spent_usd)

    @property
    def exceeded(self) -> bool:
        return self.spent_usd >= self.limit_usd

    @property
    def resets_at_iso(self) -> str:
        return self.resets_at.strftime("%Y-%m-%dT%H:%M:%SZ")

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.resets_at.timestamp() - self.at))

    @property
    def message(self) -> str:
        return (
            f"the {self.period} budget of ${self.limit_usd} is spent "
            f"(${usd(self.spent_usd)}); it resets at {self.resets_at_iso}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "limit_usd": usd(self.limit_usd),
            "spent_usd": usd(self.spent_usd),
            "remaining_usd": usd(self.remaining_usd),
            "exceeded": self.exceeded,
            "resets_at": self.resets_at_iso,
        }


def resets_at(period: Period, at: float) -> datetime:
    """The next UTC midnight, or the first of the next UTC month, after `at`."""
    now = datetime.fromtimestamp(at, UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        return midnight + timedelta(days=1)
    first = midnight.replace(day=1)
    if first.month == 12:
        return first.replace(year=first.year + 1, month=1)
    return first.replace(month=first.month + 1)


class Budgets:
    """The budget policy over the usage ledger; `clock` is for tests that cross midnight."""

    def __init__(
        self, settings: Settings, ledger: UsageLedger, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._ledger = ledger
        self._clock = clock
        self.action = settings.budget_action
        self._default = Budget(settings.budget_daily_usd, settings.budget_monthly_usd)
        self._budgets: dict[str, Budget] = {}
        for tenant, override in settings.tenant_budgets.items():
            self._budgets[tenant] = Budget(
                override.get("daily_usd", self._default.daily_usd),
                override.get("monthly_usd", self._default.monthly_usd),
            )

    def budget_for(self, tenant: str) -> Budget:
        return self._budgets.get(tenant, self._default)

    def states(self, tenant: str) -> list[BudgetState]:
        """Each limited period of the tenant's budget; empty (and no Redis call) without one."""
        limits = self.budget_for(tenant).limits()
        if not limits:
            return []
        at = self._clock()
        daily, monthly = self._ledger.spent([tenant], at=at)[tenant]
        spent: dict[Period, Decimal] = {"daily": daily, "monthly": monthly}
        return [
            BudgetState(tenant, period, limit, spent[period], resets_at(period, at), at)
            for period, limit in limits.items()
        ]

    def exceeded(self, tenant: str) -> BudgetState | None:
        """The spent period that resets last (when questions may go on again), or None."""
        spent = [state for state in self.states(tenant) if state.exceeded]
        return max(spent, key=lambda state: state.resets_at) if spent else None

    def remaining(self) -> list[tuple[str, Period, Decimal]]:
        """(tenant, period, dollars left) for every tenant that has a budget, for the gauges.

        Those are the tenants with an override, and, when a global limit is set, every tenant
        with usage this month (one that has none has its whole budget left).
        """
        return [(tenant, period, left) for tenant, period, _, left in self.limits_and_remaining()]

    def limits_and_remaining(self) -> list[tuple[str, Period, Decimal, Decimal]]:
        """(tenant, period, limit, dollars left) for the tenants `remaining` names."""
        at = self._clock()
        tenants = {tenant for tenant, budget in self._budgets.items() if budget.limits()}
        if self._default.limits():
            tenants |= {t for t in self._ledger.tenants(at=at) if self.budget_for(t).limits()}
        ordered = sorted(tenants)
        spent = self._ledger.spent(ordered, at=at)
        found: list[tuple[str, Period, Decimal, Decimal]] = []
        for tenant in ordered:
            daily, monthly = spent[tenant]
            for period, limit in self.budget_for(tenant).limits().items():
                used = daily if period == "daily" else monthly
                found.append((tenant, period, limit, max(Decimal(0), limit - used)))
        return found
