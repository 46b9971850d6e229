"""deploy/monitoring: promtool accepts the config and the rules, every alert fires in its unit
tests, and the dashboard and rules ask only for series that Scribes exports."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from rag.telemetry import metrics
from tasks.names import QueueName
from tests.prometheus import PrometheusTools, require_prometheus
from workers.pools import POOLS

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "scribes.json"

# Read from Redis at scrape time by rag.telemetry.collectors, with their labels.
COLLECTED: dict[str, frozenset[str]] = {
    "scribes_queue_depth": frozenset({"queue"}),
    "scribes_queue_oldest_age_seconds": frozenset({"queue"}),
    "scribes_pool_up": frozenset({"pool", "host"}),
    "scribes_breaker_state": frozenset({"dependency"}),
    "scribes_budget_remaining_usd": frozenset({"tenant", "period"}),
    "scribes_budget_limit_usd": frozenset({"tenant", "period"}),
}
# Added by Prometheus to every series it scrapes.
TARGET_LABELS = frozenset({"job", "instance"})
# Label values that name things declared once in the code.
KNOWN_VALUES = {"queue": {q.value for q in QueueName}, "pool": set(POOLS)}


@pytest.fixture(scope="module")
def tools() -> PrometheusTools:
    return require_prometheus()


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _rules() -> list[dict[str, Any]]:
    return [
        rule for group in _load_yaml(MONITORING / "rules.yml")["groups"] for rule in group["rules"]
    ]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def _dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _dashboard_exprs() -> list[str]:
    return [
        target["expr"]
        for panel in _dashboard_panels()
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def _deployable_copy(directory: Path) -> Path:
    """The monitoring folder as an operator sets it up, with placeholder secrets."""
    copy = directory / "monitoring"
    shutil.copytree(MONITORING, copy)
    (copy / "secrets").mkdir()
    (copy / "secrets" / "metrics-token").write_text("placeholder-token\n")
    (copy / "secrets" / "flower-password").write_text("placeholder-password\n")
    return copy / "prometheus.yml"


def test_promtool_accepts_the_config_and_its_rule_file(
    tools: PrometheusTools, tmp_path: Path
) -> None:
    config = _deployable_copy(tmp_path)
    checked = tools.promtool_run("check", "config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The rule file is checked with the config, so its path resolves beside it.
    assert "SUCCESS: 1 rule files found" in checked.stdout
    assert "rules.yml" in checked.stdout and "rules found" in checked.stdout


def test_the_config_reads_its_secrets_from_files(tools: PrometheusTools, tmp_path: Path) -> None:
    config = _deployable_copy(tmp_path)
    loaded = _load_yaml(config)
    assert loaded["global"]["scrape_interval"] == "15s"
    assert loaded["global"]["evaluation_interval"] == "15s"
    assert loaded["rule_files"] == ["rules.yml"]
    jobs = {job["job_name"]: job for job in loaded["scrape_configs"]}
    assert set(jobs) == {"scribes-api", "scribes-workers", "flower"}
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in jobs.values())
    assert jobs["scribes-api"]["authorization"] == {
        "type": "Bearer",
        "credentials_file": "secrets/metrics-token",
    }
    assert jobs["flower"]["basic_auth"]["password_file"] == "secrets/flower-password"
    assert jobs["scribes-workers"]["file_sd_configs"][0]["files"] == ["targets/*.yml"]
    # No secret is written in the file itself.
    text = config.read_text()
    assert "password:" not in text and "credentials:" not in text
    # promtool refuses the config while a secret file is missing: it really reads them.
    (config.parent / "secrets" / "metrics-token").unlink()
    checked = tools.promtool_run("check", "config", str(config))
    assert checked.returncode != 0 and "metrics-token" in checked.stdout + checked.stderr


def test_promtool_accepts_the_rules(tools: PrometheusTools) -> None:
    checked = tools.promtool_run("check", "rules", "rules.yml", cwd=MONITORING)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in checked.stdout


def test_every_alert_fires_past_its_threshold_and_not_below(tools: PrometheusTools) -> None:
    tested = tools.promtool_run("test", "rules", "rules_test.yml", cwd=MONITORING)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Each alert has a case where it fires and one where it does not.
    cases = [
        case
        for test in _load_yaml(MONITORING / "rules_test.yml")["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for alert in _alerts():
        name = alert["alert"]
        outcomes = {bool(case["exp_alerts"]) for case in cases if case["alertname"] == name}
        assert outcomes == {True, False}, f"{name} needs a firing and a silent case"


def test_every_alert_says_how_bad_it_is_and_what_to_check() -> None:
    for alert in _alerts():
        name = alert["alert"]
        assert alert.get("for"), f"{name} has no `for`"
        assert alert["labels"]["severity"] in {"critical", "warning"}, name
        assert len(alert["annotations"]["summary"]) > 20, name
        assert len(alert["annotations"]["description"]) > 80, name
    names = {alert["alert"] for alert in _alerts()}
    assert {
        "ScribesBreakerOpen",
        "ScribesQuestionErrorRate",
        "ScribesQueueBacklog",
        "ScribesPoolDown",
        "ScribesBudgetNearlySpent",
        "ScribesBudgetSpent",
        "ScribesQuestionLatencyHigh",
    } <= names


def test_the_dashboard_is_a_grafana_model_with_a_datasource_variable() -> None:
    model = json.loads(DASHBOARD.read_text())
    assert 36 <= model["schemaVersion"] <= 41
    assert model["uid"] and model["title"]
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = list(_dashboard_panels())
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    titles = " | ".join(panel["title"].lower() for panel in panels)
    for subject in (
        "questions per second",
        "end to end",
        "stage run time",
        "queue depth",
        "oldest queued",
        "cache hit",
        "tokens per hour",
        "cost per hour",
        "circuit breakers",
        "no-context",
        "score",
        "citations",
    ):
        assert subject in titles, subject


def test_every_dashboard_query_is_valid_promql(tools: PrometheusTools, tmp_path: Path) -> None:
    """Checked by promtool as recording rules, Grafana's range variables made concrete."""
    exprs = _dashboard_exprs()
    rules = [
        {
            "record": f"dashboard:query_{n}",
            "expr": expr.replace("$__rate_interval", "1m").replace("$__range", "1h"),
        }
        for n, expr in enumerate(exprs)
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = tools.promtool_run("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _exported() -> dict[str, frozenset[str]]:
    """Every series name Scribes serves, with the labels it carries."""
    exported = {name: labels | TARGET_LABELS for name, labels in COLLECTED.items()}
    objects = [value for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)]
    assert len(objects) >= 15
    for metric in objects:
        (family,) = metric.describe()
        # prometheus-client keeps the label names only on this attribute.
        labels = frozenset(metric._labelnames) | TARGET_LABELS
        if family.type == "counter":
            exported[f"{family.name}_total"] = labels
        elif family.type == "histogram":
            exported[f"{family.name}_bucket"] = labels | {"le"}
            exported[f"{family.name}_sum"] = labels
            exported[f"{family.name}_count"] = labels
        else:
            exported[family.name] = labels
    return exported


_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"\b(scribes_[a-z_]+)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*\"((?:[^\"\\]|\\.)*)\"")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_RECORDED = re.compile(r"\bscribes:[a-z0-9_:]+")


