"""The one command: `scribes up | worker | exporter | api | ingest | ask | eval | status |
reindex`."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import click

from rag.settings import ConfigurationError, Settings, get_settings
from scribes.client import (
    ApiError,
    Job,
    JobEvent,
    RestartEvent,
    Retries,
    Scribes,
    ScribesError,
    TextEvent,
)
from scribes.notefiles import collect_note_files, read_note
from workers.pools import POOLS, worker_command

if TYPE_CHECKING:
    from scribes.flower import FlowerAuth
    from scribes.supervisor import Supervisor

__all__ = ["main"]

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"scribes: {message}", err=True)
    sys.exit(code)


def _settings() -> Settings:
    """Settings for a command that serves: every check, production's included."""
    try:
        return get_settings()
    except (ConfigurationError, ValueError) as exc:
        _fail(str(exc).splitlines()[0], 2)


def _client_settings() -> Settings:
    """Settings for a command that only calls the API: the server's keys are not its business."""
    try:
        return Settings()
    except ValueError as exc:
        _fail(str(exc).splitlines()[0], 2)


def _client(settings: Settings, api_url: str | None) -> Scribes:
    key = settings.api_key.get_secret_value() if settings.api_key else ""
    return Scribes(api_url or settings.api_url, api_key=key)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Scribes: ask questions of your own notes.

    `scribes up` runs everything on this machine; `scribes ask "…"` asks a question.
    """


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the API binds.")
@click.option("--port", default=8000, show_default=True, help="API port.")
@click.option(
    "--flower-host",
    default="127.0.0.1",
    show_default=True,
    help="Address Flower binds, whatever --host is; it asks for a login either way.",
)
@click.option("--flower-port", default=5555, show_default=True, help="Flower port; 0 for none.")
@click.option(
    "--samples/--no-samples",
    default=True,
    show_default=True,
    help="Ingest the bundled sample notes on first start.",
)
@click.option("--ask", "question", default=None, help="Ask this once everything is ready.")
@click.option("--ready-timeout", default=180.0, show_default=True, help="Seconds to wait.")
def up(
    host: str,
    port: int,
    flower_host: str,
    flower_port: int,
    samples: bool,
    question: str | None,
    ready_timeout: float,
) -> None:
    """Start Redis (if none answers), the four worker pools, the API and Flower.

    A process that exits is restarted, after 1 s, 2 s, 4 s … up to 30 s; one that exits
    5 times within 60 s stops everything. Ctrl-C stops everything, letting running tasks
    finish for a while first; Ctrl-C again stops at once.
    """
    from scribes.flower import flower_login
    from scribes.supervisor import Supervisor

    settings = _settings()
    try:
        login = flower_login(settings) if flower_port else None
    except ConfigurationError as exc:
        _fail(str(exc), 2)
    supervisor = Supervisor(
        settings,
        port=port,
        host=host,
        flower_port=flower_port or None,
        flower_host=flower_host,
        flower_auth=login,
        log=lambda line: click.echo(f"scribes: {line}"),
    )

    def _stop(signum: int, _: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    # Ctrl-C stops everything even when `scribes up` was started from a script in the
    # background, where the shell starts it with SIGINT ignored and Python then leaves it so.
    signal.signal(signal.SIGINT, _stop)
    try:
        supervisor.start(explicit_redis_url="redis_url" in settings.model_fields_set)
        api_url = f"http://{host}:{port}"
        # One try per readiness check: the loop below is the retry, and reports as it goes.
        with Scribes(api_url, api_key="", retries=Retries(attempts=1)) as client:
            _wait_ready(client, supervisor, ready_timeout)
            supervisor.supervise_in_background()
            click.echo(f"scribes: API {api_url}  (logs in {settings.data_dir / 'logs'})")
            if login is not None:
                click.echo(f"scribes: Flower http://{flower_host}:{flower_port}  ({_login(login)})")
            if samples:
                _ingest_samples_once(settings, supervisor.redis_url)
            if question:
                _print_answer(_ask(settings, api_url, question), False)
        click.echo("scribes: ready; press Ctrl-C to stop")
        while supervisor.gave_up is None:
            time.sleep(0.5)
        _fail(f"{supervisor.gave_up}; stopping everything")
    except KeyboardInterrupt:
        click.echo("scribes: stopping; running tasks get time to finish (Ctrl-C again: at once)")
    except RuntimeError as exc:
        _fail(str(exc))
    finally:
        supervisor.stop()


def _login(login: FlowerAuth) -> str:
    """How to log in to Flower, with the password only the time it was made."""
    if login.file is None:
        return "login from SCRIBES_FLOWER_AUTH"
    if login.generated:
        return (
            f"user {login.user}, password {login.password.get_secret_value()}; kept in {login.file}"
        )
    return f"user {login.user}; password in {login.file}"


def _wait_ready(client: Scribes, supervisor: Supervisor, timeout_s: float) -> None:
    """Wait for the API and every pool; a child that exits before then is a fault at once."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        dead = supervisor.dead_child()
        if dead:
            raise RuntimeError(f"{dead} during start-up; see {supervisor.logs}")
        try:
            client.ready()
            missing = supervisor.not_yet_up()
            if not missing:
                return
            message = f"not ready: {', '.join(missing)}"
        except ScribesError as exc:
            message = exc.message
        if message != last:
            click.echo(f"scribes: waiting — {message}")
            last = message
        time.sleep(0.5)
    raise RuntimeError(f"not ready after {timeout_s:.0f} s: {last}")


