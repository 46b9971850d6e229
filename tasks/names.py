"""Queue and task names, declared once. Import-light on purpose: naming a queue imports no task."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["QueueName", "TaskName"]


class QueueName(StrEnum):
    EMBED = "embed"
    RETRIEVE = "retrieve"
    GENERATE = "generate"
    INDEX = "index"


class TaskName(StrEnum):
    EMBED_QUERY = "scribes.embed.query"
    RETRIEVE_CONTEXT = "scribes.retrieve.context"
    GENERATE_ANSWER = "scribes.generate.answer"
    INDEX_DOCUMENT = "scribes.index.document"
    # Writes go to the retrieve pool: it is the one process that owns the embedded store.
    STORE_UPSERT = "scribes.store.upsert"
    STORE_PURGE = "scribes.store.purge"
    STORE_FORGET_QUESTIONS = "scribes.store.forget_questions"

    @property
    def queue(self) -> QueueName:
        return _ROUTES[self]


_ROUTES: dict[TaskName, QueueName] = {
    TaskName.EMBED_QUERY: QueueName.EMBED,
    TaskName.RETRIEVE_CONTEXT: QueueName.RETRIEVE,
    TaskName.GENERATE_ANSWER: QueueName.GENERATE,
    TaskName.INDEX_DOCUMENT: QueueName.INDEX,
    TaskName.STORE_UPSERT: QueueName.RETRIEVE,
    TaskName.STORE_PURGE: QueueName.RETRIEVE,
    TaskName.STORE_FORGET_QUESTIONS: QueueName.RETRIEVE,
}
