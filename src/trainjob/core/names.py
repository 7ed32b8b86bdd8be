"""Job names, the same rule on every backend (a job's name is its identifier, as in Kubeflow)."""

from __future__ import annotations

import secrets
import string

from trainjob.errors import Problem

_ALPHA = string.ascii_lowercase
_ALNUM = string.ascii_lowercase + string.digits


def new_job_id() -> str:
    """12 characters, ``[a-z][a-z0-9]{11}``: valid as a Kubernetes name and a folder name."""
    return secrets.choice(_ALPHA) + "".join(secrets.choice(_ALNUM) for _ in range(11))


def name_in_use(name: str) -> Problem:
    """The problem of a ``Name`` another job of the backend already has."""
    return Problem("Name", name, "a name no other job has (names are unique, like Kubernetes names): choose another, or delete that job first")
