"""Webhooks: which callback URLs are allowed, how a delivery is signed and checked, and one
delivery attempt over HTTP.

A question may name a `callback_url`; when its job finishes, the job is POSTed there
(`tasks.webhook` schedules the attempts, `rag.records.webhooks` keeps them). Two guards
against server-side request forgery:
- at submission, the URL must be http(s) and its host on `SCRIBES_WEBHOOK_ALLOWED_HOSTS`;
- at delivery, the host is resolved once and the request goes to the address that was
  checked (no second lookup for a rebinding DNS to answer differently): a host matched only
  by a wildcard must resolve to public addresses, never a private, loopback, link-local or
  otherwise reserved one. A host or address named exactly on the list may be private: the
  operator chose it.

Signatures are Stripe's scheme: `Scribes-Signature: t=<unix seconds>,v1=<hex>` where the hex
is HMAC-SHA256 of `f"{t}.{body}"` under `SCRIBES_WEBHOOK_SECRET`. A receiver checks it with
`verify_signature`, which also refuses a timestamp older than its tolerance (a replay).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import random
import socket
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from rag.validation import InvalidInput

if TYPE_CHECKING:
    from rag.settings import Settings

__all__ = [
    "ATTEMPT_HEADER",
    "EVENT_ID_HEADER",
    "SIGNATURE_HEADER",
    "AllowedHosts",
    "AttemptResult",
    "HostRule",
    "InvalidSignature",
    "WebhookAttempt",
    "WebhookState",
    "WebhookStatus",
    "check_callback_url",
    "parse_host_rule",
    "post_webhook",
    "retry_delay",
    "sign",
    "signature_header",
    "verify_signature",
]

SIGNATURE_HEADER = "Scribes-Signature"
# The job's id: one event per job, the same on every attempt, for receivers to drop repeats.
EVENT_ID_HEADER = "Scribes-Event-Id"
ATTEMPT_HEADER = "Scribes-Delivery-Attempt"
_USER_AGENT = "Scribes-Webhooks/1"
# A receiver's Retry-After is honoured up to this; beyond it the schedule's own delay holds.
_RETRY_AFTER_CAP_S = 3600.0
_DEFAULT_PORTS = {"http": 80, "https": 443}


class WebhookState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


# --- the allow-list -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostRule:
    """One entry of the allow-list: `host`, `host:port`, `*.domain` or `*.domain:port`."""

    host: str
    port: int | None
    wildcard: bool

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host


def parse_host_rule(entry: str) -> HostRule:
    """`entry` as a rule; ValueError saying what is wrong with it."""
    text = entry.strip().lower().rstrip(".")
    if not text or "/" in text or "@" in text or any(c.isspace() for c in text):
        raise ValueError(f"{entry!r} is not a host, host:port or *.domain")
    port: int | None = None
    if text.startswith("["):  # [v6] or [v6]:port
        address, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"{entry!r}: the port after ] is not a number")
            port = int(rest[1:])
        text = address
    elif text.count(":") == 1:
        text, _, digits = text.partition(":")
        if not digits.isdigit():
            raise ValueError(f"{entry!r}: the port is not a number")
        port = int(digits)
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"{entry!r}: the port must be 1-65535")
    wildcard = text.startswith("*.")
    host = text[2:] if wildcard else text
    if not host or "*" in host:
        raise ValueError(f"{entry!r}: a wildcard may only be a leading '*.'")
    return HostRule(host, port, wildcard)


class AllowedHosts:
    """The parsed `SCRIBES_WEBHOOK_ALLOWED_HOSTS`; empty means webhooks are off."""

    def __init__(self, entries: tuple[str, ...]) -> None:
        self.rules = tuple(parse_host_rule(entry) for entry in entries)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def match(self, host: str, port: int) -> HostRule | None:
        """The rule that allows `host:port`, an exact one before a wildcard; None if none."""
        found = [rule for rule in self.rules if rule.matches(host, port)]
        found.sort(key=lambda rule: rule.wildcard)
        return found[0] if found else None


@dataclass(frozen=True, slots=True)
class _Target:
    scheme: str
    host: str
    port: int


def _target_of(url: str) -> _Target:
    """The scheme, host and port of a callback URL; ValueError saying what is wrong."""
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise ValueError("it contains spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError("it must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise ValueError("it must not carry a user name or password")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise ValueError("it has no host")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError as exc:
        raise ValueError("its port is not a number from 1 to 65535") from exc
    return _Target(parts.scheme, host, port)


def check_callback_url(url: str | None, settings: Settings) -> str | None:
    """`url` if webhooks are on and its host is allowed (None stays None); else
    `InvalidInput` (a 422 `invalid_request`) saying why and what to change."""
    if url is None:
        return None
    allowed = AllowedHosts(settings.webhook_allowed_hosts)
    if not allowed:
        raise _invalid(
            "callback_url: webhooks are not enabled on this server; an operator enables "
            "them by setting SCRIBES_WEBHOOK_ALLOWED_HOSTS (and SCRIBES_WEBHOOK_SECRET)"
        )
    try:
        target = _target_of(url)
    except ValueError as exc:
        raise _invalid(f"callback_url is not a usable URL: {exc}") from exc
    if allowed.match(target.host, target.port) is None:
        raise _invalid(
            f"callback_url: host {target.host}:{target.port} is not in "
            "SCRIBES_WEBHOOK_ALLOWED_HOSTS; ask an operator to allow it"
        )
    return url


def _invalid(message: str) -> InvalidInput:
    return InvalidInput("invalid_request", message, status=422)


# --- signatures -----------------------------------------------------------------------


class InvalidSignature(ValueError):
    """A delivery whose signature does not check out; the message says why."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of `f"{timestamp}.{body}"`."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, *, timestamp: int | None = None) -> str:
    stamp = int(time.time()) if timestamp is None else timestamp
    return f"t={stamp},v1={sign(secret, stamp, body)}"


