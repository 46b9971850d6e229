"""The Celery application. Workers start it through `workers.app`, which adds their signals;
Flower and anything that only enqueues use this module alone."""

from __future__ import annotations

from celery import Celery

import tasks.context  # noqa: F401  (puts the task's ids on every log record)

__all__ = ["app"]

app = Celery(
    "scribes",
    include=[
        "tasks.embed",
        "tasks.retrieve",
        "tasks.generate",
        "tasks.index",
        "tasks.store",
        "tasks.reindex",
        "tasks.webhook",
    ],
)
app.config_from_object("celeryconfig")
