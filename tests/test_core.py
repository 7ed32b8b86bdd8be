"""The backend-neutral lifecycle core (``trainjob.core``): pure decisions, no jobs started."""

from __future__ import annotations

import json
import os
from pathlib import Path

from trainjob.core.resume import carry_workdir, plan_resume
from trainjob.core.spec import Entrypoint, FrozenMap, JobSpec, Tracking


def _checkpoint(root: Path, step: int, complete: bool) -> Path:
    ckpt = root / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"weights %d" % step)
    if complete:
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return ckpt


def test_resume_links_only_complete_checkpoints(tmp_path):
    src, dst = tmp_path / "old" / "workdir", tmp_path / "new" / "workdir"
    out = src / "output"
    _checkpoint(out, 5, complete=True)
    _checkpoint(out, 10, complete=False)
    (out / "model.safetensors").write_bytes(b"final")
    (src / "data.txt").write_text("data")
    os.symlink("data.txt", src / "alias")

    plan = plan_resume(src)
    assert plan.links == (Path("output/checkpoint-5"),)
    assert set(plan.copies) == {Path("data.txt"), Path("output/model.safetensors"), Path("output/checkpoint-10/model.safetensors")}
    assert plan.symlinks == (Path("alias"),)

    carry_workdir(src, dst)
    same = lambda rel: (src / rel).stat().st_ino == (dst / rel).stat().st_ino  # noqa: E731
    assert same("output/checkpoint-5/model.safetensors") and same("output/checkpoint-5/trainer_state.json")
    assert not same("output/checkpoint-10/model.safetensors") and not same("output/model.safetensors")
    assert os.readlink(dst / "alias") == "data.txt"
    for rel in ("output/checkpoint-10/model.safetensors", "output/model.safetensors"):
        with open(dst / rel, "r+b") as f:  # the new job overwrites in place
            f.write(b"NEW")
    assert (out / "checkpoint-10" / "model.safetensors").read_bytes() == b"weights 10" and (out / "model.safetensors").read_bytes() == b"final"


def test_resume_of_a_job_without_a_workdir_carries_nothing(tmp_path):
    assert carry_workdir(tmp_path / "missing", tmp_path / "dst") == plan_resume(tmp_path / "missing")
    assert not (tmp_path / "dst").exists()


# ---- outcome, events, records, rank environment ---------------------------------------------
def test_outcome_reason_message_and_result():
    from trainjob.core.outcome import describe_error, failure_message, outcome_reason, result_record
    from trainjob.types import JobStatus

    boom = {"rank": 1, "type": "ValueError", "message": "boom"}
    assert outcome_reason(JobStatus.FAILED, {"type": "DeadlineExceeded"}) == "DeadlineExceeded"
    assert [outcome_reason(s, None) for s in (JobStatus.COMPLETE, JobStatus.FAILED, JobStatus.STOPPED)] == ["Completed", "Failed", "Stopped"]
    assert describe_error(boom, 0) == "attempt 0: rank 1: ValueError: boom"
    assert describe_error({"node": 1, "type": "NodeLost", "message": "gone"}) == "node-1: NodeLost: gone"
    assert failure_message(boom, 0) == "rank 1: ValueError: boom"
    assert failure_message(boom, 1).endswith("(the first failure; 1 restart used, see the events for each attempt)")
    result = result_record(
        metrics=[{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0, "eval_loss": 1.5}],
        custom_metrics=None,
        train_end={"global_step": 2},
        checkpoint="/c/checkpoint-2",
        checkpoints=("/c/checkpoint-2",),
        output_dir="/c",
        log_dir=None,
        best_checkpoint="/c/checkpoint-2",
    )
    assert result["metrics"]["loss"] == 1.0 and result["metrics"]["eval_loss"] == 1.5
    assert (result["global_step"], result["best_checkpoint"], result["checkpoints"]) == (2, "/c/checkpoint-2", ["/c/checkpoint-2"])


def test_after_a_failed_attempt_restart_until_max_restarts_then_report_the_first_failure():
    from trainjob.core.outcome import after_failure

    first, second = {"type": "ValueError", "message": "boom", "rank": 1}, {"type": "OSError", "message": "disk", "rank": 0}
    then = after_failure(0, 1, first, None)
    assert (then.restart, then.next_attempt, then.cause, then.message) == (True, 1, "rank 1: ValueError: boom", None)
    last = after_failure(1, 1, second, then.first_error)
    assert (last.restart, last.next_attempt, last.cause) == (False, None, "rank 0: OSError: disk")
    assert last.first_error == first and last.message.startswith("rank 1: ValueError: boom (the first failure; 1 restart used")
    assert after_failure(0, 0, first, None).message == "rank 1: ValueError: boom"  # no restarts: the failure alone


