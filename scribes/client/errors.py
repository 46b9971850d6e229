"""What the client raises: one base class, `ScribesError`, with the API's own code and message.

`status` is the HTTP status, 0 when no response came (unreachable, or a wait that ran out).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scribes.client.models import Job

__all__ = ["ApiError", "ScribesError", "Timeout", "Unreachable"]


class ScribesError(RuntimeError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})" if status else message)
        self.status = status
        self.code = code
        self.message = message


class ApiError(ScribesError):
    """The API answered with an error: `{"error": {"code", "message", …}}`.

    `details` holds the error object's other fields (a budget's `period` and `resets_at`);
    `retry_after_s` the Retry-After header, when it came with one.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(status, code, message)
        self.details = details or {}
        self.retry_after_s = retry_after_s


class Unreachable(ScribesError):
    """No answer from the API: refused, reset or timed out, after the retries."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "api_unreachable", message)


class Timeout(ScribesError):
    """A job did not finish within the time the caller gave; it goes on running on the
    server (cancel it to stop it). `job` is the last state seen."""

    def __init__(self, job: Job, timeout_s: float) -> None:
        super().__init__(0, "timeout", f"question {job.id} not answered in {timeout_s:g} s")
        self.job = job
        self.timeout_s = timeout_s