def _local_environment(redis_url: str) -> None:
    # The supervisor may have started Redis on a port of its own choosing.
    os.environ["REDIS_URL"] = redis_url
    get_settings.cache_clear()


def _ingest_samples_once(settings: Settings, redis_url: str) -> None:
    marker = settings.data_dir / ".samples-ingested"
    if marker.exists() or not SAMPLES_DIR.is_dir():
        return
    _local_environment(redis_url)
    from rag.services import process_services
    from tasks.pipeline import enqueue_document

    notes = [read_note(root, file) for root, file in collect_note_files([SAMPLES_DIR])]
    registry = process_services().documents
    with click.progressbar(notes, label="scribes: ingesting sample notes") as bar:
        for note in bar:
            enqueue_document(
                registry,
                tenant="default",
                document_id=note.document_id,
                title=note.title,
                text=note.text,
                metadata={"source": "samples"},
            )
    deadline = time.monotonic() + 300
    pending = {note.document_id for note in notes}
    while pending and time.monotonic() < deadline:
        pending = {
            doc
            for doc in pending
            if (record := registry.get("default", doc)) is None or record.status == "queued"
        }
        time.sleep(0.25)
    marker.write_text(f"{len(notes)} notes\n")
    click.echo(f"scribes: {len(notes) - len(pending)} sample notes indexed for tenant 'default'")


def _ask(settings: Settings, api_url: str, question: str) -> Job:
    with _client(settings, api_url) as client:
        try:
            return client.ask(question)
        except ScribesError as exc:
            raise RuntimeError(exc.message) from exc


