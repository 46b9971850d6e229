"""The ids a running task works for, put on every log record the task's thread writes.

`bound_ids` sets them for the task's duration (a context variable, so each thread of a
threads pool has its own); the log record factory installed at import adds `scribes_ids`,
e.g. ` job=78b7… tenant=alice request=req-123`, which `celeryconfig`'s log formats print.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

__all__ = [
    "REQUEST_ID_HEADER",
    "TENANT_HEADER",
    "TaskIds",
    "bound_ids",
    "current_ids",
    "set_ids",
]

# Message headers of a question's tasks: who asked, and the gateway's X-Request-ID.
TENANT_HEADER = "scribes_tenant"
REQUEST_ID_HEADER = "scribes_request_id"


@dataclass(frozen=True, slots=True)
class TaskIds:
    job_id: str | None = None
    tenant: str | None = None
    document_id: str | None = None
    revision: int | None = None
    request_id: str | None = None

    @classmethod
    def of_message(cls, kwargs: Mapping[str, Any], headers: Mapping[str, Any]) -> TaskIds:
        """The ids in a task's keyword arguments (tasks take ids, never objects) and in
        the headers `tasks.pipeline` puts on a question's messages."""
        revision = kwargs.get("revision")
        return cls(
            job_id=_text(kwargs.get("job_id")),
            tenant=_text(kwargs.get("tenant")) or _text(headers.get(TENANT_HEADER)),
            document_id=_text(kwargs.get("document_id")),
            revision=revision if isinstance(revision, int) else None,
            request_id=_text(headers.get(REQUEST_ID_HEADER)),
        )

    @property
    def document(self) -> tuple[str, str, int] | None:
        """(tenant, document, revision) of an index or store task."""
        if self.tenant is None or self.document_id is None or self.revision is None:
            return None
        return self.tenant, self.document_id, self.revision

    def render(self) -> str:
        parts = (
            ("job", self.job_id),
            ("tenant", self.tenant),
            ("document", self.document_id),
            ("revision", self.revision),
            ("request", self.request_id),
        )
        return "".join(f" {name}={value}" for name, value in parts if value is not None)


_NO_IDS = TaskIds()
_current: ContextVar[TaskIds | None] = ContextVar("scribes_task_ids", default=None)


def current_ids() -> TaskIds:
    return _current.get() or _NO_IDS


@contextmanager
def bound_ids(ids: TaskIds) -> Iterator[None]:
    token = _current.set(ids)
    try:
        yield
    finally:
        _current.reset(token)


def set_ids(ids: TaskIds | None) -> None:
    """Bind `ids` in this thread until the next call: for work that is not one block, such
    as a task's run from Celery's prerun signal to its postrun."""
    _current.set(ids)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


_default_factory = logging.getLogRecordFactory()


def _record_with_ids(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _default_factory(*args, **kwargs)
    record.scribes_ids = current_ids().render()
    return record


logging.setLogRecordFactory(_record_with_ids)
