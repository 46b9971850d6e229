"""Every task routes to a declared queue, and every pool consumes queues that exist."""

from __future__ import annotations

import celeryconfig
from tasks.app import app
from tasks.names import QueueName, TaskName
from workers.pools import POOLS, worker_command

# What a worker does at start: import the modules listed in the app's `include`.
app.loader.import_default_modules()


def test_every_task_routes_to_a_declared_queue() -> None:
    declared = {queue.name for queue in celeryconfig.task_queues}
    assert declared == {queue.value for queue in QueueName}
    registered = {name for name in app.tasks if name.startswith("scribes.")}
    assert registered == {name.value for name in TaskName}
    for name in registered:
        route = app.amqp.router.route({}, name)
        assert route["queue"].name in declared, name


def test_every_queue_has_exactly_one_pool_and_commands_name_real_queues() -> None:
    consumed = [queue for spec in POOLS.values() for queue in spec.queues]
    assert sorted(consumed) == sorted(QueueName)
    for spec in POOLS.values():
        command = worker_command(spec)
        queues = command[command.index("--queues") + 1].split(",")
        assert set(queues) == {queue.value for queue in spec.queues}
        assert command[command.index("--pool") + 1] == spec.pool


def test_the_embedded_store_has_one_owner_process() -> None:
    owners = [spec for spec in POOLS.values() if spec.owns_vector_store]
    assert len(owners) == 1 and owners[0].pool in ("threads", "solo")
    assert {TaskName.STORE_UPSERT.queue, TaskName.STORE_PURGE.queue} <= set(owners[0].queues)


def test_delivery_is_at_least_once() -> None:
    assert celeryconfig.task_acks_late and celeryconfig.task_reject_on_worker_lost
    assert celeryconfig.worker_prefetch_multiplier == 1
    # Running tasks outlast the visibility timeout because their worker renews them
    # (workers.leases), several times within it; dead workers' messages are swept often.
    options = celeryconfig.broker_transport_options
    assert options["unacked_restore_interval"] <= 5
    assert options["visibility_timeout"] <= 30
    assert celeryconfig.accept_content == ["json"]
