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

    ``address``: ``"auto"``, ``"ray://host:10001"`` or a dashboard URL ``"http://host:8265"``.
    """

    address: str = "auto"
    home: str | os.PathLike | None = None

    backend_path: ClassVar[str] = "trainjob.backends.ray:RayBackend"


BackendConfig = LocalBackendConfig | RayBackendConfig
