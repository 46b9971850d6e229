"""Every setting Scribes reads, from one place: the environment (and an optional `.env`)."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from rag.keys import TENANT_PATTERN

__all__ = [
    "DEFAULT_REDIS_URL",
    "ConfigurationError",
    "EmbeddingBackend",
    "Settings",
    "get_settings",
]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
BUNDLED_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
# What runs the embedding model: sentence-transformers on torch, or the same model exported
# to ONNX and run by onnxruntime (the `onnx` extra; rag.onnx_model, figures in the README).
EmbeddingBackend = Literal["torch", "onnx"]


class ConfigurationError(RuntimeError):
    """The configuration cannot work; the message says what to change."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", populate_by_name=True, frozen=True
    )

    env: Literal["development", "production"] = Field("development", alias="SCRIBES_ENV")
    redis_url: str = Field(DEFAULT_REDIS_URL, alias="REDIS_URL")
    celery_broker_url: str | None = Field(None, alias="CELERY_BROKER_URL")
    qdrant_url: str | None = Field(None, alias="QDRANT_URL")
    qdrant_api_key: SecretStr | None = Field(None, alias="QDRANT_API_KEY")
    qdrant_collection: str = Field("scribes_chunks", alias="SCRIBES_QDRANT_COLLECTION")
    data_dir: Path = Field(Path("data"), alias="SCRIBES_DATA_DIR")

    anthropic_api_key: SecretStr | None = Field(None, alias="ANTHROPIC_API_KEY")
    anthropic_base_url: str | None = Field(None, alias="ANTHROPIC_BASE_URL")
    llm_model: str = Field("claude-sonnet-4-6", alias="SCRIBES_LLM_MODEL")
    llm_timeout_s: float = Field(60.0, gt=0, alias="SCRIBES_LLM_TIMEOUT_S")
    llm_max_retries: int = Field(5, ge=0, alias="SCRIBES_LLM_MAX_RETRIES")

    api_keys_raw: str = Field("", alias="SCRIBES_API_KEYS")
    # Operators' keys (comma-separated): only these may start, cancel or roll back a
    # reindex. Never a tenant's key.
    admin_keys_raw: SecretStr = Field(SecretStr(""), alias="SCRIBES_ADMIN_KEYS")
    trust_gateway_tenant: bool = Field(False, alias="SCRIBES_TRUST_GATEWAY_TENANT")

    embedding_model: str = Field(BUNDLED_EMBEDDING_MODEL, alias="SCRIBES_EMBEDDING_MODEL")
    embedding_dimension: int = Field(384, ge=1, alias="SCRIBES_EMBEDDING_DIMENSION")
    embedding_threads: int = Field(1, ge=1, le=64, alias="SCRIBES_EMBEDDING_THREADS")
    # torch threads for a batch of four or more questions in the embed pool (tasks.embed).
    # Two when one embed process has the machine's cores to itself; one where several
    # share them, since their threads then spin against each other (bench scale_out).
    embedding_batch_threads: int = Field(2, ge=1, le=64, alias="SCRIBES_EMBEDDING_BATCH_THREADS")
    # torch: ONNX gave no more chunks/s here (0.92x to 1.11x), though one question at a time
    # it took about 6 ms against 14 (README, "The embedding backend"). onnx needs the extra.
    embedding_backend: EmbeddingBackend = Field("torch", alias="SCRIBES_EMBEDDING_BACKEND")
    query_batch_size: int = Field(32, ge=1, le=256, alias="SCRIBES_QUERY_BATCH_SIZE")
    embedding_batch_size: int = Field(64, ge=1, alias="SCRIBES_EMBEDDING_BATCH_SIZE")
    # The index pool (rag.ingest_pace): torch threads while no question waits (unset: every
    # core this process may run on; one whenever a question waits), chunks embedded between
    # two looks at the questions, and the most chunks one index task takes across notes.
    index_threads: int | None = Field(None, ge=1, le=256, alias="SCRIBES_INDEX_THREADS")
    index_step_chunks: int = Field(32, ge=1, le=1024, alias="SCRIBES_INDEX_STEP_CHUNKS")
    index_batch_chunks: int = Field(256, ge=1, le=10_000, alias="SCRIBES_INDEX_BATCH_CHUNKS")

    top_k: int = Field(5, ge=1, le=50, alias="SCRIBES_TOP_K")
    max_top_k: int = Field(20, ge=1, le=100, alias="SCRIBES_MAX_TOP_K")
    score_threshold: float = Field(0.35, ge=-1.0, le=1.0, alias="SCRIBES_SCORE_THRESHOLD")
    query_max_tokens: int = Field(256, ge=8, alias="SCRIBES_QUERY_MAX_TOKENS")
    context_max_tokens: int = Field(3000, ge=100, alias="SCRIBES_CONTEXT_MAX_TOKENS")
    answer_max_tokens: int = Field(600, ge=16, alias="SCRIBES_ANSWER_MAX_TOKENS")
    chunk_tokens: int = Field(200, ge=32, le=224, alias="SCRIBES_CHUNK_TOKENS")
    chunk_overlap_tokens: int = Field(40, ge=0, alias="SCRIBES_CHUNK_OVERLAP_TOKENS")
    document_max_bytes: int = Field(2_000_000, ge=1, alias="SCRIBES_DOCUMENT_MAX_BYTES")

    api_url: str = Field("http://127.0.0.1:8000", alias="SCRIBES_API_URL")
    api_key: SecretStr | None = Field(None, alias="SCRIBES_API_KEY")
    # The key `scribes reindex` sends (one of SCRIBES_ADMIN_KEYS); SCRIBES_API_KEY if unset.
    admin_key: SecretStr | None = Field(None, alias="SCRIBES_ADMIN_KEY")
    worker_pool: str | None = Field(None, alias="SCRIBES_WORKER_POOL")
    # Touched by a worker's heartbeat thread every beat, Redis or not: what a container's
    # liveness probe checks (`python -m workers.probe FILE`). Unset: no file.
    heartbeat_file: Path | None = Field(None, alias="SCRIBES_HEARTBEAT_FILE")

    llm_fallback: Literal["none", "extractive"] = Field("none", alias="SCRIBES_LLM_FALLBACK")
    breaker_failures: int = Field(5, ge=1, alias="SCRIBES_BREAKER_FAILURES")
    breaker_failure_ratio: float = Field(0.5, gt=0, le=1, alias="SCRIBES_BREAKER_FAILURE_RATIO")
    breaker_window_s: float = Field(30.0, gt=0, alias="SCRIBES_BREAKER_WINDOW_S")
    breaker_cooldown_s: float = Field(10.0, gt=0, alias="SCRIBES_BREAKER_COOLDOWN_S")
    breaker_close_after: int = Field(2, ge=1, alias="SCRIBES_BREAKER_CLOSE_AFTER")

    api_docs: bool | None = Field(None, alias="SCRIBES_API_DOCS")
    api_header_timeout_s: float = Field(10.0, gt=0, alias="SCRIBES_API_HEADER_TIMEOUT_S")
    api_body_timeout_s: float = Field(30.0, gt=0, alias="SCRIBES_API_BODY_TIMEOUT_S")
    api_max_concurrent_bodies: int = Field(64, ge=1, alias="SCRIBES_API_MAX_CONCURRENT_BODIES")
    flower_auth: SecretStr | None = Field(None, alias="SCRIBES_FLOWER_AUTH")

    job_ttl_s: int = Field(86_400, ge=60, alias="SCRIBES_JOB_TTL_S")
    job_deadline_s: int = Field(300, ge=5, alias="SCRIBES_JOB_DEADLINE_S")
    # A job whose record has not moved for this long is enqueued again from its stage: the
    # backstop for a message lost outright. Above the longest model call, so that a slow
    # answer is not mistaken for a lost one.
    stall_s: float = Field(90.0, ge=10, alias="SCRIBES_STALL_S")
    answer_cache_ttl_s: int = Field(86_400, ge=1, alias="SCRIBES_ANSWER_CACHE_TTL_S")
    query_vector_cache_ttl_s: int = Field(
        7 * 86_400, ge=1, alias="SCRIBES_QUERY_VECTOR_CACHE_TTL_S"
    )
    context_cache_ttl_s: int = Field(3600, ge=1, alias="SCRIBES_CONTEXT_CACHE_TTL_S")
    # The semantic answer cache (rag.caches.semantic). 0.85 was tuned on the labelled pairs
    # of samples/eval/paraphrases.jsonl with the near-miss guard on; the README has the table.
    semantic_cache_enabled: bool = Field(True, alias="SCRIBES_SEMANTIC_CACHE")
    semantic_cache_threshold: float = Field(
        0.85, ge=0.5, le=1.0, alias="SCRIBES_SEMANTIC_CACHE_THRESHOLD"
    )
    semantic_cache_ttl_s: int = Field(86_400, ge=1, alias="SCRIBES_SEMANTIC_CACHE_TTL_S")
    # A chunk's vector is worth keeping as long as its note may be edited and ingested again:
    # 30 days spans a monthly re-sync of a notes folder, and each reuse renews it. An entry
    # is about 2 KiB (384 float32s in base64), some twice its chunk's text.
    chunk_vector_cache_ttl_s: int = Field(
        30 * 86_400, ge=1, alias="SCRIBES_CHUNK_VECTOR_CACHE_TTL_S"
    )
    # A reindex reads and writes this many chunks per batch; the old generation is kept
    # this long after a switch, for `scribes reindex rollback`.
    reindex_batch_size: int = Field(256, ge=1, le=4096, alias="SCRIBES_REINDEX_BATCH_SIZE")
    reindex_retain_s: int = Field(86_400, ge=0, alias="SCRIBES_REINDEX_RETAIN_S")
    # Short, because every worker renews the messages it holds (workers.leases): a dead
    # worker's messages come back after this plus the 5 s restore interval.
    visibility_timeout_s: int = Field(20, ge=8, alias="SCRIBES_VISIBILITY_TIMEOUT_S")

    # Observability. Off: nothing is written for a scrape (no per-host metrics directory,
    # no per-request or per-task counting) and /metrics serves only the system-wide series.
    metrics_enabled: bool = Field(True, alias="SCRIBES_METRICS_ENABLED")
    # Celery's task events, which Flower reads: off unless asked for, since Flower switches
    # them on in every worker while it runs (its enable_events), and they cost each
    # question about 7 ms on the 2-core machine when nobody reads them.
    task_events: bool = Field(False, alias="SCRIBES_TASK_EVENTS")
    # /metrics needs this Bearer token when it is set.
    metrics_token: SecretStr | None = Field(None, alias="SCRIBES_METRICS_TOKEN")
    # A tenant label on the per-question metrics: opt-in, as it multiplies their series.
    metrics_tenant_label: bool = Field(False, alias="SCRIBES_METRICS_TENANT_LABEL")
    # A worker-only host serves its processes' metrics here (`scribes worker --metrics-port`).
    metrics_port: int | None = Field(None, ge=1, le=65535, alias="SCRIBES_METRICS_PORT")
    # Traces go out over OTLP/HTTP when this is set; otherwise tracing costs nothing.
    otlp_endpoint: str | None = Field(None, alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    otel_service_name: str = Field("scribes", alias="OTEL_SERVICE_NAME")

    # Budgets (see rag.budgets). Dollars per UTC day and month; unset: no limit.
    budget_daily_usd: Decimal | None = Field(None, gt=0, alias="SCRIBES_BUDGET_DAILY_USD")
    budget_monthly_usd: Decimal | None = Field(None, gt=0, alias="SCRIBES_BUDGET_MONTHLY_USD")
    budget_action: Literal["reject", "degrade"] = Field("reject", alias="SCRIBES_BUDGET_ACTION")
    # JSON: {"tenant": {"daily_usd": "5", "monthly_usd": null}}; null lifts that limit.
    tenant_budgets_raw: str = Field("", alias="SCRIBES_TENANT_BUDGETS")

    # Webhooks (rag.webhooks). Hosts a callback_url may name, comma-separated: `host`,
    # `host:port`, `*.domain`; empty: a question with a callback_url is refused.
    webhook_allowed_hosts_raw: str = Field("", alias="SCRIBES_WEBHOOK_ALLOWED_HOSTS")
    webhook_secret: SecretStr | None = Field(None, alias="SCRIBES_WEBHOOK_SECRET")
    webhook_timeout_s: float = Field(10.0, gt=0, le=60, alias="SCRIBES_WEBHOOK_TIMEOUT_S")
    # 8 attempts 30 s apart doubling (30, 60 … 1920 s, each ±20 %): the last about an hour
    # after the first.
    webhook_max_attempts: int = Field(8, ge=1, le=20, alias="SCRIBES_WEBHOOK_MAX_ATTEMPTS")
    webhook_backoff_s: float = Field(30.0, gt=0, alias="SCRIBES_WEBHOOK_BACKOFF_S")
    # A delivery still in the outbox this long after it was due lost its task (a process
    # died, the broker was down): the heartbeat's sweep sends it again. Above the timeout,
    # so that an attempt under way is never doubled.
    webhook_resend_after_s: float = Field(60.0, gt=0, alias="SCRIBES_WEBHOOK_RESEND_AFTER_S")

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.redis_url

    @property
    def api_keys(self) -> dict[str, str]:
        """`key=tenant,key=tenant` parsed into {key: tenant}."""
        keys: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in self.api_keys_raw.split(","))):
            key, sep, tenant = item.partition("=")
            if not sep or not key.strip() or not tenant.strip():
                raise ConfigurationError(
                    f"SCRIBES_API_KEYS entry {item[:4]}… is not of the form key=tenant"
                )
            keys[key.strip()] = tenant.strip()
        return keys

    @property
    def admin_keys(self) -> frozenset[str]:
        raw = self.admin_keys_raw.get_secret_value()
        return frozenset(filter(None, (part.strip() for part in raw.split(","))))

    @property
    def tenant_budgets(self) -> dict[str, dict[str, Decimal | None]]:
        """SCRIBES_TENANT_BUDGETS parsed: {tenant: {"daily_usd" | "monthly_usd": limit}}."""
        raw = self.tenant_budgets_raw.strip()
        if not raw:
            return {}
        shape = 'e.g. {"alice": {"daily_usd": "5", "monthly_usd": "100"}}'
        try:
            # Decimals, not floats, so that "0.1" is a tenth of a dollar exactly.
            parsed = json.loads(raw, parse_float=Decimal, parse_int=Decimal)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(
                f"SCRIBES_TENANT_BUDGETS is not JSON ({exc}); {shape}"
            ) from exc
        if not isinstance(parsed, dict):
            raise ConfigurationError(f"SCRIBES_TENANT_BUDGETS must be a JSON object; {shape}")
        budgets: dict[str, dict[str, Decimal | None]] = {}
        for tenant, limits in parsed.items():
            if not TENANT_PATTERN.fullmatch(tenant):
                raise ConfigurationError(f"SCRIBES_TENANT_BUDGETS: {tenant!r} is not a tenant name")
            if not isinstance(limits, dict) or not set(limits) <= {"daily_usd", "monthly_usd"}:
                raise ConfigurationError(
                    f"SCRIBES_TENANT_BUDGETS: {tenant!r} needs an object of daily_usd and/or "
                    f"monthly_usd; {shape}"
                )
            budgets[tenant] = {
                period: _budget_limit(tenant, period, value) for period, value in limits.items()
            }
        return budgets

    @property
    def webhook_allowed_hosts(self) -> tuple[str, ...]:
        raw = self.webhook_allowed_hosts_raw
        return tuple(filter(None, (part.strip() for part in raw.split(","))))

    @property
    def webhook_secret_value(self) -> str:
        return self.webhook_secret.get_secret_value() if self.webhook_secret else ""

    @property
    def serves_api_docs(self) -> bool:
        """/docs, /redoc and /openapi.json: on in development, off in production unless asked."""
        return self.api_docs if self.api_docs is not None else self.env == "development"

    @property
    def vector_store_dir(self) -> Path:
        return self.data_dir / "vectors"

    @property
    def question_index_dir(self) -> Path:
        """The semantic cache's Edge shard, beside the chunks' one."""
        return self.data_dir / "questions"

    @property
    def qdrant_api_key_value(self) -> str | None:
        return self.qdrant_api_key.get_secret_value() if self.qdrant_api_key else None

    @property
    def qdrant_live_alias(self) -> str:
        """On a Qdrant server, the alias of the live generation's collection: a reindex
        swaps it in the same request as it deletes the old one."""
        return f"{self.qdrant_collection}_live"

    @property
    def uses_anthropic(self) -> bool:
        return self.anthropic_api_key is not None and bool(
            self.anthropic_api_key.get_secret_value()
        )

    def check(self) -> None:
        """Refuse configurations that cannot work, with what to change."""
        if self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ConfigurationError(
                "SCRIBES_CHUNK_OVERLAP_TOKENS must be smaller than SCRIBES_CHUNK_TOKENS"
            )
        if self.top_k > self.max_top_k:
            raise ConfigurationError("SCRIBES_TOP_K must not exceed SCRIBES_MAX_TOP_K")
        _ = self.tenant_budgets
        keys = self.api_keys
        if self.admin_keys & set(keys):
            raise ConfigurationError(
                "a key in SCRIBES_ADMIN_KEYS is also a tenant's key in SCRIBES_API_KEYS; "
                "give operators keys of their own"
            )
        self._check_webhooks()
        if self.env == "production" and not keys and not self.trust_gateway_tenant:
            raise ConfigurationError(
                "SCRIBES_ENV=production needs SCRIBES_API_KEYS (key=tenant,…); "
                "refusing to serve without authentication"
            )

    def _check_webhooks(self) -> None:
        hosts = self.webhook_allowed_hosts
        if not hosts:
            return
        from rag.webhooks import parse_host_rule  # rag.webhooks types its checks by Settings

        for entry in hosts:
            try:
                parse_host_rule(entry)
            except ValueError as exc:
                raise ConfigurationError(f"SCRIBES_WEBHOOK_ALLOWED_HOSTS: {exc}") from exc
        if len(self.webhook_secret_value) < 16:
            raise ConfigurationError(
                "SCRIBES_WEBHOOK_ALLOWED_HOSTS is set, so webhooks are on: set "
                "SCRIBES_WEBHOOK_SECRET to a secret of at least 16 characters (e.g. "
                "`openssl rand -hex 32`), which signs every delivery"
            )
        if self.webhook_resend_after_s <= self.webhook_timeout_s:
            raise ConfigurationError(
                "SCRIBES_WEBHOOK_RESEND_AFTER_S must be longer than SCRIBES_WEBHOOK_TIMEOUT_S, "
                "or an attempt under way would be sent again"
            )


def _budget_limit(tenant: str, period: str, value: object) -> Decimal | None:
    if value is None:
        return None
    try:
        limit = Decimal(value) if isinstance(value, str | Decimal) else None
    except InvalidOperation:
        limit = None
    if limit is None or not limit.is_finite() or limit <= 0:
        raise ConfigurationError(
            f"SCRIBES_TENANT_BUDGETS: {tenant}'s {period} must be a positive number of dollars "
            f"or null, not {value!r}"
        )
    return limit


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    settings = Settings()
    settings.check()
    return settings