def verify_signature(
    secret: str,
    header: str | None,
    body: bytes | str,
    tolerance_s: float = 300,
    *,
    now: float | None = None,
) -> int:
    """Check a delivery's `Scribes-Signature` against the raw body as received; its
    timestamp if it is genuine and fresh, else `InvalidSignature`.

    Any `v1=` value may match (there may be several while a secret is being changed). Pass
    the body's bytes exactly as they arrived: parsing and re-serialising the JSON changes
    them.
    """
    if not header:
        raise InvalidSignature(f"no {SIGNATURE_HEADER} header")
    raw = body.encode() if isinstance(body, str) else body
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        raise InvalidSignature(f"{SIGNATURE_HEADER} needs t=<unix seconds> and v1=<hex>")
    expected = sign(secret, timestamp, raw)
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise InvalidSignature("no v1 signature matches this body under this secret")
    age = (time.time() if now is None else now) - timestamp
    if abs(age) > tolerance_s:
        raise InvalidSignature(f"signed {age:.0f} s from now, outside {tolerance_s:.0f} s")
    return timestamp


# --- what the job shows ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    """One try: when it started, the HTTP status (None when none came back) or error."""

    attempt: int
    at: float
    status: int | None
    error: str | None
    duration_ms: float

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "at": round(self.at, 3),
            "status": self.status,
            "error": self.error,
            "duration_ms": self.duration_ms,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WebhookAttempt:
        return cls(
            attempt=int(data["attempt"]),
            at=float(data["at"]),
            status=data.get("status"),
            error=data.get("error"),
            duration_ms=float(data.get("duration_ms", 0.0)),
        )


@dataclass(frozen=True, slots=True)
class WebhookStatus:
    """A job's webhook as its record holds it (hash fields `webhook_*`)."""

    url: str
    state: WebhookState
    attempts: tuple[WebhookAttempt, ...] = ()
    next_attempt_at: float | None = None

    @classmethod
    def of_fields(cls, raw: dict[str, str]) -> WebhookStatus | None:
        url = raw.get("callback_url")
        if not url:
            return None
        attempts = json.loads(raw.get("webhook_attempts") or "[]")
        next_at = raw.get("webhook_due")
        return cls(
            url=url,
            state=WebhookState(raw.get("webhook_state") or WebhookState.PENDING.value),
            attempts=tuple(WebhookAttempt.from_json(item) for item in attempts),
            next_attempt_at=float(next_at) if next_at else None,
        )

    def to_json(self) -> dict[str, Any]:
        pending = self.state is WebhookState.PENDING
        return {
            "url": self.url,
            "state": self.state.value,
            "attempts": [attempt.to_json() for attempt in self.attempts],
            "next_attempt_at": self.next_attempt_at if pending else None,
        }


