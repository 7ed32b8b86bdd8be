"""Resource requests: parsing Kubernetes-style quantities and knowing what this machine has.

Pure parsing lives here so every backend reads ``resources_per_node`` the same way.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache

from trainjob.errors import Problem

# Accepted keys, with the Kubernetes names they may be given as.
_KEY_ALIASES = {
    "cpu": "cpu",
    "cpus": "cpu",
    "memory": "memory",
    "mem": "memory",
    "gpu": "gpu",
    "gpus": "gpu",
    "nvidia.com/gpu": "gpu",
    "amd.com/gpu": "gpu",
}
ALLOWED_KEYS = ("cpu", "memory", "gpu", "nvidia.com/gpu")

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}
_DECIMAL = {"k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
_QTY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


@dataclass(frozen=True)
class Resources:
    """A parsed per-node request. ``None`` means "not asked for"."""

    cpu: float | None = None
    memory: int | None = None  # bytes
    gpu: int = 0

    def to_dict(self) -> dict:
        return {"cpu": self.cpu, "memory": self.memory, "gpu": self.gpu}


def parse_cpu(value: object) -> float:
    """``2``, ``1.5``, ``"500m"``, ``"2"`` -> cores. Raises ValueError with the accepted forms."""
    if isinstance(value, bool):
        raise ValueError("a number of cores (2, 0.5) or a millicore string ('500m'), not a bool")
    if isinstance(value, (int, float)):
        cores = float(value)
    elif isinstance(value, str):
        m = _QTY.match(value)
        if not m or m.group(2) not in ("", "m"):
            raise ValueError("a number of cores (2, 0.5) or a millicore string ('500m')")
        cores = float(m.group(1)) / (1000 if m.group(2) == "m" else 1)
    else:
        raise ValueError(f"a number of cores (2, 0.5) or a millicore string ('500m'), not {type(value).__name__}")
    if not math.isfinite(cores) or cores <= 0:
        raise ValueError("a positive number of cores")
    return cores


def parse_memory(value: object) -> int:
    """``"16Gi"``, ``"16G"``, ``"512Mi"``, ``17179869184`` -> bytes."""
    if isinstance(value, bool):
        raise ValueError("a quantity such as '16Gi', '16G', '512Mi' or a number of bytes, not a bool")
    if isinstance(value, (int, float)):
        n = float(value)
    elif isinstance(value, str):
        m = _QTY.match(value)
        unit = m.group(2) if m else None
        if not m or (unit and unit not in _BINARY and unit not in _DECIMAL):
            raise ValueError("a quantity such as '16Gi', '16G', '512Mi' or a number of bytes")
        n = float(m.group(1)) * (_BINARY.get(unit) or _DECIMAL.get(unit) or 1)
    else:
        raise ValueError(f"a quantity such as '16Gi' or a number of bytes, not {type(value).__name__}")
    if not math.isfinite(n) or n <= 0:
        raise ValueError("a positive amount of memory")
    return int(n)


def parse_gpu(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("a whole number of GPUs (0, 1, 8)")
    try:
        n = int(value)
    except ValueError:
        raise ValueError("a whole number of GPUs (0, 1, 8)") from None
    if n < 0:
        raise ValueError("a whole number of GPUs >= 0")
    return n


_PARSERS = {"cpu": parse_cpu, "memory": parse_memory, "gpu": parse_gpu}


def parse_resources(spec: object, field: str = "resources_per_node") -> tuple[Resources, list[Problem]]:
    """Parse a ``resources_per_node`` dict, collecting every problem instead of stopping at the first."""
    if spec is None:
        return Resources(), []
    if not isinstance(spec, dict):
        return Resources(), [Problem(field, spec, 'a dict such as {"cpu": 4, "memory": "16Gi", "gpu": 1}')]
    problems: list[Problem] = []
    parsed: dict[str, object] = {}
    for key, value in spec.items():
        canon = _KEY_ALIASES.get(key) if isinstance(key, str) else None
        if canon is None:
            close = _suggest(str(key))
            hint = f" (did you mean {close!r}?)" if close else ""
            problems.append(Problem(f"{field}[{key!r}]", value, f"unknown resource{hint}; allowed keys: {', '.join(ALLOWED_KEYS)}"))
            continue
        try:
            parsed[canon] = _PARSERS[canon](value)
        except ValueError as e:
            problems.append(Problem(f"{field}[{key!r}]", value, str(e)))
    return Resources(**parsed), problems  # type: ignore[arg-type]


def _suggest(key: str) -> str | None:
    import difflib

    match = difflib.get_close_matches(key.lower(), list(_KEY_ALIASES), n=1, cutoff=0.6)
    return match[0] if match else None


def format_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


@dataclass(frozen=True)
class MachineCapacity:
    cpus: int
    memory: int  # bytes
    gpus: tuple[str, ...]  # GPU indices as CUDA_VISIBLE_DEVICES would name them


@lru_cache(maxsize=1)
def local_capacity() -> MachineCapacity:
    """What this machine offers to jobs: the CPUs this process may use, total memory, visible GPUs."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return MachineCapacity(cpus=cpus, memory=_total_memory(), gpus=tuple(detect_gpus()))


def local_cpu_ids() -> list[int]:
    """The ids of the CPUs this process may run on (its affinity), sorted: what the scheduler hands out."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def _total_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def detect_gpus() -> list[str]:
    """GPU indices visible to this process, without importing torch.

    Honours ``CUDA_VISIBLE_DEVICES``; otherwise counts NVIDIA devices known to the kernel driver.
    This is the single detection boundary tests may replace.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    base = "/proc/driver/nvidia/gpus"
    try:
        n = len(os.listdir(base))
    except OSError:
        return []
    return [str(i) for i in range(n)]
