"""A Prometheus server of the tests' own, and `promtool`: found, installed if need be, started.

The binaries come from PATH or /usr/bin; when neither has them and this runs as root on
Debian, `apt-get install prometheus` fetches both (`python -m tests.prometheus` does it
once, and `dev.py test` runs that before pytest). Debian's package would start a system
Prometheus on :9090; the install holds services back, and the tests never use that port:
each `running_prometheus` is a process of its own on a free loopback port with its
configuration and TSDB in a temporary folder, stopped when the block ends.

Configuration is written as JSON, which Prometheus reads as the YAML it is a subset of.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import httpx

from scribes.localredis import free_port

__all__ = [
    "Prometheus",
    "PrometheusError",
    "PrometheusTools",
    "ensure_prometheus",
    "find_prometheus",
    "prometheus_config",
    "require_prometheus",
    "running_prometheus",
    "scrape_job",
]

T = TypeVar("T")

_SEARCH = ("/usr/bin", "/usr/local/bin")
_POLICY_RC = Path("/usr/sbin/policy-rc.d")
_APT_TIMEOUT_S = 600


@dataclass(frozen=True, slots=True)
class PrometheusTools:
    prometheus: Path
    promtool: Path

    def version(self) -> str:
        out = subprocess.run(
            [str(self.prometheus), "--version"], capture_output=True, text=True, timeout=10
        )
        found = re.search(r"version (\S+)", out.stdout + out.stderr)
        return found.group(1) if found else "unknown version"

    def promtool_run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.promtool), *args], capture_output=True, text=True, cwd=cwd, timeout=60
        )


def _which(name: str) -> Path | None:
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SEARCH))
    return Path(found) if found else None


def find_prometheus() -> PrometheusTools | None:
    prometheus, promtool = _which("prometheus"), _which("promtool")
    if prometheus is None or promtool is None:
        return None
    return PrometheusTools(prometheus, promtool)


@contextmanager
def _services_held_back() -> Iterator[None]:
    """No service starts while packages install: a policy-rc.d that says no, if none exists.

    Debian's maintainer scripts ask it (through invoke-rc.d and deb-systemd-invoke) before
    they start anything; 101 is "action not allowed". An existing one is left as it is.
    """
    if _POLICY_RC.exists():
        yield
        return
    _POLICY_RC.write_text(
        "#!/bin/sh\n# written by tests/prometheus.py while it installs\nexit 101\n"
    )
    _POLICY_RC.chmod(0o755)
    try:
        yield
    finally:
        _POLICY_RC.unlink(missing_ok=True)


def _stop_system_service() -> None:
    """Where systemd runs, stop and disable the package's service: nothing of it stays on :9090."""
    if not Path("/run/systemd/system").is_dir() or shutil.which("systemctl") is None:
        return
    subprocess.run(
        ["systemctl", "disable", "--now", "prometheus.service"],
        capture_output=True,
        timeout=60,
    )


