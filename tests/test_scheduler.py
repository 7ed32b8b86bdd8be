"""The local scheduler: queueing, FIFO order, release on every exit, lease recovery, CPU pinning,
memory limits, GPU assignment. Real supervisors, real SQLite, real processes; the only fake is the
GPU list, replaced at its detection boundary (``resources.detect_gpus``) or given through
``CUDA_VISIBLE_DEVICES`` (which that boundary honours): this machine has no GPU."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import psutil
import pytest

import jobs
from trainjob import CustomTrainer, JobFailedError, resources
from trainjob.backends.local import memlimit, procs, scheduler
from trainjob.backends.local.placement import Assignment, Machine, NodeAssignment, Request, assign, placement_env
from trainjob.backends.local.scheduler import LeaseBook, acquire
from trainjob.core.spec import JobSpec
from trainjob.runtime import affinity
from trainjob.store import JobRow, Store
from trainjob.types import JobStatus

NCPU = len(resources.local_cpu_ids())
MACHINE = Machine(cpu_ids=(0, 1, 2, 3), memory=16 * 2**30, gpu_ids=("0", "1", "2", "3"))


# ---- pure ----------------------------------------------------------------------------------
def test_assign_takes_lowest_free_ids_per_node():
    req = Request(nodes=2, procs_per_node=1, cpus=1, memory=2**30, gpus=1)
    a = assign(req, MACHINE, [])
    assert a == Assignment((NodeAssignment((0,), ("0",), 2**30), NodeAssignment((1,), ("1",), 2**30)))
    b = assign(Request(cpus=2, gpus=2), MACHINE, [a])
    assert b.nodes[0].cpus == (2, 3) and b.nodes[0].gpus == ("2", "3")
    assert assign(Request(cpus=1), MACHINE, [a, b]) is None  # CPUs all taken
    assert assign(Request(memory=15 * 2**30), MACHINE, [a]) is None  # 2 GiB of 16 held
    assert assign(Request(memory=14 * 2**30), MACHINE, [a]) is not None


def test_placement_env_gpus_threads_and_per_node_entries():
    req = Request(nodes=2, procs_per_node=2, cpus=2, gpus=2)
    a = assign(req, MACHINE, [])
    env = placement_env(req, a, MACHINE, user_env={"MKL_NUM_THREADS": "3"})
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert env["OMP_NUM_THREADS"] == "1" and "MKL_NUM_THREADS" not in env  # the user's own value is kept
    nodes = json.loads(env[affinity.PLACEMENT_ENV])["nodes"]
    assert nodes == [{"cpus": [0, 1], "gpus": ["0", "1"]}, {"cpus": [2, 3], "gpus": ["2", "3"]}]
    # Each rank picks its node's entry: node 1 sees only its own GPUs.
    assert affinity.node_placement({**env, "GROUP_RANK": "1"})["gpus"] == ["2", "3"]
    # No request on a machine with GPUs: the job sees none, and is not pinned.
    assert placement_env(Request(), None, MACHINE) == {"CUDA_VISIBLE_DEVICES": ""}
    # No GPUs on the machine: CUDA_VISIBLE_DEVICES is left alone.
    assert "CUDA_VISIBLE_DEVICES" not in placement_env(Request(cpus=1), assign(Request(cpus=1), MACHINE, []), Machine((0,), 2**30, ()))


# ---- the scheduler in this process, GPUs faked at the detection boundary -------------------
@pytest.fixture
def four_gpus(monkeypatch):
    monkeypatch.setattr(resources, "detect_gpus", lambda: ["0", "1", "2", "3"])


def _job(store: Store, job_id: str, gpus: int) -> JobSpec:
    spec = {"num_nodes": 1, "procs_per_node": 1, "resources": {"cpu": None, "memory": None, "gpu": gpus}, "env": {}}
    store.insert_job(JobRow(id=job_id, name=job_id, backend="local", status=JobStatus.CREATED, created_at=time.time(), num_nodes=1, procs_per_node=1, spec=spec))
    time.sleep(0.01)  # distinct creation times: the queue order
    return JobSpec.from_dict(spec)  # the stored form of an earlier release reads as a JobSpec


def _acquire_in_thread(store, job_id, spec, should_abort, wake_dirs=()):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("grant", acquire(store, job_id, spec, should_abort, poll_interval=0.05, wake_dirs=wake_dirs)), daemon=True)
    t.start()
    return t, out


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_gpus_are_assigned_in_order_and_freed(home, four_gpus):
    store = Store(home / "trainjob.db")
    never = threading.Event()
    g1 = acquire(store, "job1", _job(store, "job1", 2), never.is_set)
    g2 = acquire(store, "job2", _job(store, "job2", 1), never.is_set)
    assert (g1.env["CUDA_VISIBLE_DEVICES"], g2.env["CUDA_VISIBLE_DEVICES"]) == ("0,1", "2")
    t3, out3 = _acquire_in_thread(store, "job3", _job(store, "job3", 2), never.is_set)
    t4, out4 = _acquire_in_thread(store, "job4", _job(store, "job4", 1), never.is_set)
    # Both supervisors have marked their jobs Queued and the queue was renumbered, in either order.
    assert _wait(lambda: [(j.status, j.queue_position) for j in map(store.get_job, ("job3", "job4"))] == [(JobStatus.QUEUED, 1), (JobStatus.QUEUED, 2)])
    # GPU 3 is free, but job4 may not overtake job3 (first come, first served).
    j3, j4 = store.get_job("job3"), store.get_job("job4")
    assert (j3.status, j3.queue_position, j4.status) == (JobStatus.QUEUED, 1, JobStatus.QUEUED)
    assert "needs 2 GPUs" in j3.message and "1 of 4 GPUs" in j3.message
    assert "1 job ahead" in j4.message
    released = time.monotonic()
    g1.release()
    t3.join(5), t4.join(5)
    # The waiters slept until the release rang the queue (they look on their own only every RECHECK_INTERVAL).
    assert time.monotonic() - released < min(2.0, scheduler.RECHECK_INTERVAL)
    assert out3["grant"].env["CUDA_VISIBLE_DEVICES"] == "0,1" and out4["grant"].env["CUDA_VISIBLE_DEVICES"] == "3"
    for g in (g2, out3["grant"], out4["grant"]):
        g.release()
    g2.release()  # idempotent
    book = LeaseBook(store.path)
    assert book.leases() == []
    book.close()


def test_a_job_asking_for_no_gpu_sees_none(home, four_gpus):
    store = Store(home / "trainjob.db")
    grant = acquire(store, "job1", _job(store, "job1", 0), lambda: False)
    assert grant.env == {"CUDA_VISIBLE_DEVICES": ""}
    assert "sees none" in store.events("job1")[-1]["message"]


def test_abort_while_queued_returns_at_once_and_leaves_no_lease(home, four_gpus, tmp_path):
    store = Store(home / "trainjob.db")
    held = acquire(store, "job1", _job(store, "job1", 4), lambda: False)
    stop = tmp_path / "stop"  # as the supervisor's stop request: a file in a folder the wait watches
    t, out = _acquire_in_thread(store, "job2", _job(store, "job2", 1), stop.exists, wake_dirs=[tmp_path])
    assert _wait(lambda: store.get_job("job2").status == JobStatus.QUEUED)
    stop.touch()
    t.join(2)
    assert not t.is_alive() and out["grant"].env == {}
    book = LeaseBook(store.path)
    assert [lease["job_id"] for lease in book.leases()] == ["job1"]
    book.close()
    held.release()


def test_a_request_larger_than_the_machine_fails(home, four_gpus):
    from trainjob.backends.local.scheduler import SchedulingError

    store = Store(home / "trainjob.db")
    with pytest.raises(SchedulingError, match=r"5 GPUs \(this machine has 4\)"):
        acquire(store, "job1", _job(store, "job1", 5), lambda: False)


# ---- real jobs -----------------------------------------------------------------------------
def _started_at(client, job_id) -> float:
    (e,) = [e for e in client.get_job_events(job_id) if e.reason == "Started"]
    return e.time.timestamp()


def _hold_all_cpus(client, seconds: float) -> str:
    job = client.train(CustomTrainer(func=jobs.sleep_for, func_args={"seconds": seconds}, resources_per_node={"cpu": NCPU}))
    client.wait_for_job_status(job, {"Running"}, timeout=60, polling_interval=0.1)
    return job


def test_jobs_wait_in_fifo_order_while_cpus_are_taken(client):
    a = _hold_all_cpus(client, 3)
    b = client.train(CustomTrainer(func=jobs.placement_report, func_args={"seconds": 1.5}, resources_per_node={"cpu": NCPU}))
    c = client.train(CustomTrainer(func=jobs.placement_report, resources_per_node={"cpu": 1}))
    jb = client.wait_for_job_status(b, {"Queued"}, timeout=30, polling_interval=0.1)
    assert jb.queue_position == 1 and f"needs {NCPU} CPUs" in jb.message
    assert _wait(lambda: client.get_job(c).queue_position == 2)
    assert client.get_job(c).status == "Queued"
    for j in (a, b, c):
        client.wait_for_job_completion(j, timeout=90)
    finished_a = client.get_job(a).finished_at.timestamp()
    finished_b = client.get_job(b).finished_at.timestamp()
    assert _started_at(client, b) >= finished_a - 0.5  # b started once a released its CPUs
    assert _started_at(client, c) >= finished_b - 0.5  # c (small) did not overtake b (large)
    assigned = [e for e in client.get_job_events(b) if e.reason == "ResourcesAssigned"][0]
    assert "in the queue" in assigned.message and assigned.data["waited_seconds"] > 0.5
    assert client.get_job(b).queue_position is None


def test_a_job_without_requests_is_not_blocked(client):
    a = _hold_all_cpus(client, 60)
    free = client.train(CustomTrainer(func=jobs.placement_report))
    client.wait_for_job_completion(free, timeout=60)
    report = client.get_job_result(free).return_value
    assert report["affinity"] == resources.local_cpu_ids()  # not pinned: best effort
    assert report["env"]["TRAINJOB_PLACEMENT"] is None
    assert client.get_job(a).status == "Running"
    client.delete_job(a)


def test_cpus_are_pinned_and_threads_set(client):
    job = client.train(CustomTrainer(func=jobs.placement_report, resources_per_node={"cpu": "500m"}))
    client.wait_for_job_completion(job, timeout=60)
    report = client.get_job_result(job).return_value
    assert len(report["affinity"]) == 1
    assert report["env"]["OMP_NUM_THREADS"] == "1" and report["env"]["MKL_NUM_THREADS"] == "1"
    granted = client.get_job(job).spec  # the spec is unchanged...
    assert granted["resources"]["cpu"] == 0.5
    mine = [e for e in client.get_job_events(job) if e.reason == "ResourcesAssigned"][0]
    assert mine.data["nodes"][0]["cpus"] == report["affinity"]  # ...the grant is recorded
    # The job's own thread count wins over the scheduler's.
    job = client.train(CustomTrainer(func=jobs.placement_report, resources_per_node={"cpu": 1}, env={"OMP_NUM_THREADS": "7"}))
    client.wait_for_job_completion(job, timeout=60)
    assert client.get_job_result(job).return_value["env"]["OMP_NUM_THREADS"] == "7"


def test_resources_are_released_after_a_failure(client):
    a = client.train(CustomTrainer(func=jobs.fail_on_rank, func_args={"rank": 0}, resources_per_node={"cpu": NCPU}))
    b = client.train(CustomTrainer(func=jobs.quick_value, resources_per_node={"cpu": NCPU}))
    with pytest.raises(JobFailedError):
        client.wait_for_job_completion(a, timeout=60)
    assert client.wait_for_job_completion(b, timeout=60).status == "Complete"


def test_resources_are_released_after_delete(client, home):
    a = _hold_all_cpus(client, 600)
    b = client.train(CustomTrainer(func=jobs.quick_value, resources_per_node={"cpu": NCPU}))
    client.wait_for_job_status(b, {"Queued"}, timeout=30, polling_interval=0.1)
    client.delete_job(a)
    assert client.wait_for_job_completion(b, timeout=60).status == "Complete"
    book = LeaseBook(home / "trainjob.db")
    assert book.leases() == []
    book.close()


def test_stop_while_queued(client):
    a = _hold_all_cpus(client, 600)
    b = client.train(CustomTrainer(func=jobs.quick_value, resources_per_node={"cpu": 1}))
    client.wait_for_job_status(b, {"Queued"}, timeout=30, polling_interval=0.1)
    client.stop_job(b)
    jb = client.wait_for_job_status(b, {"Stopped"}, timeout=10, polling_interval=0.1)
    assert "before it started" in jb.message
    client.delete_job(a)


def test_a_dead_supervisors_lease_is_reclaimed(client, home):
    a = _hold_all_cpus(client, 600)
    b = client.train(CustomTrainer(func=jobs.quick_value, resources_per_node={"cpu": NCPU}))
    client.wait_for_job_status(b, {"Queued"}, timeout=30, polling_interval=0.1)
    row = Store(home / "trainjob.db").get_job(a)
    rank = [p for p in psutil.Process(row.supervisor_pid).children(recursive=True)]
    assert rank
    os.kill(row.supervisor_pid, signal.SIGKILL)  # the supervisor dies; its rank lives on as an orphan
    assert client.wait_for_job_completion(b, timeout=60).status == "Complete"
    # The orphan was ended before its CPUs went to b.
    assert not any(procs.is_alive(p.pid, p.create_time()) for p in rank)
    assert client.get_job(a).status == "Failed"


@pytest.mark.parametrize("mode", ["auto", "watchdog"])
def test_memory_limit_cannot_be_exceeded_silently(client, monkeypatch, mode):
    monkeypatch.setenv(memlimit.MODE_ENV, mode)  # the supervisor reads it
    job = client.train(CustomTrainer(func=jobs.allocate_mb, func_args={"mb": 1536, "hold": 5}, resources_per_node={"memory": "400Mi"}))
    with pytest.raises(JobFailedError) as info:
        client.wait_for_job_completion(job, timeout=90)
    assert "MemoryLimitExceeded" in str(info.value) and "400.0Mi" in str(info.value)
    j = client.get_job(job)
    assert "exceeded its memory limit" in j.message
    assert any(e.reason == "MemoryLimitExceeded" for e in client.get_job_events(job))
    enforced = [e for e in client.get_job_events(job) if e.reason == "ResourcesAssigned"][0].data["memory_enforcement"]
    if mode == "watchdog":
        assert enforced["mode"] == "watchdog"
    # Within the limit the same job runs to the end (in the node's cgroup where there is one).
    ok = client.train(CustomTrainer(func=jobs.placement_report, resources_per_node={"memory": "400Mi"}))
    client.wait_for_job_completion(ok, timeout=60)
    report = client.get_job_result(ok).return_value
    if enforced["mode"].startswith("cgroup"):
        assert f"/trainjob/{ok}/node-0" in report["cgroup"]
        assert not os.path.exists(enforced["cgroups"][0])  # removed with the job's lease


@pytest.fixture
def visible_gpus(monkeypatch):
    """Four GPUs, as a user with CUDA_VISIBLE_DEVICES=0,1,2,3 would give them (detect_gpus honours it)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    resources.local_capacity.cache_clear()
    yield
    monkeypatch.undo()
    resources.local_capacity.cache_clear()


def test_gpus_reach_each_node_of_a_job(client, visible_gpus):
    job = client.train(CustomTrainer(func=jobs.placement_report, num_nodes=2, num_procs_per_node=1, resources_per_node={"gpu": 1}))
    client.wait_for_job_completion(job, timeout=120)
    rank0 = client.get_job_result(job).return_value
    assert rank0["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    logs = "\n".join(client.get_job_logs(job, step="rank-1"))
    assert "CUDA_VISIBLE_DEVICES=1" in logs
    other = client.train(CustomTrainer(func=jobs.placement_report))
    client.wait_for_job_completion(other, timeout=60)
    assert client.get_job_result(other).return_value["env"]["CUDA_VISIBLE_DEVICES"] == ""
