"""Per-job package environments (``packages_to_install``). Placeholder until issue 4 lands."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PreparedEnv:
    python: str
    env: dict[str, str] = field(default_factory=dict)


def prepare_for_job(spec, store, job_id, job_dir) -> PreparedEnv | None:
    if not spec.get("packages_to_install"):
        return None
    raise NotImplementedError("packages_to_install is not supported yet")
