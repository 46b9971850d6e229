"""The JSON a client sees for a job and a document, built from the records' typed values."""

from __future__ import annotations

from typing import Any

from rag.records.documents import DocumentRecord
from rag.records.jobs import JobRecord
from rag.types import Usage

__all__ = ["document_view", "job_view"]


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
    }


def document_view(record: DocumentRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "title": record.title,
        "status": record.status.value,
        "revision": record.revision,
        "chunks": record.chunks,
        "error": record.error.message if record.error else None,
        "error_code": record.error.code if record.error else None,
    }
