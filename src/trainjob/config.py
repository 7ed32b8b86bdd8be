"""Backend configurations: which backend a ``TrainerClient`` talks to, and its settings.

Each config names its backend class by import path, so choosing a backend is a lookup, not an
``isinstance`` chain, and heavy backend dependencies (ray, kubernetes) load only when used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

from trainjob.core.spec import DEFAULT_METRICS_HOST
from trainjob.errors import Problem


@dataclass(frozen=True)
class LocalBackendConfig:
    """Run jobs as processes on this machine (the default).

    ``home``: where the store and job folders live (default ``$TRAINJOB_HOME`` or ``~/.trainjob``).
    ``metrics_host``: the address rank 0's ``/metrics`` endpoint binds to (loopback by default);
    an address this machine has (checked when the backend is made), or ``0.0.0.0`` for all.
    ``warm_start``: fork ranks from a warm process per environment that has already imported
    the training stack (``False``: every job starts cold; ``TRAINJOB_WARM_START=0`` does the same
    for every client); ``warm_idle_timeout``: seconds a warm process waits for the next job
    before it exits (default ``$TRAINJOB_WARM_IDLE_TIMEOUT`` or 600). See docs/warm-start.md.
    """

    home: str | os.PathLike | None = None
    metrics_host: str = DEFAULT_METRICS_HOST
    warm_start: bool = True
    warm_idle_timeout: float | None = None  # None: $TRAINJOB_WARM_IDLE_TIMEOUT, else 600

    backend_path: ClassVar[str] = "trainjob.backends.local.backend:LocalBackend"


@dataclass(frozen=True)
class RayBackendConfig:
    """Run jobs on a Ray cluster through the Ray Jobs API (``pip install trainjob[ray]``).

    ``address``: ``"auto"`` (``RAY_ADDRESS`` or the cluster started on this machine), the GCS
    ``"host:6379"``, ``"ray://host:10001"`` (Ray Client) or a dashboard URL ``"http://host:8265"``.
    ``home``: the folder *on the cluster's nodes* where each job gets ``jobs/<id>/`` (its working
    directory ``workdir/``, where a relative ``output_dir`` and the checkpoints land); the same
    path on every node, on shared storage for multi-node resume (default: the nodes'
    ``$TRAINJOB_HOME`` or ``~/.trainjob``). ``gcs_address``: the GCS when ``address`` is a
    dashboard URL (optional, never guessed from it; without it the client reaches the cluster
    through the dashboard's Jobs API alone, for clusters that expose only that port). ``installer``: ``"uv"`` or ``"pip"`` for
    ``packages_to_install``. ``python``: the Python command on the nodes that runs trainjob's
    driver. ``check_resources``: refuse at ``train()`` a job whose worker fits on no current node
    (turn off for an autoscaling cluster that adds bigger nodes on demand). ``working_dir``: a
    local folder shipped with every job and put on the ranks' ``PYTHONPATH`` (code of module and
    ``"pkg.mod:fn"`` jobs that is not installed on the nodes; a script job ships its own folder).
    ``auth_token``: the token of a cluster started with Ray's token authentication
    (``RAY_AUTH_MODE=token``); default ``$RAY_AUTH_TOKEN``, else Ray's own lookup; never shown in
    the config's repr. See docs/ray.md.
    """

    address: str = "auto"
    home: str | os.PathLike | None = None
    gcs_address: str | None = None
    installer: str = "uv"
    python: str = "python"
    check_resources: bool = True
    working_dir: str | os.PathLike | None = None
    auth_token: str | None = field(default=None, repr=False)

    backend_path: ClassVar[str] = "trainjob.backends.ray:RayBackend"


BackendConfig = LocalBackendConfig | RayBackendConfig


def warm_config_problems(config: LocalBackendConfig) -> list[Problem]:
    """What is wrong with ``config``'s warm-start settings (every problem), or nothing."""
    problems = []
    if not isinstance(config.warm_start, bool):
        problems.append(Problem("warm_start", config.warm_start, "True or False"))
    t = config.warm_idle_timeout
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < float("inf")):
        problems.append(Problem("warm_idle_timeout", t, "a number of seconds > 0, e.g. 600, or None"))
    return problems


def bind_host_problem(name: str, host: object) -> Problem | None:
    """Why ``host`` cannot be bound on this machine (a ``Problem`` naming ``name``), or None.

    An address this machine has (or a name resolving to one), ``0.0.0.0``/``::`` for every
    interface. Checked by binding a socket to port 0, which is what a server will do later.
    """
    import socket

    if not isinstance(host, str) or not host.strip():
        return Problem(name, host, "an address of this machine such as '127.0.0.1' (loopback) or '0.0.0.0' (every interface)")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), 0, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        return Problem(name, host, f"an address of this machine or a name that resolves to one ({e})")
    for family, _, _, _, addr in infos:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((addr[0], 0))
                return None
            except OSError:
                continue
    return Problem(name, host, f"an address of this machine: {', '.join(_local_addresses())} or 0.0.0.0 (every interface)")


def _local_addresses() -> list[str]:
    import psutil
    import socket

    found = [a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)]
    return sorted(set(found), key=lambda a: (":" in a, a))
