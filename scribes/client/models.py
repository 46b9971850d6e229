"""What the API returns, as frozen dataclasses read from its JSON.

Every reader takes what it knows and ignores the rest, so a newer API with more fields
does not break an older client; a job's whole JSON stays in `Job.raw`. Dollars are
`Decimal`, read through `str` so that a float's binary error never enters a sum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, Literal

__all__ = [
    "FINISHED",
    "Budget",
    "BudgetPeriod",
    "Document",
    "Job",
    "JobError",
    "ModelUsage",
    "Question",
    "SemanticMatch",
    "Source",
    "TokenUsage",
    "UsageDay",
    "UsageReport",
    "UsageTally",
]

CacheMode = Literal["use", "refresh", "bypass"]
FINISHED = frozenset({"succeeded", "failed", "cancelled"})


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _counts(value: Any) -> dict[str, int]:
    return {str(name): int(count) for name, count in _object(value).items()}


@dataclass(frozen=True, slots=True)
class Question:
    """One question of a batch (`submit_many`), with what it may carry besides its text."""

    question: str
    top_k: int | None = None
    cache: CacheMode | None = None
    callback_url: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"question": self.question}
        for name in ("top_k", "cache", "callback_url"):
            if (value := getattr(self, name)) is not None:
                body[name] = value
        return body


@dataclass(frozen=True, slots=True)
class Source:
    """A passage the answer cites; `number` is its mark in the text, [1] upwards."""

    number: int
    document_id: str
    title: str
    text: str
    score: float
    chunk_id: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Source:
        return cls(
            number=int(data.get("number", 0)),
            document_id=str(data["document_id"]),
            title=str(data.get("title", "")),
            text=str(data.get("text", "")),
            score=float(data.get("score", 0.0)),
            chunk_id=str(data["chunk_id"]) if data.get("chunk_id") is not None else None,
        )


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens as the model reported them, and their price (None for a model with none known)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cost_usd: Decimal | None = Decimal(0)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TokenUsage:
        return cls(
            input_tokens=int(data.get("input_tokens", 0)),
            output_tokens=int(data.get("output_tokens", 0)),
            cache_read_input_tokens=int(data.get("cache_read_input_tokens", 0)),
            cache_creation_input_tokens=int(data.get("cache_creation_input_tokens", 0)),
            cost_usd=_decimal(data.get("cost_usd", 0)),
        )


@dataclass(frozen=True, slots=True)
class JobError:
    code: str
    message: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobError:
        return cls(code=str(data.get("code", "unknown")), message=str(data.get("message", "")))


@dataclass(frozen=True, slots=True)
class SemanticMatch:
    """The earlier question whose answer a semantic-cache hit is, and how alike they are."""

    question: str
    similarity: float

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SemanticMatch:
        return cls(question=str(data["question"]), similarity=float(data["similarity"]))


@dataclass(frozen=True, slots=True)
class Job:
    """A question's job: queued, running, then succeeded, failed or cancelled.

    `timings` are milliseconds by stage; `quality` and `webhook` are the API's objects as
    they came; `raw` is the whole JSON, for fields this client does not know yet.
    """

    id: str
    status: str
    stage: str = "queued"
    question: str = ""
    answer: str | None = None
    sources: tuple[Source, ...] = ()
    no_context: bool = False
    degraded: bool = False
    usable: bool | None = None
    cached: str | None = None
    semantic: SemanticMatch | None = None
    model: str | None = None
    usage: TokenUsage = field(default_factory=TokenUsage)
    quality: Mapping[str, Any] | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    note: str | None = None
    error: JobError | None = None
    request_id: str | None = None
    webhook: Mapping[str, Any] | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, question: str = "") -> Job:
        """A job, or the 202 of a submit (`{"id", "status", "poll"}`, then `question` fills
        in the question that was sent)."""
        error = data.get("error")
        semantic = data.get("semantic")
        quality = data.get("quality")
        webhook = data.get("webhook")
        return cls(
            id=str(data["id"]),
            status=str(data["status"]),
            stage=str(data.get("stage") or "queued"),
            question=str(data.get("question") or question),
            answer=None if data.get("answer") is None else str(data["answer"]),
            sources=tuple(Source.from_json(s) for s in data.get("sources") or ()),
            no_context=bool(data.get("no_context")),
            degraded=bool(data.get("degraded")),
            usable=None if data.get("usable") is None else bool(data["usable"]),
            cached=None if data.get("cached") is None else str(data["cached"]),
            semantic=SemanticMatch.from_json(semantic) if isinstance(semantic, Mapping) else None,
            model=None if data.get("model") is None else str(data["model"]),
            usage=TokenUsage.from_json(_object(data.get("usage"))),
            quality=quality if isinstance(quality, Mapping) else None,
            timings={str(k): float(v) for k, v in _object(data.get("timings")).items()},
            note=data.get("note") or None,
            error=JobError.from_json(error) if isinstance(error, Mapping) else None,
            request_id=data.get("request_id") or None,
            webhook=webhook if isinstance(webhook, Mapping) else None,
            raw=dict(data),
        )


@dataclass(frozen=True, slots=True)
class Document:
    """A note and its indexing: `queued`, `indexed` or `failed` (with `error`, `error_code`).
    A submit's answer has only id, status and revision."""

    id: str
    status: str
    revision: int
    title: str | None = None
    chunks: int | None = None
    error: str | None = None
    error_code: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Document:
        chunks = data.get("chunks")
        return cls(
            id=str(data["id"]),
            status=str(data["status"]),
            revision=int(data.get("revision", 0)),
            title=None if data.get("title") is None else str(data["title"]),
            chunks=None if chunks is None else int(chunks),
            error=data.get("error") or None,
            error_code=data.get("error_code") or None,
        )