# --- one attempt ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one POST came to: `delivered`, or not and whether trying again may help."""

    delivered: bool
    retryable: bool
    status: int | None = None
    error: str | None = None
    retry_after_s: float | None = None


def retry_delay(attempt: int, *, base_s: float, retry_after_s: float | None = None) -> float:
    """Seconds before the attempt after `attempt` (1-based): base × 2^(attempt-1), ±20 %
    jitter so that a receiver's outage does not bring every retry back at once, never
    sooner than the receiver's Retry-After (itself capped at an hour)."""
    delay: float = base_s * 2.0 ** (attempt - 1) * random.uniform(0.8, 1.2)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, _RETRY_AFTER_CAP_S))
    return delay


def _checked_address(target: _Target, rule: HostRule) -> str:
    """The address to connect to: the host resolved once, each of its addresses checked
    unless the operator named this host exactly. ValueError when refused, OSError when the
    name does not resolve (which may pass)."""
    infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise OSError(f"{target.host} has no address")
    if not rule.wildcard:
        return addresses[0]
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not ip.is_global or ip.is_multicast:
            raise ValueError(
                f"{target.host} resolves to {address}, a private or reserved address; "
                "only a host named exactly in SCRIBES_WEBHOOK_ALLOWED_HOSTS may be one"
            )
    return addresses[0]


def post_webhook(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    allowed: AllowedHosts,
    timeout_s: float,
) -> AttemptResult:
    """POST `body` to `url` once: no redirects followed, no proxy from the environment,
    `timeout_s` on each of connect, write and the response's headers. 2xx is delivered;
    408, 429, 5xx, timeouts and connection errors may pass; any other answer will not."""
    try:
        target = _target_of(url)
    except ValueError as exc:
        return AttemptResult(False, False, error=f"callback_url is not usable: {exc}")
    rule = allowed.match(target.host, target.port)
    if rule is None:
        return AttemptResult(
            False, False, error=f"{target.host}:{target.port} is no longer allowed"
        )
    try:
        address = _checked_address(target, rule)
    except ValueError as exc:
        return AttemptResult(False, False, error=str(exc))
    except OSError as exc:
        return AttemptResult(False, True, error=f"cannot resolve {target.host}: {exc}")
    request_url = httpx.URL(url)
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    sent_headers = {
        "Content-Type": "application/json",
        "User-Agent": _USER_AGENT,
        "Host": request_url.netloc.decode("ascii"),
        **headers,
    }
    try:
        with (
            httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False) as client,
            client.stream(
                "POST",
                request_url.copy_with(host=address),
                content=body,
                headers=sent_headers,
                extensions=extensions,
            ) as response,
        ):
            status = response.status_code  # the body is never read: only the status counts
            retry_after = response.headers.get("retry-after")
    except httpx.TimeoutException as exc:
        return AttemptResult(False, True, error=f"timed out after {timeout_s:g} s ({exc!r})")
    except httpx.HTTPError as exc:
        return AttemptResult(False, True, error=f"{exc.__class__.__name__}: {exc}"[:300])
    if 200 <= status < 300:
        return AttemptResult(True, False, status=status)
    if status in (408, 429) or status >= 500:
        return AttemptResult(
            False, True, status=status, retry_after_s=_seconds(retry_after), error="retryable"
        )
    if 300 <= status < 400:
        return AttemptResult(False, False, status=status, error="redirects are not followed")
    return AttemptResult(False, False, status=status, error="refused by the receiver")


def _seconds(retry_after: str | None) -> float | None:
    if retry_after is None:
        return None
    try:
        return max(0.0, float(retry_after))
    except ValueError:
        return None  # an HTTP date: the schedule's own delay is used
