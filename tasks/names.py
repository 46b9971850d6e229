"""Queue and task names, declared once. Import-light on purpose: naming a queue imports no task."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["QueueName", "TaskName"]


class QueueName(StrEnum):
    EMBED = "embed"
    RETRIEVE = "retrieve"
    GENERATE = "generate"
    INDEX = "index"
    # Webhook deliveries and their retries: never behind, nor in front of, a stage's work.
    WEBHOOK = "webhook"


class TaskName(StrEnum):
    EMBED_QUERY = "scribes.embed.query"
    EMBED_PENDING = "scribes.embed.pending"
    RETRIEVE_CONTEXT = "scribes.retrieve.context"
    GENERATE_ANSWER = "scribes.generate.answer"
    INDEX_DOCUMENT = "scribes.index.document"
    # Writes go to the retrieve pool: it is the one process that owns the embedded store.
    STORE_UPSERT = "scribes.store.upsert"
    STORE_UPSERT_BATCH = "scribes.store.upsert_batch"
    STORE_PURGE = "scribes.store.purge"
    STORE_FORGET_QUESTIONS = "scribes.store.forget_questions"
    # A reindex: the index pool prepares and embeds, the store's owner reads and writes.
    REINDEX_PREPARE = "scribes.reindex.prepare"
    REINDEX_EMBED = "scribes.reindex.embed"
    REINDEX_STEP = "scribes.reindex.step"
    REINDEX_DROP = "scribes.reindex.drop"
    WEBHOOK_DELIVER = "scribes.webhook.deliver"

    @property
    def queue(self) -> QueueName:
        return _ROUTES[self]


_ROUTES: dict[TaskName, QueueName] = {
    TaskName.EMBED_QUERY: QueueName.EMBED,
    TaskName.EMBED_PENDING: QueueName.EMBED,
    TaskName.RETRIEVE_CONTEXT: QueueName.RETRIEVE,
    TaskName.GENERATE_ANSWER: QueueName.GENERATE,
    TaskName.INDEX_DOCUMENT: QueueName.INDEX,
    TaskName.STORE_UPSERT: QueueName.RETRIEVE,
    TaskName.STORE_UPSERT_BATCH: QueueName.RETRIEVE,
    TaskName.STORE_PURGE: QueueName.RETRIEVE,
    TaskName.STORE_FORGET_QUESTIONS: QueueName.RETRIEVE,
    TaskName.REINDEX_PREPARE: QueueName.INDEX,
    TaskName.REINDEX_EMBED: QueueName.INDEX,
    TaskName.REINDEX_STEP: QueueName.RETRIEVE,
    TaskName.REINDEX_DROP: QueueName.RETRIEVE,
    TaskName.WEBHOOK_DELIVER: QueueName.WEBHOOK,
}