@main.command()
@click.argument("pool", type=click.Choice(sorted(POOLS)))
@click.option("--concurrency", type=int, default=None, help="Processes or threads.")
@click.option("--loglevel", default="INFO", show_default=True)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve this pool's metrics (every process, prefork children too) on this port.",
)
def worker(pool: str, concurrency: int | None, loglevel: str, metrics_port: int | None) -> None:
    """Start one worker pool: embed, retrieve, generate or index."""
    from rag.telemetry.exposition import MULTIPROC_ENV, prepare_multiprocess_dir
    from scribes.supervisor import SOFT_SHUTDOWN_ON_SIGTERM

    settings = _settings()
    spec = POOLS[pool]
    command = worker_command(spec, concurrency=concurrency, loglevel=loglevel)
    env = {
        **os.environ,
        **SOFT_SHUTDOWN_ON_SIGTERM,
        "SCRIBES_WORKER_POOL": pool,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if MULTIPROC_ENV not in env:
        # One directory per pool process group, emptied as it starts; a directory set in the
        # environment is the operator's to manage (and to share with `scribes exporter`).
        directory = (settings.data_dir / "metrics" / f"worker-{pool}").resolve()
        env[MULTIPROC_ENV] = str(prepare_multiprocess_dir(directory))
    if metrics_port is not None:
        env["SCRIBES_METRICS_PORT"] = str(metrics_port)
    os.execvpe(command[0], command, env)


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=9464, show_default=True)
@click.option(
    "--cluster/--no-cluster",
    default=False,
    show_default=True,
    help="Also serve the system-wide series (queues, pools, breaker, budgets), as the "
    "API's /metrics does; scrape them from one place only.",
)
def exporter(host: str, port: int, cluster: bool) -> None:
    """Serve the metrics of this host's processes (PROMETHEUS_MULTIPROC_DIR) on a port."""
    from prometheus_client import start_http_server

    from api_shim.routes.metrics import cluster_collector
    from rag.services import Services
    from rag.telemetry.exposition import MULTIPROC_ENV, scrape_registry

    settings = _settings()
    if MULTIPROC_ENV not in os.environ and not cluster:
        _fail(f"set {MULTIPROC_ENV} to the directory this host's processes write to", 2)
    extra = [cluster_collector(Services(settings, redis_timeout_s=5))] if cluster else []
    try:
        start_http_server(port, addr=host, registry=scrape_registry(extra))
    except OSError as exc:
        _fail(f"cannot serve metrics on {host}:{port}: {exc.strerror}", 1)
    click.echo(f"scribes: serving metrics on http://{host}:{port}/metrics", err=True)
    threading.Event().wait()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
def api(host: str, port: int) -> None:
    """Serve the HTTP API."""
    settings = _settings()  # first: importing the API reads the settings too
    from api_shim.server import serve

    serve(settings, host=host, port=port)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--api-url", default=None, help="Defaults to SCRIBES_API_URL.")
@click.option(
    "--wait/--no-wait", default=True, show_default=True, help="Wait until every note is indexed."
)
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait.")
def ingest(paths: tuple[Path, ...], api_url: str | None, wait: bool, timeout: float) -> None:
    """Add .md, .markdown and .txt notes from files and folders; the same file again replaces it."""
    settings = _client_settings()
    try:
        files = collect_note_files(paths)
    except FileNotFoundError as exc:
        _fail(str(exc), 2)
    if not files:
        _fail("no .md or .txt notes found in the given paths", 2)
    problems: list[str] = []
    submitted: list[str] = []
    with _client(settings, api_url) as client:
        with click.progressbar(files, label="submitting", show_pos=True) as bar:
            for root, file in bar:
                try:
                    note = read_note(root, file)
                    client.ingest(
                        note.title,
                        note.text,
                        document_id=note.document_id,
                        metadata={"path": str(file)},
                    )
                    submitted.append(note.document_id)
                except ValueError as exc:
                    problems.append(str(exc))
                except ScribesError as exc:
                    if exc.code == "api_unreachable":
                        _fail(exc.message)
                    problems.append(f"{file}: {exc.message}")
        if wait and submitted:
            problems += _wait_indexed(client, submitted, timeout)
    for problem in problems:
        click.echo(f"scribes: {problem}", err=True)
    click.echo(f"scribes: {len(submitted)} notes submitted, {len(problems)} problems")
    if problems:
        sys.exit(1)


def _wait_indexed(client: Scribes, ids: list[str], timeout_s: float) -> list[str]:
    pending = list(ids)
    problems: list[str] = []
    deadline = time.monotonic() + timeout_s
    with click.progressbar(length=len(ids), label="indexing  ", show_pos=True) as bar:
        while pending and time.monotonic() < deadline:
            still: list[str] = []
            for document_id in pending:
                document = client.document(document_id)
                if document.status == "queued":
                    still.append(document_id)
                elif document.status == "failed":
                    problems.append(f"{document_id}: {document.error or 'indexing failed'}")
            bar.update(len(pending) - len(still))
            pending = still
            if pending:
                time.sleep(0.3)
    problems += [f"{doc}: not indexed within {timeout_s:.0f} s" for doc in pending]
    return problems


