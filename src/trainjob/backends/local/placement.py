"""Where a job's nodes go on this machine: what a job asks for (``Request``), what the machine has
(``Machine``), which CPUs, GPUs and memory a job gets when they are free (``assign``), why a
request can never fit, and the variables its ranks get for them (``placement_env``).

Pure: no store, no processes. ``scheduler`` keeps the shared books (who holds what, who waits)
and calls these to decide.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from trainjob import contract, resources
from trainjob.core.spec import JobSpec
from trainjob.resources import format_bytes

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class Request:
    """What a job asks of this machine, per node."""

    nodes: int = 1
    procs_per_node: int = 1
    cpus: int = 0  # whole cores
    memory: int = 0  # bytes
    gpus: int = 0

    @classmethod
    def from_spec(cls, spec: JobSpec) -> "Request":
        res = spec.resources
        return cls(
            nodes=spec.num_nodes,
            procs_per_node=spec.procs_per_node,
            cpus=int(math.ceil(float(res.cpu) - 1e-9)) if res.cpu else 0,
            memory=int(res.memory or 0),
            gpus=int(res.gpu or 0),
        )

    @property
    def is_empty(self) -> bool:
        return not (self.cpus or self.memory or self.gpus)

    def describe(self) -> str:
        parts = []
        if self.cpus:
            parts.append(f"{self.cpus} CPU{'s' if self.cpus != 1 else ''}")
        if self.memory:
            parts.append(f"{format_bytes(self.memory)} memory")
        if self.gpus:
            parts.append(f"{self.gpus} GPU{'s' if self.gpus != 1 else ''}")
        what = ", ".join(parts) or "nothing"
        return what + (f" per node x {self.nodes} nodes" if self.nodes > 1 else "")

    def to_json(self) -> dict[str, int]:
        return {"nodes": self.nodes, "procs_per_node": self.procs_per_node, "cpus": self.cpus, "memory": self.memory, "gpus": self.gpus}


@dataclass(frozen=True)
class Machine:
    """What the scheduler hands out: CPU ids, total memory, GPU ids (as CUDA_VISIBLE_DEVICES names them)."""

    cpu_ids: tuple[int, ...]
    memory: int
    gpu_ids: tuple[str, ...]

    @classmethod
    def detect(cls) -> "Machine":
        # Through the module, so that resources.detect_gpus stays the one detection boundary.
        return cls(tuple(resources.local_cpu_ids()), resources.local_capacity().memory, tuple(resources.detect_gpus()))


@dataclass(frozen=True)
class NodeAssignment:
    cpus: tuple[int, ...] = ()
    gpus: tuple[str, ...] = ()
    memory: int = 0


@dataclass(frozen=True)
class Assignment:
    """The concrete resources of every node of one job."""

    nodes: tuple[NodeAssignment, ...]

    def to_json(self) -> list[dict[str, Any]]:
        return [{"cpus": list(n.cpus), "gpus": list(n.gpus), "memory": n.memory} for n in self.nodes]

    @classmethod
    def from_json(cls, data: Iterable[Mapping[str, Any]]) -> "Assignment":
        return cls(tuple(NodeAssignment(tuple(n.get("cpus") or ()), tuple(str(g) for g in n.get("gpus") or ()), int(n.get("memory") or 0)) for n in data))

    @property
    def cpus(self) -> list[int]:
        return [c for n in self.nodes for c in n.cpus]

    @property
    def gpus(self) -> list[str]:
        return [g for n in self.nodes for g in n.gpus]

    @property
    def memory(self) -> int:
        return sum(n.memory for n in self.nodes)


@dataclass(frozen=True)
class Free:
    cpus: tuple[int, ...]
    gpus: tuple[str, ...]
    memory: int


def free_resources(machine: Machine, held: Iterable[Assignment]) -> Free:
    """What is left of ``machine`` once the ``held`` assignments are taken out."""
    held = list(held)
    used_cpus = {c for a in held for c in a.cpus}
    used_gpus = {g for a in held for g in a.gpus}
    return Free(
        tuple(c for c in machine.cpu_ids if c not in used_cpus),
        tuple(g for g in machine.gpu_ids if g not in used_gpus),
        machine.memory - sum(a.memory for a in held),
    )


def assign(req: Request, machine: Machine, held: Iterable[Assignment]) -> Assignment | None:
    """The resources ``req`` gets now, lowest ids first, or None if they are not all free."""
    free = free_resources(machine, held)
    if len(free.cpus) < req.cpus * req.nodes or len(free.gpus) < req.gpus * req.nodes or free.memory < req.memory * req.nodes:
        return None
    nodes = []
    for k in range(req.nodes):
        nodes.append(
            NodeAssignment(
                free.cpus[k * req.cpus : (k + 1) * req.cpus],
                free.gpus[k * req.gpus : (k + 1) * req.gpus],
                req.memory,
            )
        )
    return Assignment(tuple(nodes))


def never_fits(req: Request, machine: Machine) -> str | None:
    """Why ``req`` could not be granted even on an idle machine, or None."""
    problems = []
    if req.cpus * req.nodes > len(machine.cpu_ids):
        problems.append(f"{req.cpus * req.nodes} CPUs (this machine has {len(machine.cpu_ids)})")
    if req.gpus * req.nodes > len(machine.gpu_ids):
        problems.append(f"{req.gpus * req.nodes} GPUs (this machine has {len(machine.gpu_ids)})")
    if req.memory * req.nodes > machine.memory:
        problems.append(f"{format_bytes(req.memory * req.nodes)} memory (this machine has {format_bytes(machine.memory)})")
    if not problems:
        return None
    return f"resources_per_node asks for {req.describe()}: in all {' and '.join(problems)}; lower the request"


def describe_free(req: Request, free: Free, machine: Machine) -> str:
    parts = []
    if req.cpus:
        parts.append(f"{len(free.cpus)} of {len(machine.cpu_ids)} CPUs")
    if req.memory:
        parts.append(f"{format_bytes(max(free.memory, 0))} of {format_bytes(machine.memory)} memory")
    if req.gpus:
        parts.append(f"{len(free.gpus)} of {len(machine.gpu_ids)} GPUs")
    return ", ".join(parts)


def placement_env(req: Request, assignment: Assignment | None, machine: Machine, user_env: Mapping[str, str] | None = None, cgroups: list[str] | None = None) -> dict[str, str]:
    """The variables a job's ranks get for their resources. Pure.

    ``CUDA_VISIBLE_DEVICES`` lists the job's GPUs (empty where the machine has GPUs and the job
    asked for none); thread-count variables are the cores per rank unless ``user_env`` sets them;
    ``TRAINJOB_PLACEMENT`` carries each node's CPUs, GPUs and memory cgroup for
    ``trainjob.runtime.affinity`` to apply in every rank.
    """
    user_env = user_env or {}
    env: dict[str, str] = {}
    nodes = assignment.nodes if assignment is not None else ()
    if machine.gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(g for n in nodes for g in n.gpus) if req.gpus else ""
    if req.cpus:
        threads = str(max(1, req.cpus // max(1, req.procs_per_node)))
        env.update({v: threads for v in THREAD_VARS if v not in user_env})
    placement = []
    for k, n in enumerate(nodes):
        entry: dict[str, Any] = {}
        if req.cpus:
            entry["cpus"] = list(n.cpus)
        if machine.gpu_ids:
            entry["gpus"] = list(n.gpus)
        if cgroups and k < len(cgroups):
            entry["cgroup"] = cgroups[k]
        placement.append(entry)
    if any(placement):
        env[contract.PLACEMENT] = json.dumps({"nodes": placement}, separators=(",", ":"))
    return env
