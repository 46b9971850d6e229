"""A small HTTP client for the Scribes API, used by `scribes ask`, `ingest` and `status`."""

from __future__ import annotations

import time
from typing import Any

import httpx

from rag.urls import redact_url

__all__ = ["ApiFailure", "ScribesClient"]


class ApiFailure(RuntimeError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status = status
        self.code = code
        self.message = message


class ScribesClient:
    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 30) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ScribesClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiFailure(
                0,
                "api_unreachable",
                f"Scribes API at {redact_url(self.base_url)} is not reachable "
                f"({exc.__class__.__name__}); start it with `scribes up` or set SCRIBES_API_URL",
            ) from exc
        try:
            body: dict[str, Any] = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 400:
            error = body.get("error") or {}
            raise ApiFailure(
                response.status_code,
                str(error.get("code", "http_error")),
                str(error.get("message", response.text[:200] or response.reason_phrase)),
            )
        return body

    def submit_question(self, question: str, *, top_k: int | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"question": question}
        if top_k is not None:
            payload["top_k"] = top_k
        return self._call("POST", "/v1/questions", json=payload)

    def question(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/questions/{job_id}")

    def ask(
        self, question: str, *, top_k: int | None = None, timeout_s: float = 120
    ) -> dict[str, Any]:
        """Submit and poll until the job finishes; a cache hit returns at once."""
        job = self.submit_question(question, top_k=top_k)
        return self.wait_for_question(job["id"], first=job, timeout_s=timeout_s)

    def wait_for_question(
        self, job_id: str, *, first: dict[str, Any] | None = None, timeout_s: float = 120
    ) -> dict[str, Any]:
        job = first or self.question(job_id)
        deadline = time.monotonic() + timeout_s
        pause = 0.02
        while job["status"] not in ("succeeded", "failed"):
            if time.monotonic() > deadline:
                raise ApiFailure(0, "timeout", f"question {job_id} not answered in {timeout_s} s")
            time.sleep(pause)
            pause = min(pause * 1.5, 0.5)
            job = self.question(job_id)
        return job

    def add_document(
        self,
        *,
        title: str,
        text: str,
        document_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"title": title, "text": text}
        if document_id is not None:
            payload["id"] = document_id
        if metadata is not None:
            payload["metadata"] = metadata
        return self._call("POST", "/v1/documents", json=payload)

    def document(self, document_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/documents/{document_id}")

    def ready(self) -> dict[str, Any]:
        return self._call("GET", "/readyz")

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/v1/status")