@main.command()
@click.argument("question")
@click.option("--api-url", default=None, help="Defaults to SCRIBES_API_URL.")
@click.option("--top-k", type=int, default=None, help="Passages to retrieve.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole job as JSON.")
@click.option(
    "--stream/--no-stream",
    default=None,
    help="Print the answer as it is written; the default when the output is a terminal.",
)
def ask(
    question: str,
    api_url: str | None,
    top_k: int | None,
    timeout: float,
    as_json: bool,
    stream: bool | None,
) -> None:
    """Ask a question of your notes and print the answer with its sources."""
    settings = _client_settings()
    streaming = (sys.stdout.isatty() if stream is None else stream) and not as_json
    with _client(settings, api_url) as client:
        try:
            job = client.submit(question, top_k=top_k)
            if not job.finished:
                if streaming:
                    job = _stream_answer(client, job.id, timeout)
                else:
                    job = client.wait(job.id, timeout_s=timeout)
            elif streaming and job.succeeded:
                click.echo(job.answer)
        except ScribesError as exc:
            _fail(exc.message)
    _print_answer(job, as_json, answer_shown=streaming)
    if not job.succeeded:
        sys.exit(1)


def _stream_answer(client: Scribes, job_id: str, timeout_s: float) -> Job:
    """Print the answer's text as it arrives, then return the finished job. An API without
    the event stream (a 404 before any text) is waited for instead, printing nothing."""
    shown = False
    try:
        for event in client.stream(job_id, timeout_s=timeout_s):
            if isinstance(event, TextEvent):
                click.echo(event.text, nl=False)
                shown = shown or bool(event.text)
            elif isinstance(event, RestartEvent) and shown:
                # What was printed cannot be taken back: say so, and start a fresh line.
                click.echo("\n(the model broke off; its answer again:)")
            elif isinstance(event, JobEvent):
                job = event.job
                if shown:
                    click.echo()
                elif job.succeeded:  # a writer that streams nothing, or a cached answer
                    click.echo(job.answer)
                return job
    except ApiError as exc:
        if exc.status != 404 or shown:
            raise
    job = client.wait(job_id, timeout_s=timeout_s)
    if job.succeeded:
        click.echo(job.answer)
    return job


@main.command("eval")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--api-url", default=None, help="Defaults to SCRIBES_API_URL.")
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=None,
    help="Passages to retrieve, the k of hit@k; defaults to SCRIBES_TOP_K.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 32),
    default=4,
    show_default=True,
    help="Questions in flight at once.",
)
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait per question.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures and every result as JSON.")
@click.option("--misses", is_flag=True, help="Also list the questions retrieval missed.")
def eval_command(
    file: Path,
    api_url: str | None,
    top_k: int | None,
    concurrency: int,
    timeout: float,
    as_json: bool,
    misses: bool,
) -> None:
    """Ask a labelled question set (JSON Lines) and print hit@1, hit@k and MRR of the
    expected notes, and the no-context rate of the questions marked unanswerable.

    Each line is {"question": …, "expected": [document id, …]} or
    {"question": …, "unanswerable": true}. Exits 2 on a malformed file, 1 when the API
    cannot be reached or a question could not be measured.
    """
    from scribes.evaluate import (
        LabelledSetError,
        format_report,
        read_labelled_set,
        run_labelled_set,
    )

    settings = _client_settings()
    try:
        questions = read_labelled_set(file)
    except LabelledSetError as exc:
        _fail(str(exc), 2)
    k = top_k or settings.top_k
    with _client(settings, api_url) as client:
        try:
            report = run_labelled_set(
                client, questions, top_k=k, concurrency=concurrency, timeout_s=timeout
            )
        except ScribesError as exc:
            _fail(exc.message)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(format_report(report, misses=misses))
    if report.unmeasured:
        _fail(f"{len(report.unmeasured)} of {len(report.results)} questions not measured")


