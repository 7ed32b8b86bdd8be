"""Applying the resources the local scheduler gave a job, inside each rank.

Runs in the job's processes (called once by ``bootstrap`` before user code). The launcher passes
``TRAINJOB_PLACEMENT``, a JSON ``{"nodes": [{"cpus": [...], "gpus": [...], "cgroup": "..."}]}``
with one entry per node; this rank applies its node's entry:

- ``cgroup``: moves this process into the node's memory cgroup, first, so everything it
  allocates from here on (and every process it starts) counts against the node's limit;
- ``cpus``: pins this process (and the threads and processes it starts) to those CPUs;
- ``gpus``: sets ``CUDA_VISIBLE_DEVICES`` to the node's GPUs (several local nodes share one
  machine, so each node must see only its own before CUDA is initialised).

Nothing here imports torch. Without the variable it does nothing.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from trainjob import contract

PLACEMENT_ENV = contract.PLACEMENT


def node_placement(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """This rank's node entry of ``TRAINJOB_PLACEMENT``, or None when there is none."""
    environ = os.environ if environ is None else environ
    raw = environ.get(PLACEMENT_ENV)
    if not raw:
        return None
    nodes = json.loads(raw).get("nodes") or []
    node = int(environ.get("GROUP_RANK", environ.get("NODE_RANK", "0")) or 0)
    if node >= len(nodes):
        raise RuntimeError(f"{PLACEMENT_ENV} has {len(nodes)} node entries but this rank is on node {node}")
    return nodes[node]


def apply_placement() -> dict[str, Any] | None:
    """Apply this rank's share of the job's resources (see the module docstring). Returns what it applied.

    A failure to join the memory cgroup raises: running without the limit the user asked for
    would exceed it silently.
    """
    entry = node_placement()
    if not entry:
        return entry
    cgroup = entry.get("cgroup")
    if cgroup:
        try:
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        except OSError as e:
            raise RuntimeError(f"could not join the job's memory cgroup {cgroup} to enforce resources_per_node['memory']: {e}") from e
    cpus = entry.get("cpus")
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in cpus})
    if "gpus" in entry:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in entry["gpus"])
    return entry
