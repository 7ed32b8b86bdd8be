"""How the client reaches a Ray cluster: the address forms, the GCS and the dashboard.

``"auto"`` (``RAY_ADDRESS`` or the Ray started on this machine) or ``"host:port"`` (the GCS; the
client connects to it directly, without ``ray.init``), ``"ray://host:10001"`` (Ray Client), or
``"http://host:8265"`` (the dashboard) with ``gcs_address`` (never guessed), or
``"http://host:8265"`` alone: **Jobs-API-only mode**, for clusters that expose only the dashboard
port. In that mode the client opens no GCS connection at all: it submits with a package upload
(``bundle``), reads each job's state mirror through the dashboard's log endpoint (``mirror``),
and stops or deletes through a small relay Ray job (``relay``).

A ``Connection`` holds the job-state store (``state.KV``; read-only in Jobs-API-only mode) and the
dashboard (``JobsAPI``).
"""

from __future__ import annotations

import os
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainjob.backends.ray import auth, plan
from trainjob.backends.ray.jobs_api import JobsAPI, JobsAPIError
from trainjob.backends.ray.state import KV
from trainjob.config import RayBackendConfig
from trainjob.errors import BackendError, Problem, ValidationError

RAY_CLIENT_TRIES = 3
_ENV_LOCK = threading.Lock()


@dataclass
class Connection:
    kv: KV
    dashboard: str  # http(s)://host:port
    token: str | None = None  # Ray's auth token (auth.py); None: Ray's own lookup, or no auth
    jobs_api_only: bool = False  # no GCS connection: kv reads mirrors (mirror.DashboardGcs), writes go through relay jobs
    _api: JobsAPI | None = None
    _jobs: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def api(self) -> JobsAPI:
        """The dashboard's Jobs REST API (and its other endpoints)."""
        with self._lock:
            if self._api is None:
                self._api = JobsAPI(self.dashboard, self.token)
            return self._api

    def jobs(self):
        """Ray's ``JobSubmissionClient``, only to submit a job with a local ``working_dir``
        (imported on first use: 0.33 s)."""
        with self._lock:
            if self._jobs is None:
                from ray.job_submission import JobSubmissionClient

                # The SDK replaces the address it is given by $RAY_API_SERVER_ADDRESS or $RAY_ADDRESS,
                # and resolves a GCS address in $RAY_ADDRESS to the machine's interface address
                # (off loopback). Pin it to the dashboard already resolved here.
                with _ENV_LOCK:
                    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
                    os.environ["RAY_API_SERVER_ADDRESS"] = self.dashboard
                    try:
                        self._jobs = JobSubmissionClient(self.dashboard, headers=auth.http_headers(self.token) or None)
                    finally:
                        if saved is None:
                            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
                        else:
                            os.environ["RAY_API_SERVER_ADDRESS"] = saved
            return self._jobs


def connect(config: RayBackendConfig) -> Connection:
    """Connect to the cluster ``config`` names (see the module docstring for the address forms)."""
    address = config.address
    token = auth.token_of(config.auth_token)
    env = os.environ.get("RAY_ADDRESS", "")
    if address == "auto" and env.startswith(("http://", "https://", "ray://")):
        address = env  # "auto" follows $RAY_ADDRESS in every form Ray accepts there
    try:
        if address.startswith(("http://", "https://")) and not config.gcs_address:
            from trainjob.backends.ray.mirror import DashboardGcs

            api = JobsAPI(address.rstrip("/"), token)
            api.get("/api/version")  # reach it now: a wrong address fails here, as a GCS connection would
            return Connection(KV(DashboardGcs(api)), api.dashboard, token, jobs_api_only=True, _api=api)
        auth.use_token(token)
        if address.startswith(("http://", "https://")):
            return Connection(KV.connect(config.gcs_address), address.rstrip("/"), token)
        if address.startswith("ray://"):
            import ray

            for tries_left in reversed(range(RAY_CLIENT_TRIES)):
                if ray.is_initialized():
                    break
                try:
                    ray.init(address, logging_level="WARNING")
                except ConnectionError:
                    if not tries_left:  # a cold cluster may time out starting its first client server
                        raise
            kv = KV.through_ray_client()
            return Connection(kv, _dashboard_of(kv, urllib.parse.urlparse(address).hostname or ""), token)
        gcs = _resolve_gcs(address)
        kv = KV.connect(gcs)
        return Connection(kv, _dashboard_of(kv, gcs.rpartition(":")[0]), token)
    except (BackendError, ValidationError):
        raise
    except JobsAPIError as e:
        raise BackendError(f"the Ray dashboard at {address} refused this client: {e}") from e
    except Exception as e:  # noqa: BLE001 - any failure to reach the cluster is reported the same way
        if auth.is_auth_failure(e):
            raise BackendError(auth.refused_message(address, bool(token) or os.environ.get(auth.MODE_ENV) == "token")) from e
        raise BackendError(
            f"cannot reach the Ray cluster at RayBackendConfig(address={address!r}): {type(e).__name__}: {e}. "
            "Start one (ray start --head) or give its address: 'host:6379' (GCS), 'ray://host:10001' or 'http://host:8265'"
        ) from e


