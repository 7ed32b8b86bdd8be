"""The environment contract every rank gets, whichever backend started it (names in ``contract``).

``runtime`` reads these variables inside the rank; a backend adds what only it knows (the
rendezvous address, ``RANK``...). Also ``free_port``, for the rendezvous port a backend picks.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path


from trainjob import contract
from trainjob.core.spec import JobSpec

LOOPBACK = "127.0.0.1"


def rank_env(
    spec: JobSpec,
    *,
    job_id: str,
    job_dir: Path,
    attempt: int,
    resume: bool,
    run_dir: Path | None = None,
    metrics_host: str | None = None,
    submit_dir: str | None = None,
) -> dict[str, str]:
    """The trainjob variables of one rank of ``attempt``.

    ``run_dir`` is where a rank reports through files (the local backend); without it the rank
    reports through its backend's sink. ``metrics_host``/``submit_dir`` are set when given.
    """
    env = {
        contract.JOB_ID: job_id,
        contract.JOB_DIR: str(job_dir),
        contract.ATTEMPT: str(attempt),
        contract.TRACKING: "1" if spec.tracking.enabled else "0",
        contract.METRICS_PORT: str(spec.tracking.metrics_port or 0),
        contract.CUSTOM_METRICS: json.dumps(dict(spec.tracking.custom_metrics)),
        contract.RESUME: "1" if resume else "0",
    }
    if run_dir is not None:
        env[contract.RUN_DIR] = str(run_dir)
    if metrics_host is not None:
        env[contract.METRICS_HOST] = metrics_host
    if submit_dir is not None:
        env[contract.SUBMIT_DIR] = submit_dir
    return env


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` now (the kernel's pick; another process may take it before use)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
