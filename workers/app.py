"""What `celery -A workers.app worker` loads: the tasks' app, and the pools' signals."""

from __future__ import annotations

import workers.lifecycle
import workers.metrics  # noqa: F401  (counts every task run)
from tasks.app import app

__all__ = ["app"]
