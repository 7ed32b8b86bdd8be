"""The Ray backend, client side: jobs are Ray jobs whose ranks are Ray Train workers.

``train()`` stores the job's record and payload in the cluster and submits a Ray job (Jobs API)
whose entrypoint is trainjob's driver; it returns at once, and the job outlives this process.
Every read asks the cluster. No client-side database: any client that reaches the cluster sees
every trainjob job on it, and the records live exactly as long as the cluster does
(``delete_job`` removes them).

One idea per module: ``connection`` (addresses, how the cluster is reached), ``submit``
(``train``), ``reads`` (status and what the client shows), ``logs``, ``control`` (stop, delete);
this class puts them together, with the cluster's runtime.
"""

from __future__ import annotations

import json
import threading

from trainjob.backends.base import Backend
from trainjob.backends.ray.connection import Connection, check_config, connect
from trainjob.backends.ray.control import Control
from trainjob.backends.ray.jobs_api import RayJob
from trainjob.backends.ray.logs import Logs
from trainjob.backends.ray.reads import Reads
from trainjob.backends.ray.submit import Submit
from trainjob.config import RayBackendConfig
from trainjob.errors import BackendError, ValidationError

__all__ = ["RayBackend"]
PACKAGES_TIMEOUT = 120.0  # seconds get_runtime_packages waits for its listing job on the cluster


class RayBackend(Submit, Reads, Logs, Control, Backend):
    name = "ray"

    def __init__(self, config: RayBackendConfig | None = None) -> None:
        self.config = config or RayBackendConfig()
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise BackendError("RayBackendConfig needs Ray on this machine; install it with: pip install 'trainjob[ray]'")
        problems = check_config(self.config)
        if problems:
            raise ValidationError(problems, "RayBackendConfig")
        self._conn: Connection | None = None
        self._conn_lock = threading.Lock()
        self._info_cache: dict[str, tuple[float, RayJob | None]] = {}
        self._cluster_runtime = None  # list_runtimes(), kept for TrainJob records

    @property
    def conn(self) -> Connection:
        """The connection to the cluster, made on first use (creating a client does no I/O)."""
        with self._conn_lock:
            if self._conn is None:
                self._conn = connect(self.config)
            return self._conn

    # ---- runtimes ----------------------------------------------------------------------
    def list_runtimes(self):
        """The cluster's ``torch-distributed`` runtime: its resources are the alive nodes' totals."""
        from trainjob.runtimes import ray_runtime

        try:
            nodes = json.loads(self.conn.api.get("/api/v0/nodes", limit=10000, detail="true"))["data"]["result"]["result"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BackendError(f"Ray's state API did not list the cluster's nodes at {self.conn.dashboard}: {type(e).__name__}: {e}") from e
        alive = [n.get("resources_total") or {} for n in nodes if n.get("state") == "ALIVE"]
        totals: dict[str, float] = {}
        for node in alive:
            for k, v in node.items():
                totals[k] = totals.get(k, 0) + v
        self._cluster_runtime = ray_runtime(totals, len(alive))
        return [self._cluster_runtime]

    def runtime_packages(self, runtime) -> list[str]:
        """The packages of the cluster's Python (``RayBackendConfig.python`` on the node Ray puts a
        small Ray job on; the nodes are expected to share one stack, which a job's
        ``packages_to_install`` extends). Costs a Ray job: a few seconds."""
        import shlex

        entry = f"{shlex.quote(self.config.python)} -m trainjob.runtimes"
        info, text = self._helper_job("packages", entry, {"trainjob.probe": "packages"}, PACKAGES_TIMEOUT, "the package listing")
        if info is None or info.status != "SUCCEEDED":
            raise BackendError(f"listing the cluster's packages failed ({info.status if info else 'no record'}): {text.strip()[-500:]}")
        return [line for line in text.splitlines() if "==" in line and " " not in line.strip()]

    def _runtime(self):
        """The cluster's runtime for TrainJob records, listed once per backend; a state API that
        does not answer leaves it with unknown resources rather than failing the read."""
        if self._cluster_runtime is None:
            try:
                self.list_runtimes()
            except BackendError:
                from trainjob.runtimes import ray_runtime

                return ray_runtime({}, 0)
        return self._cluster_runtime