def _check_expr(expr: str, exported: dict[str, frozenset[str]], recorded: set[str]) -> None:
    names = _SELECTOR.findall(expr)
    assert names or _RECORDED.search(expr) or "up{" in expr, f"no Scribes series in {expr}"
    for name, selector in names:
        assert name in exported, f"{name} (in {expr}) is not a series Scribes exports"
        for label, _, value in _MATCHER.findall(selector):
            assert label in exported[name], f"{name} has no label {label!r} (in {expr})"
            if label in KNOWN_VALUES and not value.startswith(".*"):
                values = set(value.split("|"))
                assert values <= KNOWN_VALUES[label], f"{label}={value!r} in {expr}"
    for name in _RECORDED.findall(expr):
        assert name in recorded, f"{name} (in {expr}) is not recorded by rules.yml"
    labels_in_expr = frozenset().union(*(exported[name] for name, _ in names))
    recorded_labels = {"tenant", "period"} if _RECORDED.search(expr) else set()
    for grouping in _GROUPING.findall(_QUOTED.sub('""', expr)):
        for label in filter(None, (part.strip() for part in grouping.split(","))):
            assert label in labels_in_expr | recorded_labels, f"no label {label!r} in {expr}"


def test_rules_and_dashboard_ask_only_for_series_scribes_exports() -> None:
    exported = _exported()
    assert "scribes_llm_cost_usd_total" in exported
    assert "scribes_question_duration_seconds_bucket" in exported
    assert "scribes_question_duration_seconds" not in exported  # a histogram has no bare name
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    exprs = [str(rule["expr"]) for rule in _rules()] + _dashboard_exprs()
    for expr in exprs:
        _check_expr(expr, exported, recorded)
    # The parser is strict enough to catch the usual slips.
    for wrong in (
        "rate(scribes_question_total[5m])",  # not "questions"
        "rate(scribes_question_duration_seconds[5m])",  # a histogram's bare name
        'max by (queue) (scribes_queue_depth{queue="generation"})',  # no such queue
        "max by (queues) (scribes_queue_depth)",  # no such label
        'sum(rate(scribes_llm_cost_usd_total{modle="x"}[5m]))',
        "scribes:budget_spent:ratio > 1",
    ):
        with pytest.raises(AssertionError):
            _check_expr(wrong, exported, recorded)
