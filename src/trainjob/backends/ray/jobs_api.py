"""Ray's Jobs REST API (the dashboard's ``/api/jobs/``), called with the standard library.

Ray's Python SDK for it (``ray.job_submission``) takes about 0.33 s to import, which every new
client process would pay, each CLI call included; these few calls need only ``urllib``. The SDK is
still what uploads a local ``working_dir`` (it packages the folder and uploads it to the cluster,
which has no REST equivalent), so a script job's submission goes through it (``RayBackend``).

The REST API is Ray's documented, versioned interface (the one ``ray job submit`` uses). A
cluster with token authentication gets the ``Authorization`` header (``auth``: the configured token, else Ray's own).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from trainjob.backends.ray.auth import http_headers, refused_message

HTTP_TIMEOUT = 30.0


@dataclass(frozen=True)
class RayJob:
    """What trainjob reads of Ray's record of a job (the fields of Ray's ``JobDetails`` it uses)."""

    submission_id: str
    status: str  # PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED
    message: str | None = None
    error_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    driver_node_id: str | None = None  # the node whose log folder holds the driver's state mirror (mirror.py)
    end_time: int | None = None  # ms since the epoch, once ended

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RayJob":
        return cls(
            submission_id=str(d.get("submission_id") or d.get("job_id") or ""),
            status=str(d.get("status") or ""),
            message=d.get("message"),
            error_type=d.get("error_type"),
            metadata=dict(d.get("metadata") or {}),
            driver_node_id=d.get("driver_node_id"),
            end_time=d.get("end_time"),
        )


class JobsAPIError(RuntimeError):
    """The dashboard answered with an error (``status`` is its HTTP code)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Request failed with status code {status}: {message}")
        self.status = status


class JobsAPI:
    """The calls trainjob makes: submit, one job's record, all records, stop, delete, driver log."""

    def __init__(self, dashboard: str, token: str | None = None) -> None:
        self.dashboard = dashboard.rstrip("/")
        self.token = token
        self.headers = http_headers(token)

    def submit(self, entrypoint: str, submission_id: str, runtime_env: dict[str, Any], metadata: dict[str, str]) -> str:
        body = {"entrypoint": entrypoint, "submission_id": submission_id, "runtime_env": runtime_env, "metadata": metadata}
        return str(self._call("POST", "/api/jobs/", body)["submission_id"])

    def info(self, submission_id: str) -> RayJob | None:
        """Ray's record of the job; None if Ray has none."""
        try:
            return RayJob.from_json(self._call("GET", f"/api/jobs/{_quote(submission_id)}"))
        except JobsAPIError as e:
            if e.status == 404:
                return None
            raise

    def list(self) -> list[RayJob]:
        return [RayJob.from_json(d) for d in self._call("GET", "/api/jobs/")]

    def stop(self, submission_id: str) -> bool:
        return bool(self._call("POST", f"/api/jobs/{_quote(submission_id)}/stop").get("stopped"))

    def delete(self, submission_id: str) -> bool:
        return bool(self._call("DELETE", f"/api/jobs/{_quote(submission_id)}").get("deleted"))

    def logs(self, submission_id: str) -> str:
        return str(self._call("GET", f"/api/jobs/{_quote(submission_id)}/logs").get("logs") or "")

    def get(self, path: str, **params: Any) -> bytes:
        """A GET of another dashboard endpoint (state API, log files), with the same headers."""
        url = f"{self.dashboard}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=self.headers), timeout=HTTP_TIMEOUT) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise JobsAPIError(e.code, refused_message(self.dashboard, bool(self.headers), e.read().decode(errors="replace"))) from None
            raise

    def call_raw(self, method: str, path: str, data: bytes | None = None, content_type: str | None = None) -> bytes:
        """Any dashboard request with a raw body (the package upload); the raw answer."""
        headers = {**self.headers, **({"Content-Type": content_type} if content_type else {})}
        req = urllib.request.Request(f"{self.dashboard}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace").strip()
            if e.code in (401, 403):
                detail = refused_message(self.dashboard, bool(self.headers), detail)
            raise JobsAPIError(e.code, detail[-2000:] or e.reason) from None

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {**self.headers, **({"Content-Type": "application/json"} if data is not None else {})}
        req = urllib.request.Request(f"{self.dashboard}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace").strip()
            if e.code in (401, 403):
                detail = refused_message(self.dashboard, bool(self.headers), detail)
            raise JobsAPIError(e.code, detail or e.reason) from None
        return json.loads(raw) if raw else {}


def _quote(submission_id: str) -> str:
    return urllib.parse.quote(submission_id, safe="")
