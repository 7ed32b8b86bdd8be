"""Spec -> what is handed to Ray: the job's runtime environment, entrypoint and Ray Train scaling.

Pure functions, no Ray import: tests assert on the plan itself (like the local launcher's
``plan_launch``). The submitting client builds the runtime environment; the job's driver builds
the ``ScalingConfig`` from ``scaling()``.
"""

from __future__ import annotations

import shlex
from typing import Any, Mapping

from trainjob.core.spec import JobSpec

# Set in every job unless the user's ``env`` says otherwise.
DEFAULT_ENV = {
    "PYTHONUNBUFFERED": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # Ray Train V2 routes print() through a logger that writes each line to stdout *and* stderr;
    # trainjob's rank logs are the worker's own output, once.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # Ray Train's controller polls its workers every 2 s by default, so the end (or a failure) of
    # the training is noticed up to 2 s late; 0.5 s keeps a job's end prompt, at a few small RPCs.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}
INSTALLERS = ("uv", "pip")


def entrypoint(job_id: str, python: str = "python", bundle: str | None = None) -> str:
    """The Ray job's entrypoint: trainjob's driver, run by the nodes' ``python``; ``bundle``: the
    submission package of a Jobs-API-only client (``bundle``), which the driver puts into the GCS."""
    tail = f" --bundle {shlex.quote(bundle)}" if bundle else ""
    return f"{shlex.quote(python)} -m trainjob.backends.ray.driver {shlex.quote(job_id)}{tail}"


def runtime_env(spec: JobSpec, env: Mapping[str, str] | None, installer: str = "uv", working_dir: str | None = None) -> dict[str, Any]:
    """The Ray runtime environment of a job: ``env`` -> ``env_vars`` (every worker gets them),
    ``packages_to_install`` -> ``uv`` (or ``pip``) with ``pip_index_urls`` as index options, and
    ``working_dir`` (a local folder Ray uploads and puts first on every worker's ``PYTHONPATH``).

    Ray builds the package environment once per distinct package list on each node, on top of
    the node's own Python (its torch/transformers stay visible), and caches it.
    """
    out: dict[str, Any] = {"env_vars": {**DEFAULT_ENV, **(env or {})}}
    if working_dir:
        out["working_dir"] = str(working_dir)
    packages = list(spec.packages.install)
    if packages:
        options = index_options(list(spec.packages.index_urls))
        if installer == "uv":
            out["uv"] = {"packages": packages, "uv_pip_install_options": options + ["--no-cache"]}
        elif installer == "pip":
            out["pip"] = {"packages": packages, "pip_check": False, **({"pip_install_options": options} if options else {})}
        else:
            raise ValueError(f"installer={installer!r}: expected one of {', '.join(INSTALLERS)}")
    return out


def index_options(urls: list[str]) -> list[str]:
    """First URL -> ``--index-url``, the rest -> ``--extra-index-url`` (pip and uv spell them alike)."""
    opts: list[str] = []
    for i, url in enumerate(urls):
        opts += ["--index-url" if i == 0 else "--extra-index-url", url]
    return opts


def working_dir(spec: JobSpec, configured: str | None) -> str | None:
    """What to ship: a script job's own folder (modules next to the script import as with
    ``python train.py``), else the configured folder (code of module and function-reference jobs
    that is not installed on the nodes), else nothing (a pickled function travels in the GCS)."""
    if spec.entrypoint.kind == "script" and spec.entrypoint.script:
        import os

        return os.path.dirname(os.path.abspath(spec.entrypoint.script))
    return str(configured) if configured else None


def scaling(spec: JobSpec) -> dict[str, Any]:
    """``ScalingConfig`` keyword arguments: one Ray Train worker per rank.

    ``resources_per_node`` is split evenly between the node's ranks. ``num_nodes > 1`` spreads
    the workers: with one rank per node on distinct nodes (``STRICT_SPREAD``), with several per
    node as evenly as Ray can (``SPREAD``); a one-node job keeps its ranks on one node
    (``STRICT_PACK``), as ``num_nodes=1`` means locally.
    """
    nnodes, nproc, res = spec.num_nodes, spec.procs_per_node, spec.resources
    per_worker: dict[str, float] = {"CPU": float(res.cpu) / nproc if res.cpu else 1.0}
    gpu = int(res.gpu or 0)
    if gpu:
        per_worker["GPU"] = gpu / nproc
    if res.memory:
        per_worker["memory"] = float(int(res.memory) // nproc)
    if nnodes == 1:
        strategy = "STRICT_PACK"
    else:
        strategy = "STRICT_SPREAD" if nproc == 1 else "SPREAD"
    return {"num_workers": nnodes * nproc, "use_gpu": gpu > 0, "resources_per_worker": per_worker, "placement_strategy": strategy}


def describe_scaling(scale: Mapping[str, Any]) -> str:
    """'2 workers (CPU 1 each, on distinct nodes)' for messages."""
    n = scale["num_workers"]
    res = ", ".join(f"{k} {_num(v) if k != 'memory' else _mem(v)}" for k, v in scale["resources_per_worker"].items())
    where = {"STRICT_SPREAD": "on distinct nodes", "SPREAD": "spread over nodes", "STRICT_PACK": "on one node"}[scale["placement_strategy"]]
    return f"{n} worker{'s' if n != 1 else ''} ({res} each, {where})"


def _num(v: float) -> str:
    return f"{v:g}"


def _mem(v: float) -> str:
    from trainjob.resources import format_bytes

    return format_bytes(int(v))