def _apt_get(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(
        ["apt-get", *args], capture_output=True, text=True, env=env, timeout=_APT_TIMEOUT_S
    )


def _install() -> str | None:
    """Install Debian's prometheus package; the reason it could not be, or None."""
    if shutil.which("apt-get") is None:
        return "no apt-get here: install Prometheus 2.x so that prometheus and promtool are on PATH"
    if os.geteuid() != 0:
        return "installing it needs root: run `sudo apt-get install prometheus`"
    # Recommends would add node-exporter, another service with a port of its own.
    command = ("install", "-y", "--no-install-recommends", "prometheus")
    with _services_held_back():
        result = _apt_get(*command)
        if result.returncode != 0:
            # A fresh container has no package lists yet.
            _apt_get("update")
            result = _apt_get(*command)
    _stop_system_service()
    if result.returncode != 0:
        tail = " ".join((result.stderr or result.stdout).strip().splitlines()[-2:])
        return f"`apt-get install prometheus` failed: {tail}"
    return None


@cache
def ensure_prometheus() -> PrometheusTools | str:
    """The binaries, installed first if they are missing; else why they are not here."""
    tools = find_prometheus()
    if tools is not None:
        return tools
    try:
        reason = _install()
    except (OSError, subprocess.TimeoutExpired) as exc:
        reason = f"installing it failed: {exc}"
    tools = find_prometheus()
    if tools is not None:
        return tools
    return f"prometheus and promtool are not installed; {reason or 'the package had neither'}"


def require_prometheus() -> PrometheusTools:
    """The binaries, or the calling test skipped with the reason they are missing."""
    import pytest

    found = ensure_prometheus()
    if isinstance(found, str):
        pytest.skip(found)
    return found


def scrape_job(
    name: str, targets: Sequence[str], *, interval_s: float = 1, **settings: Any
) -> dict[str, Any]:
    """One scrape config: `targets` as host:port, every `interval_s`; `settings` as given."""
    return {
        "job_name": name,
        "scrape_interval": f"{interval_s:g}s",
        "scrape_timeout": f"{interval_s:g}s",
        "static_configs": [{"targets": list(targets)}],
        **settings,
    }


def prometheus_config(
    jobs: Sequence[Mapping[str, Any]],
    *,
    rule_files: Sequence[Path] = (),
    interval_s: float = 1,
) -> dict[str, Any]:
    return {
        "global": {
            "scrape_interval": f"{interval_s:g}s",
            "scrape_timeout": f"{interval_s:g}s",
            "evaluation_interval": f"{interval_s:g}s",
        },
        "rule_files": [str(Path(path).resolve()) for path in rule_files],
        "scrape_configs": [dict(job) for job in jobs],
    }


class PrometheusError(RuntimeError):
    pass


@dataclass
class Prometheus:
    """A prometheus process: its folder holds prometheus.yml, data/ and prometheus.log."""

    tools: PrometheusTools
    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "prometheus.log"

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def start(self, config: Mapping[str, Any], timeout_s: float = 30) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        config_path = self.directory / "prometheus.yml"
        config_path.write_text(json.dumps(config, indent=2))
        command = [
            str(self.tools.prometheus),
            f"--config.file={config_path}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1d",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=self.directory
            )
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise PrometheusError(
                        f"prometheus exited with code {self.process.returncode}:\n{self.log_tail()}"
                    )
                try:
                    if http.get(f"{self.url}/-/ready").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        self.stop()
        raise PrometheusError(f"prometheus not ready within {timeout_s:g} s:\n{self.log_tail()}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def _get(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"GET {path} {params}: {response.status_code} {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector: [{"metric": {...}, "value": [t, "v"]}, …]."""
        data = self._get("/api/v1/query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The one value of an instant query; None when it has no series."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{expr} has {len(result)} series, not one: {result}")
        return float(result[0]["value"][1])

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts: [{"labels", "annotations", "state", "activeAt"}, …]."""
        alerts: list[dict[str, Any]] = self._get("/api/v1/alerts")["alerts"]
        return alerts

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        return [
            alert
            for alert in self.alerts()
            if alert["state"] == "firing" and alert["labels"].get("alertname") == alertname
        ]

    def targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self._get("/api/v1/targets")["activeTargets"]
        return targets

    def rule_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self._get("/api/v1/rules")["groups"]
        return groups

    def wait_for(
        self, what: str, check: Callable[[], T | None], timeout_s: float = 60, every_s: float = 0.5
    ) -> T:
        """Poll `check` until it gives something other than None (or False); that is returned."""
        deadline = time.monotonic() + timeout_s
        last: T | None = None
        while time.monotonic() < deadline:
            last = check()
            if last is not None and last is not False:
                return last
            time.sleep(every_s)
        raise AssertionError(f"{what}: not within {timeout_s:g} s (last: {last!r})")


@contextmanager
def running_prometheus(
    directory: Path, config: Mapping[str, Any], tools: PrometheusTools | None = None
) -> Iterator[Prometheus]:
    """A started Prometheus with `config`, stopped afterwards; its files stay in `directory`."""
    server = Prometheus(tools or require_prometheus(), directory)
    server.start(config)
    try:
        yield server
    finally:
        server.stop()


def main() -> int:
    """`python -m tests.prometheus`: make sure the tests have Prometheus; say so in one line."""
    if find_prometheus() is None:
        print("prometheus: not found; installing Debian's prometheus package (once)", flush=True)
    found = ensure_prometheus()
    if isinstance(found, str):
        print(f"prometheus: {found}; the tests that need it will be skipped", flush=True)
    else:
        print(f"prometheus: {found.prometheus} {found.version()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