def _print_answer(job: Job, as_json: bool, *, answer_shown: bool = False) -> None:
    if as_json:
        click.echo(json.dumps(job.raw, indent=2))
        return
    if not job.succeeded:
        reason = job.error.message if job.error else "unknown error"
        if job.status == "cancelled":
            reason = "stopped by a cancel"
        click.echo(f"scribes: {job.status}: {reason}", err=True)
        return
    if not answer_shown:
        click.echo(job.answer)
    if job.sources:
        click.echo("\nSources:")
        for source in job.sources:
            click.echo(
                f"  [{source.number or '?'}] {source.title} "
                f"({source.document_id}, score {source.score:.2f})"
            )
    cached = f", cached: {job.cached}" if job.cached else ""
    click.echo(
        f"\n({job.usage.input_tokens} in / {job.usage.output_tokens} out "
        f"tokens, ${job.usage.cost_usd or 0:.6f}{cached})"
    )


@main.command()
@click.option("--api-url", default=None, help="Defaults to SCRIBES_API_URL.")
def status(api_url: str | None) -> None:
    """Show whether Redis, the broker, every pool and the vector store answer, the queues,
    the model's circuit, and today's questions and spend; exit 1 if anything is down."""
    settings = _client_settings()
    with _client(settings, api_url) as client:
        try:
            body = client.status()
        except ScribesError as exc:
            _fail(exc.message)
    pools = body.get("pools", {})
    breakers = body.get("breakers", {})
    for name, ok in body["checks"].items():
        pool = pools.get(name.removeprefix("pool:"), {}) if name.startswith("pool:") else {}
        detail = f" ({pool['processes']} processes)" if "processes" in pool else ""
        if name in breakers:
            detail = _breaker_detail(breakers[name])
        click.echo(f"{'ok  ' if ok else 'DOWN'} {name}{detail}")
    for queue, reading in (body.get("queues") or {}).items():
        age = reading.get("oldest_age_s")
        waited = f", oldest waiting {age:.0f} s" if age else ""
        click.echo(
            f"     queue {queue}: {reading['depth']} messages ({reading['ready']} waiting{waited})"
        )
    usage = body.get("usage")
    if usage:
        click.echo(
            f"     today ({usage['date']}, UTC): {usage['questions']} questions, "
            f"${usage['cost_usd']}"
        )
    if body["status"] != "ok":
        sys.exit(1)


def _admin_client(api_url: str | None) -> Scribes:
    settings = _client_settings()
    key = settings.admin_key or settings.api_key
    return Scribes(api_url or settings.api_url, api_key=key.get_secret_value() if key else "")


def progress_line(run: dict[str, Any], width: int = 30) -> str:
    """One line of a run: a bar of chunks done of total, the rate, the time left, the phase."""
    total = int(run.get("total") or 0)
    done = min(int(run.get("done") or 0), total) if total else int(run.get("done") or 0)
    share = done / total if total else (1.0 if run["phase"] == "done" else 0.0)
    filled = round(share * width)
    eta = run.get("eta_s")
    eta_text = f"ETA {eta:.0f} s" if isinstance(eta, int | float) else "ETA -"
    how = f"{run.get('copied', 0)} copied, {run.get('embedded', 0)} embedded"
    if run.get("cached"):
        how += f", {run['cached']} from cache"
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} chunks  "
        f"{float(run.get('rate_per_s') or 0):.0f}/s  {eta_text}  phase {run['phase']}  ({how})"
    )


def _show_reindex(body: dict[str, Any]) -> dict[str, Any] | None:
    run = body.get("run")
    live = body.get("live") or {}
    click.echo(
        f"live: generation {live.get('number')} ({live.get('model')}, {live.get('dimension')}-d)"
    )
    if run is None:
        click.echo("no reindex has run")
        return None
    target = f" -> generation {run['target']}" if run.get("target") else ""
    click.echo(f"{run['kind']} {run['run_id']}: generation {run['source']}{target}")
    click.echo(progress_line(run))
    if run.get("error"):
        click.echo(f"error: {run['error']}")
    return dict(run)


_FINISHED_PHASES = ("done", "failed", "cancelled")


