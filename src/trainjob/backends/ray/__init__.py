"""The Ray backend: jobs submitted through the Ray Jobs API, ranks run as Ray Train workers.

``RayBackend`` (client side) is imported on first use, so the modules that run inside the
cluster (``driver``, ``worker``) do not load the client's dependencies. See docs/ray.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RayBackend"]


def __getattr__(name: str) -> Any:
    if name == "RayBackend":
        from trainjob.backends.ray.backend import RayBackend

        return RayBackend
    raise AttributeError(f"module 'trainjob.backends.ray' has no attribute {name!r}")
