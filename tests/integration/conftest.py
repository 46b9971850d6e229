from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.cluster import Cluster, running_cluster
from tests.fake_anthropic import FakeAnthropic

ALICE_KEY = "key-alice-0123456789"
BOB_KEY = "key-bob-9876543210"
# A tenant of its own for tests that break that tenant's records on purpose.
CAROL_KEY = "key-carol-5555555555"
LLM_KEY = "sk-test-scribes"
LLM_MAX_RETRIES = 2


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=LLM_KEY) as fake:
        yield fake


@pytest.fixture(scope="session")
def cluster(session_dir: Path, redis_url: str, fake_llm: FakeAnthropic) -> Iterator[Cluster]:
    """All four pools, the API, the real Anthropic SDK pointed at the loopback server."""
    env = {
        "SCRIBES_API_KEYS": f"{ALICE_KEY}=alice,{BOB_KEY}=bob,{CAROL_KEY}=carol",
        "ANTHROPIC_API_KEY": LLM_KEY,
        "ANTHROPIC_BASE_URL": fake_llm.base_url,
        "SCRIBES_LLM_MODEL": "claude-sonnet-4-6",
        "SCRIBES_LLM_TIMEOUT_S": "30",
        # Fewer retries than the default 5, so that running out of them takes seconds.
        "SCRIBES_LLM_MAX_RETRIES": str(LLM_MAX_RETRIES),
    }
    with running_cluster(session_dir / "cluster", redis_url, env) as running:
        yield running


@pytest.fixture
def ledger_redis(redis_url: str) -> Iterator[redis.Redis]:
    """Database 13 of the session's Redis, emptied around each test: the usage and budget
    tests' own (the session cluster uses database 0)."""
    connection = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/13", decode_responses=True)
    connection.flushdb()
    yield connection
    connection.flushdb()
