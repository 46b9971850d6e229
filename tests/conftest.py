from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scribes")


@pytest.fixture(scope="session")
def redis_url(session_dir: Path) -> Iterator[str]:
    """A redis-server of the tests' own, on a free port: never the machine's."""
    from tests.cluster import running_redis

    with running_redis(session_dir / "redis") as server:
        yield server.url
