"""Backend configurations: which backend a ``TrainerClient`` talks to, and its settings.

Each config names its backend class by import path, so choosing a backend is a lookup, not an
``isinstance`` chain, and heavy backend dependencies (ray, kubernetes) load only when used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class LocalBackendConfig:
    """Run jobs as processes on this machine (the default).

    ``home``: where the store and job folders live (default ``$TRAINJOB_HOME`` or ``~/.trainjob``).
    ``metrics_host``: the address rank 0's ``/metrics`` endpoint binds to (loopback by default).
    """

    home: str | os.PathLike | None = None
    metrics_host: str = "127.0.0.1"

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
    dashboard URL (default: its host, port 6379). ``installer``: ``"uv"`` or ``"pip"`` for
    ``packages_to_install``. ``python``: the Python command on the nodes that runs trainjob's
    driver. ``check_resources``: refuse at ``train()`` a job whose worker fits on no current node
    (turn off for an autoscaling cluster that adds bigger nodes on demand). ``working_dir``: a
    local folder shipped with every job and put on the ranks' ``PYTHONPATH`` (code of module and
    ``"pkg.mod:fn"`` jobs that is not installed on the nodes; a script job ships its own folder).
    See docs/ray.md.
    """

    address: str = "auto"
    home: str | os.PathLike | None = None
    gcs_address: str | None = None
    installer: str = "uv"
    python: str = "python"
    check_resources: bool = True
    working_dir: str | os.PathLike | None = None

    backend_path: ClassVar[str] = "trainjob.backends.ray:RayBackend"


BackendConfig = LocalBackendConfig | RayBackendConfig
