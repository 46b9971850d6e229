"""`scribes up` starts a Redis of its own when none answers, with append-only persistence."""

from __future__ import annotations

from pathlib import Path

import redis

from rag.settings import Settings
from scribes.localredis import free_port, redis_answers
from scribes.supervisor import Supervisor


def test_starts_a_persistent_redis_when_none_answers(tmp_path: Path) -> None:
    silent = f"redis://127.0.0.1:{free_port()}/0"
    assert not redis_answers(silent)
    settings = Settings(REDIS_URL=silent, SCRIBES_DATA_DIR=str(tmp_path))
    supervisor = Supervisor(settings, redis_port=free_port(), log=lambda _: None)
    try:
        supervisor.ensure_redis(explicit_url=False)
        assert supervisor.redis is not None and supervisor.redis_url == supervisor.redis.url
        client = redis.Redis.from_url(supervisor.redis_url, decode_responses=True)
        client.set("scribes:probe", "kept")
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("dir") == {"dir": str((tmp_path / "redis").resolve())}
    finally:
        supervisor.stop()
    assert not redis_answers(supervisor.redis_url)

    # Started again on the same data folder, it still has what it was given.
    again = Supervisor(settings, redis_port=supervisor.redis.port, log=lambda _: None)
    try:
        again.ensure_redis(explicit_url=False)
        client = redis.Redis.from_url(again.redis_url, decode_responses=True)
        assert client.get("scribes:probe") == "kept"
    finally:
        again.stop()


def test_an_explicit_redis_that_is_down_is_a_clear_error(tmp_path: Path) -> None:
    silent = f"redis://127.0.0.1:{free_port()}/0"
    settings = Settings(REDIS_URL=silent, SCRIBES_DATA_DIR=str(tmp_path))
    supervisor = Supervisor(settings, log=lambda _: None)
    try:
        supervisor.ensure_redis(explicit_url=True)
    except RuntimeError as exc:
        assert str(exc) == f"Redis at {silent} is not reachable; start it or set REDIS_URL"
    else:
        raise AssertionError("no error for an unreachable REDIS_URL")
    assert supervisor.redis is None