def _follow(client: Scribes, run_id: str, timeout_s: float) -> dict[str, Any]:
    """Redraw the run's progress until it ends; the run as it ended."""
    deadline = time.monotonic() + timeout_s
    tty = sys.stdout.isatty()
    last = ""
    while True:
        run = client.reindex_status().get("run") or {}
        if run.get("run_id") != run_id:
            _fail("the reindex was replaced by another run")
        line = progress_line(run)
        if line != last:
            click.echo(("\r" + line) if tty else line, nl=not tty)
            last = line
        if run.get("phase") in _FINISHED_PHASES:
            if tty:
                click.echo()
            return dict(run)
        if time.monotonic() > deadline:
            _fail(f"the reindex did not finish within {timeout_s:.0f} s; it goes on")
        time.sleep(1.0)


@main.group(invoke_without_command=True)
@click.option("--model", default=None, help="Model name or directory; default: the live one.")
@click.option("--tenant", default=None, help="Re-embed this tenant's chunks even if unchanged.")
@click.option("--wait/--no-wait", default=False, help="Follow the run until it ends.")
@click.option("--timeout", default=7200.0, show_default=True, help="Seconds --wait waits.")
@click.option("--api-url", default=None, help="Defaults to SCRIBES_API_URL.")
@click.pass_context
def reindex(
    ctx: click.Context,
    model: str | None,
    tenant: str | None,
    wait: bool,
    timeout: float,
    api_url: str | None,
) -> None:
    """Re-embed every chunk into a new generation of the store, then switch to it.

    Questions are answered from the live generation until the switch. Needs an operator's
    key (SCRIBES_ADMIN_KEY, one of the server's SCRIBES_ADMIN_KEYS).
    """
    ctx.ensure_object(dict)
    ctx.obj["api_url"] = api_url
    if ctx.invoked_subcommand is not None:
        return
    with _admin_client(api_url) as client:
        try:
            body = client.reindex(model=model, tenant=tenant)
        except ScribesError as exc:
            _fail(exc.message)
        run = _show_reindex(body)
        if run is None or not wait:
            return
        try:
            ended = _follow(client, run["run_id"], timeout)
        except ScribesError as exc:
            _fail(exc.message)
    if ended["phase"] != "done":
        _fail(f"the reindex ended {ended['phase']}: {ended.get('error') or 'no reason given'}")


@reindex.command("status")
@click.pass_context
def reindex_status(ctx: click.Context) -> None:
    """Show the last run's progress and the live generation; exit 1 if the run failed."""
    with _admin_client(ctx.obj.get("api_url")) as client:
        try:
            run = _show_reindex(client.reindex_status())
        except ScribesError as exc:
            _fail(exc.message)
    if run is not None and run["phase"] == "failed":
        sys.exit(1)


@reindex.command("cancel")
@click.pass_context
def reindex_cancel(ctx: click.Context) -> None:
    """Stop the running reindex before its switch; the live generation stays live."""
    with _admin_client(ctx.obj.get("api_url")) as client:
        try:
            _show_reindex(client.reindex_cancel())
        except ScribesError as exc:
            _fail(exc.message)


@reindex.command("rollback")
@click.option("--wait/--no-wait", default=True, help="Follow the rollback until it ends.")
@click.pass_context
def reindex_rollback(ctx: click.Context, wait: bool) -> None:
    """Switch back to the generation the last reindex replaced, while it is kept."""
    with _admin_client(ctx.obj.get("api_url")) as client:
        try:
            run = _show_reindex(client.reindex_rollback())
            ended = _follow(client, run["run_id"], 3600) if run and wait else None
        except ScribesError as exc:
            _fail(exc.message)
    if ended is not None and ended["phase"] != "done":
        _fail(f"the rollback ended {ended['phase']}: {ended.get('error') or 'no reason given'}")


def _breaker_detail(breaker: dict[str, Any]) -> str:
    state = str(breaker.get("state", "closed"))
    probe_at = breaker.get("next_probe_at")
    if state == "closed" or probe_at is None:
        return f" (circuit {state})"
    wait = max(0.0, float(probe_at) - time.time())
    return f" (circuit {state.replace('_', '-')}; next probe in {wait:.0f} s)"


if __name__ == "__main__":
    main()
