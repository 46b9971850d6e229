"""`/v1/documents`: submit a note for indexing, list, read and delete the tenant's notes."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import redis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from api_shim.deps import AppDeps, Deps, Tenant
from api_shim.errors import ApiError
from api_shim.views import document_view
from rag.types import Failure
from rag.validation import validate_document
from tasks.pipeline import enqueue_document, enqueue_purge

__all__ = ["router"]

log = logging.getLogger("scribes.api")

router = APIRouter(prefix="/v1/documents")


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: str | None = None
    title: str
    text: str
    metadata: dict[str, Any] | None = None


@router.post("", status_code=202)
def submit_document(
    body: DocumentIn, tenant: Tenant, deps: AppDeps, request: Request
) -> JSONResponse:
    # A repeat under the same Idempotency-Key gets the first response: no second revision.
    return deps.idempotency.respond(
        request,
        tenant,
        body.model_dump(mode="json"),
        lambda: JSONResponse(_submit(body, tenant, deps), status_code=202),
    )


def _submit(body: DocumentIn, tenant: str, deps: Deps) -> dict[str, Any]:
    documents = deps.services.documents
    # Validated before an id is derived: hashing encodes the text, which must be valid first.
    validate_document(
        document_id=body.id or None,
        title=body.title,
        text=body.text,
        metadata=body.metadata,
        max_bytes=deps.settings.document_max_bytes,
    )
    document_id = body.id or _derived_id(body.title, body.text)
    try:
        record = enqueue_document(
            documents,
            tenant=tenant,
            document_id=document_id,
            title=body.title.strip(),
            text=body.text,
            metadata=body.metadata or {},
        )
    except redis.ConnectionError:
        raise
    except Exception as exc:
        current = documents.get(tenant, document_id)
        if current is not None:
            documents.mark_failed(
                tenant,
                document_id,
                current.revision,
                Failure("broker_unavailable", "could not be queued; submit it again"),
            )
        raise ApiError(
            503, "broker_unavailable", "the task broker is not reachable; try again"
        ) from exc
    return {"id": record.id, "status": record.status.value, "revision": record.revision}


@router.get("")
def list_documents(tenant: Tenant, deps: AppDeps) -> dict[str, Any]:
    return {"documents": [document_view(r) for r in deps.services.documents.records(tenant)]}


@router.get("/{document_id}")
def get_document(document_id: str, tenant: Tenant, deps: AppDeps) -> dict[str, Any]:
    record = deps.services.documents.get(tenant, document_id)
    if record is None:
        raise ApiError(404, "not_found", f"no document {document_id}")
    return document_view(record)


@router.delete("/{document_id}")
def delete_document(document_id: str, tenant: Tenant, deps: AppDeps) -> dict[str, Any]:
    revision = deps.services.documents.delete(tenant, document_id)
    if revision is None:
        raise ApiError(404, "not_found", f"no document {document_id}")
    # Already invisible to every search; the purge only reclaims the space, so a broker
    # that is down does not undo the delete: the chunks stay, unseen, until a re-ingest of
    # the same id replaces them.
    try:
        enqueue_purge(tenant=tenant, document_id=document_id, up_to_revision=revision)
    except Exception:
        log.warning("purge of %s/%s not queued; its chunks stay, unseen", tenant, document_id)
    return {"id": document_id, "status": "deleted"}


def _derived_id(title: str, text: str) -> str:
    """The id of a document sent without one: the same title and text, the same document."""
    return "doc-" + hashlib.sha256(f"{title}\x1f{text}".encode()).hexdigest()[:20]
