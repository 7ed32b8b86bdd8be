"""``core.state.JobState``: both backends' job state keep the lifecycle's rules (issue 12).

The same lifecycle (queued, running, a failed attempt, a restart, the outcome, late writers) is
written through ``core.state`` into a real SQLite ``Store`` here, and into a real Ray GCS by
``test_ray.py::test_ray_state_keeps_the_lifecycle_rules`` (``run_lifecycle`` is shared); each
reads back what its backend shows.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Callable

from trainjob.backends.ray.state import KV, RayState
from trainjob.core import state as job_state
from trainjob.core.state import JobState
from trainjob.store import JobRow, Store
from trainjob.types import JobStatus

ERROR = {"type": "ValueError", "message": "boom", "rank": 1, "traceback": ""}
LATER = {"type": "RuntimeError", "message": "peer lost", "rank": 0, "traceback": ""}
RESULT = {"metrics": {"loss": 0.25}, "checkpoint": None, "global_step": 3}


def run_lifecycle(state: JobState, job_id: str, outcome_of: Callable[[str], dict[str, Any]]) -> None:
    """Write one job's lifecycle through ``state`` and check what reads back.

    ``outcome_of(job_id)``: the backend's own reading of the recorded outcome (status, message,
    error, result), so the check covers what its clients see.
    """
    assert isinstance(state, JobState)
    assert state.transition(job_id, JobStatus.QUEUED, message="waiting for 1 GPU")
    assert state.transition(job_id, JobStatus.RUNNING, attempt=0)
    t0 = time.time()
    state.add_event(job_id, "Started", "attempt 0: 2 ranks on 1 node", {"attempt": 0}, at=t0)
    state.append_metrics(job_id, 0, [{"step": 1, "time": t0, "loss": 1.0}, {"step": 2, "time": t0 + 0.1, "loss": 0.5}])
    state.set_progress(job_id, {"currentStep": 2, "totalSteps": 3})

    # Two ranks fail in attempt 0: the first recorded is the attempt's failure, announced once.
    assert job_state.attempt_failed(state, job_id, 0, ERROR)
    assert not job_state.attempt_failed(state, job_id, 0, LATER)
    assert state.transition(job_id, JobStatus.RUNNING, attempt=1, message="attempt 1: restarted after rank 1: ValueError: boom")
    state.append_metrics(job_id, 1, [{"step": 3, "time": t0 + 0.2, "loss": 0.25}])
    assert job_state.attempt_failed(state, job_id, 1, LATER)  # another attempt has its own first failure

    assert job_state.finish(state, job_id, JobStatus.COMPLETE, None, None, RESULT)
    # A terminal status is final: a late outcome or transition changes nothing and adds no event.
    assert not job_state.finish(state, job_id, JobStatus.FAILED, "too late", LATER, {"metrics": {}})
    assert not state.transition(job_id, JobStatus.RUNNING, attempt=2)
    assert not state.record_outcome(job_id, JobStatus.STOPPED, "too late", None, {})

    events = state.events(job_id)
    assert [e["reason"] for e in events] == ["Started", "AttemptFailed", "AttemptFailed", "Completed"]
    assert events[0]["data"] == {"attempt": 0} and abs(events[0]["time"] - t0) < 1e-3
    assert events[1]["data"]["error"] == ERROR and events[1]["message"] == "attempt 0: rank 1: ValueError: boom"
    assert events[2]["data"]["error"] == LATER and events[3]["message"] == "job complete"
    metrics = state.metrics(job_id)
    assert [(m["step"], m["attempt"], m["loss"]) for m in metrics] == [(1, 0, 1.0), (2, 0, 0.5), (3, 1, 0.25)]
    outcome = outcome_of(job_id)
    assert outcome["status"] == JobStatus.COMPLETE and outcome["message"] is None and outcome["error"] is None
    assert outcome["result"] == RESULT


def test_store_keeps_the_lifecycle_rules(tmp_path):
    store = Store(tmp_path / "trainjob.db")
    store.insert_job(JobRow(id="j1", name="j1", backend="local", status=JobStatus.CREATED, created_at=time.time(), num_nodes=1, procs_per_node=2, spec={}))

    def outcome_of(job_id: str) -> dict[str, Any]:
        row = store.get_job(job_id)
        return {"status": row.status, "message": row.message, "error": row.error, "result": row.result}

    run_lifecycle(store, "j1", outcome_of)
    row = store.get_job("j1")
    assert row.progress == {"currentStep": 2, "totalSteps": 3} and row.progress_at is not None
    assert row.attempt == 1 and row.started_at and row.finished_at
    assert store.attempt_errors("j1") == {0: ERROR, 1: LATER}
    # A job that is gone takes no error (nothing to attach it to), and no event is announced.
    assert not job_state.attempt_failed(store, "gone", 0, ERROR) and store.events("gone") == []


def test_both_backends_implement_the_interface():
    """The Store and the Ray state have every ``JobState`` method, with the interface's parameters."""
    wanted = {n: inspect.signature(f) for n, f in vars(JobState).items() if inspect.isfunction(f) and not n.startswith("_")}
    assert set(wanted) == {"transition", "add_event", "set_progress", "append_metrics", "record_error", "record_outcome", "events", "metrics"}
    for cls in (Store, RayState):
        for name, sig in wanted.items():
            have = inspect.signature(getattr(cls, name))
            # The interface's parameters come first, in order (an implementation may add optional ones).
            assert list(have.parameters)[: len(sig.parameters)] == list(sig.parameters), f"{cls.__name__}.{name}{have} is not {name}{sig}"
            extra = list(have.parameters.values())[len(sig.parameters) :]
            assert all(p.default is not inspect.Parameter.empty for p in extra), f"{cls.__name__}.{name} adds required parameters"
    assert isinstance(RayState(KV(gcs=None)), JobState)  # no I/O until a method is called


def test_finish_refuses_a_status_that_is_no_outcome(tmp_path):
    store = Store(tmp_path / "trainjob.db")
    try:
        job_state.finish(store, "j1", JobStatus.RUNNING, None, None, {})
    except ValueError as e:
        assert "terminal" in str(e)
    else:
        raise AssertionError("finish() took a non-terminal status")
