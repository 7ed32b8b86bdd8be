"""One error tree for trainjob.

Every message says what was given, what is allowed and, where it helps, what to do. Errors
survive pickling (they cross process boundaries: job ranks, supervisors, Ray workers), so each
class keeps its constructor arguments in ``args`` order via ``__reduce__``.

They are also the built-in classes Kubeflow Trainer SDK callers catch, so code written for
``kubeflow.trainer`` handles them unchanged: ``ValidationError`` is a ``ValueError``;
``JobNotFoundError``, ``JobFailedError``, ``JobStateError`` and ``BackendError`` are
``RuntimeError``s (``JobNotFoundError`` stays a ``KeyError`` too); ``JobTimeoutError`` is a
``TimeoutError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class TrainJobError(Exception):
    """Base class of every error trainjob raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: which field, what was given, what would be right.

    The message shows the given value with secrets masked (``trainjob.masking``): validation
    errors end up in terminals, logs and bug reports.
    """

    field: str
    value: Any
    expected: str

    def __str__(self) -> str:
        from trainjob.masking import mask_field_value

        shown = mask_field_value(self.field, self.value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return f"{self.field}={shown}: {self.expected}"


class ValidationError(TrainJobError, ValueError):
    """A trainer spec or a call argument is invalid. Lists every problem found, not only the first."""

    def __init__(self, problems: list[Problem], subject: str = "TransformersTrainer") -> None:
        self.problems = list(problems)
        self.subject = subject
        lines = "\n".join(f"  - {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(f"invalid {subject} ({n} problem{'s' if n != 1 else ''}):\n{lines}")

    def __reduce__(self):
        return (type(self), (self.problems, self.subject))

    @property
    def fields(self) -> list[str]:
        return [p.field for p in self.problems]


class ResourcesUnavailableError(ValidationError):
    """A job asks for more than the target can ever provide (e.g. more CPUs than this machine has)."""


class SerializationError(ValidationError):
    """The training function (or its arguments) cannot be serialized to run in another process."""


class JobNotFoundError(TrainJobError, KeyError, RuntimeError):
    """No job with this name exists (it was never created, or was deleted).

    ``job_id`` is the name asked for (a job's name is its id).
    """

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(job_id)

    def __str__(self) -> str:
        return f"no job named {self.job_id!r}; list jobs with TrainerClient().list_jobs() or `trainjob ls`"

    def __reduce__(self):
        return (type(self), (self.job_id,))


class JobFailedError(TrainJobError, RuntimeError):
    """A job ended Failed (or Stopped while the caller waited for completion).

    ``error`` is the job's recorded error: the first failing rank, the exception type and message,
    and the tail of its traceback.
    """

    def __init__(self, job_id: str, status: str, error: dict[str, Any] | None) -> None:
        self.job_id = job_id
        self.status = status
        self.error = error or {}
        super().__init__(job_id, status, error)

    def __str__(self) -> str:
        e = self.error
        head = f"job {self.job_id} ended {self.status}"
        if not e:
            return head
        where = f" on rank {e['rank']}" if e.get("rank") is not None else ""
        msg = f"{head}{where}: {e.get('type', 'Error')}: {e.get('message', '')}"
        if e.get("hint"):
            msg += f"\n  hint: {e['hint']}"
        if e.get("traceback"):
            msg += "\n" + e["traceback"].rstrip()
        return msg

    def __reduce__(self):
        return (type(self), (self.job_id, self.status, self.error))


class JobTimeoutError(TrainJobError, TimeoutError):
    """Waiting for a job to reach a status took longer than the timeout given."""

    def __init__(self, job_id: str, wanted: list[str], last_status: str, timeout: float) -> None:
        self.job_id, self.wanted, self.last_status, self.timeout = job_id, wanted, last_status, timeout
        super().__init__(job_id, wanted, last_status, timeout)

    def __str__(self) -> str:
        return (
            f"job {self.job_id} did not reach {'/'.join(self.wanted)} within {self.timeout:g}s "
            f"(last status: {self.last_status})"
        )

    def __reduce__(self):
        return (type(self), (self.job_id, self.wanted, self.last_status, self.timeout))


class BackendError(TrainJobError, RuntimeError):
    """The backend could not do what was asked (cluster unreachable, missing optional dependency...)."""


class JobStateError(TrainJobError, RuntimeError):
    """The operation does not apply to the job in its current state (e.g. resuming a running job)."""


class StoreError(TrainJobError):
    """trainjob's job store (the local backend's SQLite file) cannot be used as it is.

    Raised instead of a raw ``sqlite3`` error: the file is corrupt or not a database, cannot be
    opened, stayed locked by another program too long, or its disk is full. The message names the
    file, says what is wrong and what to do (``trainjob doctor`` checks the whole home folder).
    """

    def __init__(self, path: str, problem: str, remedy: str) -> None:
        self.path, self.problem, self.remedy = str(path), problem, remedy
        super().__init__(self.path, problem, remedy)

    def __str__(self) -> str:
        return f"trainjob's job store {self.path} {self.problem}; {self.remedy}"

    def __reduce__(self):
        return (type(self), (self.path, self.problem, self.remedy))
