"""The JSON a client sees for a job: what `GET /v1/questions/{id}` answers and, less its
`webhook` field, the body a webhook delivers. Here, not in the API, so that the workers
that deliver webhooks build the same JSON."""

from __future__ import annotations

import json
from typing import Any

from rag.records.jobs import JobRecord
from rag.types import Usage

__all__ = ["job_view", "webhook_body"]


def job_view(job: JobRecord) -> dict[str, Any]:
    answer = job.answer
    return {
        "id": job.id,
        "status": job.status.value,
        "stage": job.stage.value,
        "question": job.question,
        "answer": answer.text if answer else None,
        "sources": [source.to_json() for source in answer.sources] if answer else [],
        "no_context": answer.no_context if answer else False,
        "degraded": answer.degraded if answer else False,
        "usable": answer.usable if answer else None,
        "cached": job.cached,
        # With "cached": "semantic": the earlier question whose answer this is, and how alike.
        "semantic": job.semantic.to_json() if job.semantic else None,
        "model": (answer.model or None) if answer else None,
        "usage": (answer.usage if answer else Usage()).to_json(),
        "quality": answer.quality.to_json() if answer and answer.quality else None,
        "timings": job.timings_ms(),
        "note": job.note,
        "error": job.error.to_json() if job.error else None,
        "request_id": job.request_id,
        # Where the finished job is POSTed, and how that has gone; null without a callback.
        "webhook": job.webhook.to_json() if job.webhook else None,
    }


def webhook_body(job: JobRecord) -> bytes:
    """The finished job as a webhook delivers it: the same bytes on every attempt (the
    `webhook` field, which changes with each, is left out)."""
    view = job_view(job)
    del view["webhook"]
    return json.dumps(view, separators=(",", ":"), ensure_ascii=False).encode()