@dataclass(frozen=True, slots=True)
class UsageTally:
    """A tenant's counts over a day or a range: `tokens` by type (input, output, cache_read,
    cache_write), `cache_hits` by cache (exact, semantic)."""

    questions: int = 0
    cache_hits: Mapping[str, int] = field(default_factory=dict)
    failed: int = 0
    no_context: int = 0
    cancelled: int = 0
    degraded: int = 0
    tokens: Mapping[str, int] = field(default_factory=dict)
    cost_usd: Decimal = Decimal(0)
    unpriced_answers: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UsageTally:
        return cls(
            questions=int(data.get("questions", 0)),
            cache_hits=_counts(data.get("cache_hits")),
            failed=int(data.get("failed", 0)),
            no_context=int(data.get("no_context", 0)),
            cancelled=int(data.get("cancelled", 0)),
            degraded=int(data.get("degraded", 0)),
            tokens=_counts(data.get("tokens")),
            cost_usd=_decimal(data.get("cost_usd")) or Decimal(0),
            unpriced_answers=int(data.get("unpriced_answers", 0)),
        )


@dataclass(frozen=True, slots=True)
class UsageDay:
    day: date
    totals: UsageTally


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """What one model wrote over the range."""

    answers: int = 0
    tokens: Mapping[str, int] = field(default_factory=dict)
    cost_usd: Decimal = Decimal(0)
    unpriced_answers: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelUsage:
        return cls(
            answers=int(data.get("answers", 0)),
            tokens=_counts(data.get("tokens")),
            cost_usd=_decimal(data.get("cost_usd")) or Decimal(0),
            unpriced_answers=int(data.get("unpriced_answers", 0)),
        )


@dataclass(frozen=True, slots=True)
class BudgetPeriod:
    limit_usd: Decimal
    spent_usd: Decimal
    remaining_usd: Decimal
    exceeded: bool
    resets_at: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BudgetPeriod:
        return cls(
            limit_usd=Decimal(str(data["limit_usd"])),
            spent_usd=Decimal(str(data["spent_usd"])),
            remaining_usd=Decimal(str(data["remaining_usd"])),
            exceeded=bool(data.get("exceeded")),
            resets_at=str(data.get("resets_at", "")),
        )


@dataclass(frozen=True, slots=True)
class Budget:
    """The tenant's budget: `action` (reject or degrade) and each limited period's state."""

    action: str
    periods: Mapping[str, BudgetPeriod]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Budget:
        return cls(
            action=str(data.get("action", "")),
            periods={
                str(name): BudgetPeriod.from_json(value)
                for name, value in data.items()
                if isinstance(value, Mapping)
            },
        )


@dataclass(frozen=True, slots=True)
class UsageReport:
    """`GET /v1/usage`: the key's tenant from `start` to `end`, UTC days, both included."""

    tenant: str
    start: date
    end: date
    totals: UsageTally
    by_day: tuple[UsageDay, ...]
    by_model: Mapping[str, ModelUsage]
    budget: Budget | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UsageReport:
        budget = data.get("budget")
        return cls(
            tenant=str(data["tenant"]),
            start=date.fromisoformat(str(data["from"])),
            end=date.fromisoformat(str(data["to"])),
            totals=UsageTally.from_json(_object(data.get("totals"))),
            by_day=tuple(
                UsageDay(date.fromisoformat(str(day["date"])), UsageTally.from_json(day))
                for day in data.get("by_day") or ()
            ),
            by_model={
                str(name): ModelUsage.from_json(value)
                for name, value in _object(data.get("by_model")).items()
            },
            budget=Budget.from_json(budget) if isinstance(budget, Mapping) else None,
        )