# ---- addresses -------------------------------------------------------------------------------
def check_config(config: RayBackendConfig) -> list[Problem]:
    p = []
    a = config.address
    if not isinstance(a, str) or not a.strip():
        p.append(Problem("address", a, "'auto', 'host:port' (the GCS), 'ray://host:10001' or 'http://host:8265'"))
    elif "://" in a and not a.startswith(("ray://", "http://", "https://")):
        p.append(Problem("address", a, "a ray://, http:// or https:// address, 'host:port' (the GCS) or 'auto'"))
    elif "://" not in a and a != "auto" and not _is_host_port(a):
        p.append(Problem("address", a, "'auto' or 'host:port' of the cluster's GCS (e.g. '10.0.0.1:6379')"))
    if config.gcs_address is not None and not _is_host_port(config.gcs_address):
        p.append(Problem("gcs_address", config.gcs_address, "'host:port' of the cluster's GCS (e.g. '10.0.0.1:6379')"))
    if config.auth_token is not None and (not isinstance(config.auth_token, str) or not config.auth_token.strip()):
        p.append(Problem("auth_token", "******", "the cluster's token as a non-empty string (`ray get-auth-token` on a node), or None"))
    if config.installer not in plan.INSTALLERS:
        p.append(Problem("installer", config.installer, f"one of {', '.join(plan.INSTALLERS)}"))
    if config.working_dir is not None and not Path(config.working_dir).expanduser().is_dir():
        p.append(Problem("working_dir", str(config.working_dir), "an existing local folder to ship with every job (or None)"))
    if not isinstance(config.python, str) or not config.python.strip():
        p.append(Problem("python", config.python, "the Python command on the cluster's nodes, e.g. 'python' or '/opt/venv/bin/python'"))
    return p


def _is_host_port(a: str) -> bool:
    host, sep, port = a.rpartition(":")
    return bool(sep and host and port.isdigit())


def _resolve_gcs(address: str) -> str:
    """``"auto"`` -> ``RAY_ADDRESS`` or this machine's running cluster; ``host:port`` stays as given.

    Ray's own resolution turns 127.0.0.1 into the machine's interface address; trainjob keeps the
    address it was given (so a cluster on loopback stays on loopback).
    """
    if address != "auto":
        return address
    env = os.environ.get("RAY_ADDRESS")
    if env and env != "auto":
        return env  # a host:port (_connect took the ray:// and http:// forms)
    from ray._private.services import find_bootstrap_address

    found = find_bootstrap_address(None)
    if not found:
        raise BackendError("RayBackendConfig(address='auto') found no Ray cluster on this machine; start one (ray start --head) or give its address")
    return found


def _dashboard_of(kv: KV, cluster_host: str) -> str:
    """The dashboard URL the cluster registered in its GCS; a wildcard bind host becomes the host we reached."""
    raw = kv._gcs.internal_kv_get(b"dashboard", b"dashboard")
    if not raw:
        raise BackendError(f"the Ray cluster at {cluster_host} has no dashboard; the Ray Jobs API needs one (ray start --include-dashboard=true)")
    host, _, port = raw.decode().rpartition(":")
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = cluster_host
    return f"http://{host}:{port}"


