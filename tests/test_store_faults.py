"""The store under contention and faults, with real SQLite, real processes, real file systems.

- another program holds the write lock longer than SQLite's own wait: writes retry, a running job
  completes with its whole metrics history;
- a corrupt ``trainjob.db``: one clear error naming the file (CLI exit 2), ``trainjob doctor`` says why;
- a full disk (a small tmpfs as TRAINJOB_HOME, mounted here when root): the job fails with "no space
  left on <mount>", its error record, progress and history are kept;
- a supervisor recorded on another host (TRAINJOB_HOME on a shared disk) is never judged dead here.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import hazards
import jobs
from conftest import job_processes, wait_until
from test_cli import cli
from trainjob import CustomTrainer, JobStatus, TrainerClient, TransformersTrainer, contract
from trainjob.errors import JobFailedError, JobStateError, StoreError
from trainjob.store import JobRow, Store
from trainjob.store.database import RESERVE_BYTES

# Longer than the 30 s SQLite busy timeout trainjob used before writes retried: without the
# retries the supervisor's first write under the lock fails and the job with it.
LOCK_SECONDS = 35.0


def _store_with_job(db: Path, **kw) -> Store:
    store = Store(db, **kw)
    store.insert_job(JobRow(id="job1", name="job1", backend="local", status=JobStatus.RUNNING, created_at=time.time(), num_nodes=1, procs_per_node=1, spec={}))
    return store


# ---- a held write lock ---------------------------------------------------------------------
def test_a_write_waits_for_a_lock_and_gives_up_with_a_clear_error(tmp_path):
    db = tmp_path / "trainjob.db"
    store = _store_with_job(db, lock_patience=30.0)
    with hazards.write_lock(db, 4.0):
        t0 = time.monotonic()
        store.add_event("job1", "Probe", "written once the lock is released")
        waited = time.monotonic() - t0
    assert waited > 3.0  # it really waited for the other program
    assert [e["reason"] for e in store.events("job1")] == ["Probe"]

    store.db.lock_patience = 2.5
    with hazards.write_lock(db, 8.0):
        with pytest.raises(StoreError) as err:
            store.add_event("job1", "Probe", "never written")
    assert str(db) in str(err.value) and "locked by another process" in str(err.value)
    assert [e["reason"] for e in store.events("job1")] == ["Probe"]  # the failed write left nothing behind


@pytest.mark.slow
def test_a_job_completes_through_a_long_write_lock_and_loses_nothing(client, home):
    job_id = client.train(TransformersTrainer(func=jobs.slow_tiny, func_args={"max_steps": 100, "save_steps": None, "step_delay": 0.4}))
    wait_until(lambda: (client.get_job_progress(job_id) or {}).get("currentStep", 0) >= 5, timeout=180, what="step 5")
    with hazards.write_lock(home / "trainjob.db", LOCK_SECONDS):
        locked_at = time.time()
        time.sleep(LOCK_SECONDS / 2)
        # Readers are not blocked (WAL), and nobody judges the job dead while its supervisor waits.
        during = client.get_job(job_id)
        assert during.status == JobStatus.RUNNING, during.message
        stale = len(client.get_job_metrics(job_id))
    released_at = time.time()
    job = client.wait_for_job_completion(job_id, timeout=300)

    assert job.status == JobStatus.COMPLETE
    run_dir = job.job_dir / "run"
    history = client.get_job_metrics(job_id)
    assert len(history) == hazards.count_lines(run_dir / "metrics.jsonl")  # every entry the rank logged
    assert [m["step"] for m in history if "loss" in m] == list(range(5, 101, 5))
    logged_in_lock = [m for m in history if locked_at < m["time"] < released_at]
    assert logged_in_lock and stale < len(history)  # training went on under the lock; the history caught up
    reasons = [e.reason for e in client.get_job_events(job_id)]
    assert "TrainEnd" in reasons and reasons[-1] == "Completed"
    log = (job.job_dir / "supervisor.log").read_text()
    assert "is locked by another process" in log and "unlocked after" in log  # the retries really ran
    wait_until(lambda: not job_processes(job.job_dir), timeout=30, what="no process of the job left")


# ---- a corrupt store -------------------------------------------------------------------------
def _make_store_with_a_job(home: Path) -> Path:
    cli(home, "ls", check_rc=0)  # creates the store
    db = home / "trainjob.db"
    store = _store_with_job(db)
    for i in range(40):  # enough rows for several pages, so page damage hits a table
        store.add_event("job1", "Probe", f"{i} " + "x" * 200)
    store.close()
    return db


def test_garbage_store_gives_one_clear_error_and_doctor_says_why(home):
    db = _make_store_with_a_job(home)
    db.write_bytes(os.urandom(db.stat().st_size))

    ls = cli(home, "ls")
    assert ls.returncode == 2, ls.stderr
    lines = ls.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in ls.stderr
    assert str(db) in lines[0] and "not a SQLite database" in lines[0] and "trainjob doctor" in lines[0]

    with pytest.raises(StoreError) as err:
        TrainerClient()
    assert err.value.path == str(db)

    doctor = cli(home, "doctor", "-o", "json")
    assert doctor.returncode == 1
    store = next(f for f in json.loads(doctor.stdout) if f["check"] == "store")
    assert store["level"] == "fail" and str(db) in store["detail"] and "mv " in store["fix"]


def test_damaged_pages_are_reported_when_read_not_as_a_sqlite_traceback(home):
    db = _make_store_with_a_job(home)
    data = bytearray(db.read_bytes())
    page = 4096
    data[page:] = os.urandom(len(data) - page)  # the header page stays valid: opening works, reading does not
    db.write_bytes(bytes(data))

    ls = cli(home, "ls")
    assert ls.returncode == 2 and "Traceback" not in ls.stderr, ls.stderr
    assert str(db) in ls.stderr and ("corrupt" in ls.stderr or "cannot be used" in ls.stderr)
    doctor = cli(home, "doctor", "-o", "json")
    store = next(f for f in json.loads(doctor.stdout) if f["check"] == "store")
    assert doctor.returncode == 1 and store["level"] == "fail"


# ---- doctor --------------------------------------------------------------------------------
def test_doctor_reports_a_held_lock_and_leftover_processes(home):
    from trainjob.client import check_local_home

    Store(home / "trainjob.db").close()
    healthy = {f.check: f for f in check_local_home()}
    assert all(f.level.value == "ok" for f in healthy.values()), healthy
    assert set(healthy) == {"home", "filesystem", "disk", "store", "lock", "reserve", "processes"}

    with hazards.write_lock(home / "trainjob.db", 5.0) as locker:
        lock = {f.check: f for f in check_local_home()}["lock"]
    assert lock.level.value == "warn" and str(locker.pid) in lock.detail

    # A process recorded by a job that has no record (deleted, or its row lost) still runs.
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pids = home / "jobs" / "gone00000000" / "run" / "pids"
        pids.mkdir(parents=True)
        (pids / "rank-0.json").write_text(json.dumps({"pid": stray.pid, "start": psutil.Process(stray.pid).create_time()}))
        found = cli(home, "doctor")
        assert found.returncode == 1 and str(stray.pid) in found.stdout and "FAIL" in found.stdout
    finally:
        stray.kill()
        stray.wait()
    assert cli(home, "doctor").returncode == 0


# ---- network file systems and other hosts --------------------------------------------------
MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /mnt/shared rw,relatime shared:20 - nfs4 filer:/export rw,vers=4.2
41 40 0:36 / /mnt/shared/local\\040disk rw,relatime - ext4 /dev/sdb1 rw
"""