def test_stop_and_deadline_outcomes():
    from trainjob.core.outcome import deadline_passed, stop_reason, stopped_outcome
    from trainjob.types import JobStatus

    assert deadline_passed(30, created_at=100.0, now=130.0) and not deadline_passed(30, 100.0, 129.9) and not deadline_passed(None, 0.0, 1e9)
    reason = stop_reason(True, 30)
    status, message, error = stopped_outcome(reason, "at step 40; newest complete checkpoint: checkpoint-40", True)
    assert status == JobStatus.FAILED and message == "DeadlineExceeded: the job ran past active_deadline_seconds=30 at step 40; newest complete checkpoint: checkpoint-40"
    assert error == {"type": "DeadlineExceeded", "message": message, "rank": None, "traceback": ""}
    assert stopped_outcome(stop_reason(False, None, "by SIGTERM to the supervisor"), "before it started", False) == (
        JobStatus.STOPPED, "stopped by SIGTERM to the supervisor before it started", None)
    assert stopped_outcome(stop_reason(False, 30), "; no checkpoint was saved", False)[1] == "stopped on request; no checkpoint was saved"


def test_lifecycle_events_read_the_same_on_every_backend():
    from trainjob.core import events
    from trainjob.types import JobStatus

    local = events.started(1, 2, events.on_nodes(2), True, pids=[7, 8])
    assert (local.message, local.data) == ("attempt 1: 2 ranks on 2 nodes (resuming)", {"attempt": 1, "world_size": 2, "pids": [7, 8], "resume": True})
    assert events.started(0, 1, "as Ray Train workers", False).message == "attempt 0: 1 rank as Ray Train workers"
    again = events.restarting(1, 2, "rank 1: ValueError: boom", Path("/o/checkpoint-10"), 10)
    assert again.message == "restart 1/2 after rank 1: ValueError: boom; resuming from checkpoint-10" and again.data["step"] == 10
    assert events.restarting(1, 1, "x", None, None).message.endswith("; no complete checkpoint yet: from the start")
    record = events.attempt_failed({"rank": 0, "type": "E", "message": "m"}, 3).as_record(3, now=5.0)
    assert record == {"time": 5.0, "reason": "AttemptFailed", "message": "attempt 3: rank 0: E: m", "data": {"attempt": 3, "error": {"rank": 0, "type": "E", "message": "m"}}, "attempt": 3}
    assert events.ended(JobStatus.STOPPED, None, None) == events.LifecycleEvent("Stopped", "job stopped", {})


def test_error_record_masks_secrets_and_return_values_round_trip():
    import threading

    from trainjob.core.records import dump_return_value, error_record, load_return_value

    try:
        raise TypeError("Trainer.__init__() got an unexpected keyword argument 'evaluation_strategy' with token s3cr3t")
    except TypeError as e:
        rec = error_record(2, e, ["s3cr3t"], attempt=1)
    assert (rec["rank"], rec["type"], rec["attempt"]) == (2, "TypeError", 1)
    assert "s3cr3t" not in rec["message"] + rec["traceback"] and "eval_strategy" in rec["hint"]
    assert load_return_value(dump_return_value({"a": 1})) == {"a": 1}
    assert "lock" in load_return_value(dump_return_value(threading.Lock()))  # unpicklable: its repr
    assert load_return_value(dump_return_value("x" * 1000, max_bytes=100)) == repr("x" * 1000)
    assert load_return_value(None) is None


def test_rank_env_contract():
    from trainjob import contract
    from trainjob.core.rank_env import free_port, rank_env

    spec = JobSpec(trainer="TransformersTrainer", entrypoint=Entrypoint("func_ref", func="m:f"), tracking=Tracking(enabled=True, metrics_port=28080, custom_metrics=FrozenMap({"ppl": "perplexity"})))
    env = rank_env(spec, job_id="j", job_dir=Path("/h/jobs/j"), attempt=2, resume=True)
    assert env[contract.TRACKING] == "1" and env[contract.RESUME] == "1" and env[contract.ATTEMPT] == "2" and env[contract.METRICS_PORT] == "28080"
    assert json.loads(env[contract.CUSTOM_METRICS]) == {"ppl": "perplexity"} and contract.RUN_DIR not in env
    local = rank_env(JobSpec(trainer="CustomTrainer", entrypoint=Entrypoint("func_ref", func="m:f"), tracking=Tracking(metrics_port=0)), job_id="j", job_dir=Path("/j"), attempt=0, resume=False, run_dir=Path("/j/run"), metrics_host="127.0.0.1", submit_dir="")
    assert (local[contract.RUN_DIR], local[contract.TRACKING], local[contract.METRICS_PORT], local[contract.SUBMIT_DIR]) == ("/j/run", "0", "0", "")
    assert 0 < free_port() < 65536
