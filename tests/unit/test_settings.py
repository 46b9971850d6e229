"""Settings refuse what cannot work, and the command says so in one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rag.settings import ConfigurationError, Settings


def test_production_refuses_to_start_without_api_keys() -> None:
    with pytest.raises(ConfigurationError, match="refusing to serve without authentication"):
        Settings(SCRIBES_ENV="production").check()
    Settings(SCRIBES_ENV="production", SCRIBES_API_KEYS="k1=alice").check()


def test_api_keys_map_to_tenants() -> None:
    settings = Settings(SCRIBES_API_KEYS=" k1=alice, k2 = bob ,")
    assert settings.api_keys == {"k1": "alice", "k2": "bob"}
    with pytest.raises(ConfigurationError, match="not of the form key=tenant"):
        _ = Settings(SCRIBES_API_KEYS="k1alice").api_keys


def test_chunk_overlap_must_be_smaller_than_the_chunk() -> None:
    with pytest.raises(ConfigurationError, match="OVERLAP"):
        Settings(SCRIBES_CHUNK_TOKENS=64, SCRIBES_CHUNK_OVERLAP_TOKENS=64).check()


def test_broker_defaults_to_redis_and_may_be_rabbitmq() -> None:
    assert Settings(REDIS_URL="redis://h:1/0").broker_url == "redis://h:1/0"
    rabbit = Settings(REDIS_URL="redis://h:1/0", CELERY_BROKER_URL="amqp://g:g@h:5672//")
    assert rabbit.broker_url == "amqp://g:g@h:5672//"


def _scribes(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCRIBES_")}
    return subprocess.run(
        [sys.executable, "-m", "scribes.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("command", [["api"], ["worker", "embed"]])
def test_servers_refuse_production_without_keys_in_one_line(command: list[str]) -> None:
    done = _scribes(*command, SCRIBES_ENV="production")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "SCRIBES_ENV=production needs SCRIBES_API_KEYS" in done.stderr


def test_a_client_command_does_not_need_the_servers_keys() -> None:
    # `ask` on an operator's laptop: it only needs where the API is (and its own key).
    done = _scribes("ask", "hello?", SCRIBES_ENV="production", SCRIBES_API_URL="http://127.0.0.1:9")
    assert done.returncode == 1
    assert "is not reachable" in done.stderr and "SCRIBES_API_KEYS" not in done.stderr