def test_network_file_systems_are_recognised_from_mountinfo():
    from trainjob.filesystems import filesystem_type, is_network_filesystem

    assert filesystem_type("/mnt/shared/me/.trainjob", MOUNTINFO) == "nfs4"
    assert filesystem_type("/mnt/shared/local disk/.trainjob", MOUNTINFO) == "ext4"  # a local disk mounted inside it
    assert filesystem_type("/mnt/sharedother", MOUNTINFO) == "ext4"  # a name prefix is not a path prefix
    assert is_network_filesystem("nfs4") and is_network_filesystem("fuse.sshfs") and not is_network_filesystem("ext4")
    assert not is_network_filesystem(filesystem_type(Path(__file__)))  # this checkout is on a local disk


@pytest.mark.slow
def test_a_supervisor_on_another_host_is_never_judged_dead_here(client, home):
    job_id = client.train(CustomTrainer(func=jobs.sleep_for, func_args={"seconds": 120}))
    wait_until(lambda: client.get_job(job_id).status == JobStatus.RUNNING, timeout=120, what="Running")
    store = client.backend.store
    row = store.get_job(job_id)
    assert row.supervisor_host == socket.gethostname()
    supervisor = psutil.Process(row.supervisor_pid)
    supervisor.kill()  # SIGKILL: it records nothing
    supervisor.wait(10)

    # As another host records it: its pid, dead *here*, says nothing about that host.
    store.update_job(job_id, supervisor_host="other-host.example")
    for _ in range(3):
        assert client.get_job(job_id).status == JobStatus.RUNNING
        assert [j.status for j in client.list_jobs()] == [JobStatus.RUNNING]
    with pytest.raises(JobStateError, match="other-host.example"):
        client.delete_job(job_id)

    # Recorded on this host, the same reader records it lost and ends its ranks.
    store.update_job(job_id, supervisor_host=socket.gethostname())
    job = client.get_job(job_id)
    assert job.status == JobStatus.FAILED and "died without recording an outcome" in job.message
    wait_until(lambda: not job_processes(job.job_dir), timeout=60, what="the job's processes to end")


