"""A real Prometheus scrapes a running cluster with deploy/monitoring's scrape job and rules:
the dollars it counts are the jobs' own, a stopped pool's queue fills and the pool-down
alert fires, and both clear once the pool is back."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from scribes.localredis import LocalRedis, free_port
from tests.cluster import Cluster, running_cluster
from tests.fake_anthropic import FakeAnthropic
from tests.integration.conftest import ALICE_KEY, LLM_KEY
from tests.integration.test_question_path import MUSTARD, ingest, unique, wait_job
from tests.metrics_scrape import scrape
from tests.prometheus import (
    Prometheus,
    PrometheusTools,
    prometheus_config,
    require_prometheus,
    running_prometheus,
)

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
METRICS_TOKEN = "metrics-token-0123456789"
DAILY_BUDGET_USD = 1
COST = "sum(scribes_llm_cost_usd_total)"
GENERATE_DEPTH = 'max(scribes_queue_depth{queue="generate"})'


@pytest.fixture(scope="module")
def tools() -> PrometheusTools:
    return require_prometheus()


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=LLM_KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def cluster(
    tools: PrometheusTools, llm: FakeAnthropic, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """All four pools and the API on a Redis of their own; answers by the real SDK, priced."""
    directory = tmp_path_factory.mktemp("prometheus-cluster")
    server = LocalRedis(directory / "redis", free_port())
    server.start()
    try:
        env = {
            "SCRIBES_API_KEYS": f"{ALICE_KEY}=alice",
            "SCRIBES_METRICS_TOKEN": METRICS_TOKEN,
            "ANTHROPIC_API_KEY": LLM_KEY,
            "ANTHROPIC_BASE_URL": llm.base_url,
            "SCRIBES_LLM_MODEL": "claude-sonnet-4-6",
            # Far above what the tests spend: it is measured, never reached.
            "SCRIBES_BUDGET_DAILY_USD": str(DAILY_BUDGET_USD),
            # One failed call opens the breaker and one probe a second later closes it
            # again, so that the last test sees its transitions (the defaults are the
            # breaker tests' business).
            "SCRIBES_BREAKER_FAILURES": "1",
            "SCRIBES_BREAKER_COOLDOWN_S": "1",
            "SCRIBES_BREAKER_CLOSE_AFTER": "1",
        }
        with running_cluster(directory / "data", server.url, env) as running:
            yield running
    finally:
        server.stop()


def _deployed_api_job() -> dict[str, Any]:
    deployed = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    (job,) = [job for job in deployed["scrape_configs"] if job["job_name"] == "scribes-api"]
    assert isinstance(job, dict)
    return job


@pytest.fixture(scope="module")
def prometheus(
    tools: PrometheusTools, cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """deploy/monitoring's API job and rules.yml, pointed at the cluster, every second."""
    directory = tmp_path_factory.mktemp("prometheus")
    job = _deployed_api_job()
    # The job reads its token from a file beside the config, as deployed.
    token_file = directory / job["authorization"]["credentials_file"]
    token_file.parent.mkdir(parents=True)
    token_file.write_text(f"{METRICS_TOKEN}\n")
    (directory / "wrong-token").write_text("not-the-token\n")
    target = urlsplit(cluster.api_url).netloc
    jobs = [
        {**job, "static_configs": [{"targets": [target]}]},
        # The same target with a wrong token: the endpoint must turn it away.
        {
            "job_name": "wrong-token",
            "authorization": {"type": "Bearer", "credentials_file": "wrong-token"},
            "static_configs": [{"targets": [target]}],
        },
    ]
    config = prometheus_config(jobs, rule_files=[MONITORING / "rules.yml"], interval_s=1)
    with running_prometheus(directory, config, tools) as server:
        yield server


def _submit(http: httpx.Client, question: str) -> str:
    response = http.post("/v1/questions", json={"question": question})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def _cost(jobs: list[dict[str, Any]]) -> Decimal:
    assert all(job["status"] == "succeeded" for job in jobs), jobs
    models = [(job["model"], job["no_context"]) for job in jobs]
    assert all(model == ("claude-sonnet-4-6", False) for model in models), models
    costs = [Decimal(str(job["usage"]["cost_usd"])) for job in jobs]
    assert all(cost > 0 for cost in costs), costs
    return sum(costs, Decimal(0))


