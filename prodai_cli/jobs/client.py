"""The HTTP client of ``prodai jobs``: submit a file, poll, download results, cancel, list."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from prodai_cli.errors import JobError, JobNotFoundError, UsageError

TERMINAL = ("succeeded", "failed", "cancelled")
KEY_HINT = "Create a key with `prodai keys create --name NAME --scope jobs`; pass it with --api-key or PRODAI_API_KEY"


class JobsClient:
    """Talks to a prodai server's ``/v1/jobs`` API with an API key.

    Args:
        url: The server's base URL (``http://127.0.0.1:8000``).
        api_key: The key (``jobs`` scope); None when the server runs without auth.
        header: The header the server reads the key from (``auth.header``).
        timeout: Seconds per HTTP call.

    """

    def __init__(self, url: str, api_key: str | None, *, header: str = "X-API-Key", timeout: float = 60.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--url must start with http:// or https://, got {url!r}")
        headers = {header: api_key} if api_key else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise JobError(f"Cannot reach the server at {self.url}: {type(exc).__name__}") from None
        _raise_for(response)
        return response

    def submit(
        self, path: Path, model: str | None, *, text_field: str | None = None, id_field: str | None = None
    ) -> dict[str, Any]:
        """Upload a JSONL file as a job; returns its record (status ``queued``)."""
        if not path.is_file():
            raise UsageError(f"Input file {path} does not exist or is not a file")
        params = {k: v for k, v in (("model", model), ("text_field", text_field), ("id_field", id_field)) if v}

        def body() -> Iterator[bytes]:
            with open(path, "rb") as handle:
                while block := handle.read(1 << 16):
                    yield block

        response = self._call(
            "POST",
            "/v1/jobs",
            params=params,
            content=body(),
            headers={"Content-Type": "application/x-ndjson", "Content-Length": str(path.stat().st_size)},
        )
        return dict(response.json())

    def status(self, job_id: str) -> dict[str, Any]:
        """The job's record."""
        return dict(self._call("GET", f"/v1/jobs/{job_id}").json())

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Ask the server to cancel the job; returns the record."""
        return dict(self._call("DELETE", f"/v1/jobs/{job_id}").json())

    def list(self, *, status: str | None = None, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        """A page of this key's jobs, newest first."""
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if status:
            params["status"] = status
        return dict(self._call("GET", "/v1/jobs", params=params).json())

    def download(self, job_id: str, out: Path, *, errors: bool = False) -> int:
        """Stream the job's results (or errors) JSONL into ``out`` (written whole, then renamed); returns lines."""
        path = f"/v1/jobs/{job_id}/{'errors' if errors else 'results'}"
        partial = out.with_name(f".{out.name}.part")
        lines = 0
        try:
            with self.http.stream("GET", path) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for(response)
                with open(partial, "wb") as handle:
                    for block in response.iter_bytes():
                        handle.write(block)
                        lines += block.count(b"\n")
        except httpx.TransportError as exc:
            partial.unlink(missing_ok=True)
            raise JobError(f"Cannot reach the server at {self.url}: {type(exc).__name__}") from None
        partial.replace(out)
        return lines

    def wait(
        self,
        job_id: str,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        *,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Poll until the job ends; returns its final record.

        Raises:
            JobError: ``timeout_s`` passed first.

        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            record = self.status(job_id)
            if on_update is not None:
                on_update(record)
            if record["status"] in TERMINAL:
                return record
            if deadline is not None and time.monotonic() > deadline:
                raise JobError(f"Job {job_id} is still {record['status']} after {timeout_s:g} s")
            time.sleep(poll_s)


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        detail = str(response.json().get("detail", ""))
    except ValueError:
        detail = response.text[:200]
    message = f"The server refused ({response.status_code}): {detail or response.reason_phrase}"
    if response.status_code == 404:
        raise JobNotFoundError(message)
    raise JobError(message, hint=KEY_HINT if response.status_code in (401, 403) else None)