# ---- a full disk -----------------------------------------------------------------------------
@pytest.fixture
def small_home(tmp_path, monkeypatch):
    """TRAINJOB_HOME on a 64 MiB tmpfs (root only), unmounted after the test with nothing left running."""
    reason = hazards.tmpfs_unavailable()
    if reason:
        pytest.skip(reason)
    h = tmp_path / "tjhome"
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(hazards.tmpfs(h, "64m"))
        except OSError as e:
            pytest.skip(str(e))
        monkeypatch.setenv("TRAINJOB_HOME", str(h))
        yield h
        client = TrainerClient()
        for job in client.list_jobs():
            if not job.status.is_terminal:
                client.delete_job(job.id)
        client.backend.store.close()


def test_store_on_a_full_disk_uses_its_reserve_then_names_the_disk(small_home):
    store = _store_with_job(small_home / "trainjob.db")
    reserve = small_home / "trainjob.db.reserve"
    assert reserve.exists()
    hazards.fill_disk(small_home, leave=0)
    for i in range(50):  # the reserve's space takes these writes; none is lost
        store.add_event("job1", "Probe", f"{i} " + "x" * 2000)
    assert len(store.events("job1")) == 50
    assert reserve.stat().st_blocks * 512 < RESERVE_BYTES  # used, and what was left set aside again
    written = 50
    with pytest.raises(StoreError) as err:
        for i in range(5000):
            store.add_event("job1", "Probe", "y" * 2000)
            written += 1
    assert f"no space left on {small_home}" in str(err.value)
    assert len(store.events("job1")) == written > 100  # every write that returned is there, and the reserve took many
    (small_home / "ballast").unlink()
    store.add_event("job1", "Probe", "room again")  # usable once space is back


@pytest.mark.slow
@pytest.mark.parametrize("leave", [384 * 1024, 0], ids=["checkpoint-does-not-fit", "completely-full"])
def test_a_job_on_a_full_disk_fails_with_no_space_and_keeps_its_records(small_home, leave):
    client = TrainerClient()
    job_id = client.train(TransformersTrainer(func=hazards.tiny_until_disk_full, func_args={"leave": leave}))
    with pytest.raises(JobFailedError):
        client.wait_for_job_completion(job_id, timeout=300)
    job = client.get_job(job_id)
    result = client.get_job_result(job_id)

    assert job.status == JobStatus.FAILED
    assert f"no space left on {small_home}" in job.message and "exit code" not in job.message
    assert result.error["rank"] == 0 and result.error["disk_full"]["path"] == str(small_home)
    assert "trainjob doctor" in result.error["hint"]
    run_dir = job.job_dir / "run"
    record = json.loads((run_dir / "errors" / "rank-0.json").read_text())  # written on the full disk
    assert "No space left on device" in record["message"]
    history = client.get_job_metrics(job_id)
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in history] == [m["step"] for m in logged]  # every entry the rank could write
    if leave:
        assert [m["step"] for m in history if "loss" in m] == [2, 4, 6, 8, 10]  # logged before and after the disk filled
    assert client.get_job_progress(job_id) == hazards.last_record(run_dir / contract.PROGRESS_FILE)  # the last progress written
    assert [e.reason for e in client.get_job_events(job_id)][-1] == "Failed"
    wait_until(lambda: not job_processes(job.job_dir), timeout=30, what="no process of the job left")