def _settled_cost(cluster: Cluster, prometheus: Prometheus) -> Decimal:
    """The cost so far, once Prometheus's scrapes agree with the API's own count: a job
    is counted as it finishes, and the last one may not have been scraped yet."""
    exposed = scrape(f"{cluster.api_url}/metrics", METRICS_TOKEN).value(
        "scribes_llm_cost_usd_total"
    )
    return Decimal(str(_prometheus_cost_reaches(prometheus, Decimal(str(exposed)))))


def _prometheus_cost_reaches(prometheus: Prometheus, expected: Decimal) -> float:
    """Prometheus's total once its scrapes have caught up with `expected`, to 1e-9 $."""

    def caught_up() -> float | None:
        total = prometheus.value(COST) or 0.0
        return total if abs(total - float(expected)) < 1e-9 else None

    try:
        return prometheus.wait_for(f"{COST} == {expected}", caught_up, timeout_s=20)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; Prometheus has {prometheus.value(COST)}") from exc


def test_prometheus_scrapes_the_api_with_the_deployed_token(
    cluster: Cluster, prometheus: Prometheus
) -> None:
    assert httpx.get(f"{cluster.api_url}/metrics").status_code == 401

    def scraped() -> dict[str, dict[str, Any]] | None:
        targets = {target["labels"]["job"]: target for target in prometheus.targets()}
        done = len(targets) == 2 and all(t["health"] != "unknown" for t in targets.values())
        return targets if done else None

    targets = prometheus.wait_for("both targets scraped", scraped, timeout_s=30)
    assert targets["scribes-api"]["health"] == "up", targets["scribes-api"]["lastError"]
    assert targets["wrong-token"]["health"] == "down"
    assert "401" in targets["wrong-token"]["lastError"]
    # The series the rules read at scrape time are there for every queue and pool.
    for name in ("scribes_queue_depth", "scribes_queue_oldest_age_seconds"):
        queues = {s["metric"]["queue"] for s in prometheus.query(f'{name}{{job="scribes-api"}}')}
        assert queues == {"embed", "retrieve", "generate", "index", "webhook"}, name
    pools = prometheus.query('max by (pool) (scribes_pool_up{job="scribes-api"})')
    assert {s["metric"]["pool"]: s["value"][1] for s in pools} == {
        "embed": "1",
        "retrieve": "1",
        "generate": "1",
        "index": "1",
    }
    assert prometheus.value('scribes_breaker_state{dependency="llm"}') == 0
    # rules.yml loaded whole: its recording group and every alert.
    rules = [rule["name"] for group in prometheus.rule_groups() for rule in group["rules"]]
    assert "ScribesPoolDown" in rules and "scribes:budget_used:ratio" in rules


def test_prometheus_counts_exactly_what_the_jobs_cost(
    cluster: Cluster, prometheus: Prometheus
) -> None:
    before = _settled_cost(cluster, prometheus)
    with cluster.client(ALICE_KEY) as alice:
        ingest(alice, unique("mustard"), "The mustard seed", MUSTARD)
        ids = [
            _submit(alice, f"How many mustard seeds were in the jar, question {n} {unique('q')}?")
            for n in range(10)
        ]
        jobs = [wait_job(alice, job_id) for job_id in ids]
    spent = _cost(jobs)
    total = _prometheus_cost_reaches(prometheus, before + spent)
    assert round(total, 2) == round(float(before + spent), 2)


