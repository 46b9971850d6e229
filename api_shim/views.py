"""The JSON a client sees for a job and a document, built from the records' typed values.

A job's is built in `rag.views`, where the workers that deliver webhooks build it too."""

from __future__ import annotations

from typing import Any

from rag.records.documents import DocumentRecord
from rag.views import job_view

__all__ = ["document_view", "job_view"]


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
