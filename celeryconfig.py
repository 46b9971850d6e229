"""Every Celery setting in one module; `tasks.app` loads it with `config_from_object`."""

from __future__ import annotations

from kombu.entity import Queue

import tasks.context  # noqa: F401  (installs the `scribes_ids` the log formats print)
from rag.settings import get_settings
from tasks.names import QueueName, TaskName

_settings = get_settings()

broker_url = _settings.broker_url
result_backend = _settings.redis_url
# Nobody reads Celery results: jobs are polled from their own record in Redis.
task_ignore_result = True
broker_connection_retry_on_startup = True

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
event_serializer = "json"
enable_utc = True

task_queues = tuple(Queue(queue.value, routing_key=queue.value) for queue in QueueName)
task_default_queue = QueueName.GENERATE.value
task_create_missing_queues = False
task_routes = {name.value: {"queue": name.queue.value} for name in TaskName}

# At-least-once delivery: a task is acknowledged only once it has run, and a worker that
# dies mid-task gives its message back. Every task is written to be safe to run twice.
task_acks_late = True
task_reject_on_worker_lost = True
task_acks_on_failure_or_timeout = True
worker_prefetch_multiplier = 1
broker_transport_options = {
    # Short: each worker renews the messages it holds every quarter of this (workers.leases),
    # so only a dead worker's messages grow older than it and are handed back.
    "visibility_timeout": _settings.visibility_timeout_s,
    # Look for such messages every 5 s (kombu's default is about every 100 s).
    "unacked_restore_interval": 5,
    "unacked_restore_throttle": 1,
    "socket_timeout": 10,
    "socket_connect_timeout": 5,
}
redis_socket_timeout = 10
redis_socket_connect_timeout = 5

# Loading the embedding model takes about 6 s, more than the 4 s default.
worker_proc_alive_timeout = 90
# Every line a task writes names its job or document, tenant and request (tasks.context).
worker_log_format = "[%(asctime)s: %(levelname)s/%(processName)s]%(scribes_ids)s %(message)s"
worker_task_log_format = (
    "[%(asctime)s: %(levelname)s/%(processName)s]%(scribes_ids)s "
    "%(task_name)s[%(task_id)s]: %(message)s"
)
# Task events are for monitors: Flower turns them on in every worker while it runs (its
# default enable_events), so they are off at start unless SCRIBES_TASK_EVENTS asks; sent
# with no monitor they cost a question 7 ms of its 34 on the 2-core machine (bench/).
worker_send_task_events = _settings.task_events
task_send_sent_event = _settings.task_events
task_track_started = True
worker_cancel_long_running_tasks_on_connection_loss = True
# SIGTERM is a soft shutdown (scribes sets REMAP_SIGTERM=SIGQUIT): running tasks get this
# long to finish, then the rest are cancelled and handed back to the broker at once. Celery
# waits all of it whenever a task was running, so it is short; the supervisor, systemd or
# Kubernetes allows 45 s before SIGKILL.
worker_soft_shutdown_timeout = 10.0
