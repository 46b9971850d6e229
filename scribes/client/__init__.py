"""The Python client of the Scribes API: `Scribes` (blocking) and `AsyncScribes` (asyncio).

    from scribes.client import Scribes

    with Scribes("http://127.0.0.1:8000", api_key="…") as scribes:
        job = scribes.ask("What was the plant in Jonah 4 called?")
        print(job.answer, [source.title for source in job.sources])

Waiting is by long poll (`GET /v1/questions/{id}?wait=30`), never a tight loop; `stream()`
reads the job's server-sent events. Every failure is a `ScribesError`: `ApiError` for an
error the API answered, `Unreachable` when it did not answer, `Timeout` for a job that did
not finish in the time given.
"""

from __future__ import annotations

from scribes.client.aio import AsyncScribes
from scribes.client.calls import Retries
from scribes.client.errors import ApiError, ScribesError, Timeout, Unreachable
from scribes.client.events import (
    Event,
    JobEvent,
    NoteEvent,
    RestartEvent,
    StageEvent,
    TextEvent,
)
from scribes.client.models import (
    Budget,
    BudgetPeriod,
    Document,
    Job,
    JobError,
    ModelUsage,
    Question,
    SemanticMatch,
    Source,
    TokenUsage,
    UsageDay,
    UsageReport,
    UsageTally,
)
from scribes.client.sync import Scribes

__all__ = [
    "ApiError",
    "AsyncScribes",
    "Budget",
    "BudgetPeriod",
    "Document",
    "Event",
    "Job",
    "JobError",
    "JobEvent",
    "ModelUsage",
    "NoteEvent",
    "Question",
    "RestartEvent",
    "Retries",
    "Scribes",
    "ScribesError",
    "SemanticMatch",
    "Source",
    "StageEvent",
    "TextEvent",
    "Timeout",
    "TokenUsage",
    "Unreachable",
    "UsageDay",
    "UsageReport",
    "UsageTally",
]