def test_the_budget_rule_reads_what_the_tenant_spent(
    cluster: Cluster, prometheus: Prometheus
) -> None:
    with cluster.client(ALICE_KEY) as alice:
        ingest(alice, unique("mustard"), "The mustard seed", MUSTARD)
        job = wait_job(
            alice, _submit(alice, f"How many mustard seeds did the jar hold, asked {unique('q')}?")
        )
    _cost([job])

    def ratio_matches() -> float | None:
        spent = prometheus.value(COST)
        used = prometheus.value('scribes:budget_used:ratio{tenant="alice", period="daily"}')
        if spent is None or used is None:
            return None
        return used if abs(used - spent / DAILY_BUDGET_USD) < 1e-6 else None

    # The gauges rules.yml's budget alerts read, served by the API for a tenant with a budget.
    for gauge in ("scribes_budget_remaining_usd", "scribes_budget_limit_usd"):
        selector = f'{gauge}{{tenant="alice", period="daily"}}'
        prometheus.wait_for(selector, lambda: prometheus.query(selector) or None, 10)  # noqa: B023
    used = prometheus.wait_for("alice's budget used = her spend / limit", ratio_matches, 20)
    assert 0 < used < 0.8
    assert not prometheus.firing("ScribesBudgetNearlySpent")
    assert not prometheus.firing("ScribesBudgetSpent")


def test_a_stopped_pool_fills_its_queue_and_fires_pool_down(
    cluster: Cluster, prometheus: Prometheus
) -> None:
    """Takes about a minute: the pool's beat goes stale after 20 s, then the rule's `for: 30s`."""
    before = _settled_cost(cluster, prometheus)
    assert prometheus.value('max(scribes_pool_up{pool="generate"})') == 1
    assert not prometheus.firing("ScribesPoolDown")
    with cluster.client(ALICE_KEY) as alice:
        ingest(alice, unique("mustard"), "The mustard seed", MUSTARD)
        generate = cluster.supervisor.children["pool:generate"]
        generate.send_signal(signal.SIGTERM)  # Celery's soft shutdown, as `systemctl stop` does
        generate.wait(60)
        try:
            ids = [
                _submit(alice, f"Who preached on the mustard seed, asked {unique('q')}?")
                for _ in range(5)
            ]
            # (b) The questions pass embed and retrieve and wait on generate.
            prometheus.wait_for(
                "generate's queue holding the 5 questions",
                lambda: (prometheus.value(GENERATE_DEPTH) or 0) >= 5,
                timeout_s=30,
            )
            # (c) The alert from rules.yml, for generate alone.
            firing = prometheus.wait_for(
                "ScribesPoolDown firing",
                lambda: prometheus.firing("ScribesPoolDown") or None,
                timeout_s=120,
            )
            assert [alert["labels"]["pool"] for alert in firing] == ["generate"]
            assert firing[0]["labels"]["severity"] == "critical"
            assert "generate pool" in firing[0]["annotations"]["summary"]
            assert prometheus.value(GENERATE_DEPTH) == 5
        finally:
            cluster.restart_pool("generate")
        jobs = [wait_job(alice, job_id, timeout_s=90) for job_id in ids]
    spent = _cost(jobs)
    prometheus.wait_for(
        "generate's queue empty again", lambda: prometheus.value(GENERATE_DEPTH) == 0
    )
    prometheus.wait_for(
        "ScribesPoolDown resolved", lambda: not prometheus.firing("ScribesPoolDown"), timeout_s=30
    )
    _prometheus_cost_reaches(prometheus, before + spent)


def test_every_series_the_dashboard_queries_is_in_the_scrape(
    cluster: Cluster, prometheus: Prometheus, llm: FakeAnthropic
) -> None:
    """After the tests above (questions, costs, a budget, a stopped pool) and one failed
    model call, Prometheus holds a series for every name a panel asks for."""
    llm.fail_next(529)
    with cluster.client(ALICE_KEY) as alice:
        job = wait_job(
            alice,
            _submit(alice, f"How many mustard seeds were in the jar, once more {unique('q')}?"),
            timeout_s=90,
        )
    assert job["status"] == "succeeded", job
    dashboard = (MONITORING / "grafana" / "scribes.json").read_text()
    names = sorted(set(re.findall(r"scribes_[a-z_]+", dashboard)))
    assert len(names) > 15

    def missing() -> list[str] | None:
        absent = [name for name in names if not prometheus.query(f"count({name})")]
        return absent or None

    try:
        prometheus.wait_for("every dashboard series scraped", lambda: missing() is None, 30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; missing: {missing()}") from exc
