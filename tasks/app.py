"""The Celery application; workers start it with `celery -A tasks.app`."""

from __future__ import annotations

from celery import Celery

__all__ = ["app"]

app = Celery(
    "scribes",
    include=["tasks.embed", "tasks.retrieve", "tasks.generate", "tasks.index", "tasks.store"],
)
app.config_from_object("celeryconfig")

import workers.lifecycle  # noqa: E402,F401  (connects the worker signals)
