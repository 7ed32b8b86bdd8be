"""Local resource scheduler. Placeholder until issue 4 lands."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Grant:
    env: dict[str, str] = field(default_factory=dict)
    release: Callable[[], None] = lambda: None


def acquire(store, job_id, spec, should_abort) -> Grant:
    return Grant()


def forget(store, job_id) -> None:
    pass
