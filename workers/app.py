"""What `celery -A workers.app worker` loads: the tasks' app, and the pools' signals."""

from __future__ import annotations

import workers.lifecycle  # noqa: F401  (connects the worker signals)
from tasks.app import app

__all__ = ["app"]
