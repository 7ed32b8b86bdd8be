"""The rank -> supervisor file channel: ``FileSink`` appends, the ``Collector`` stores what is new.

Real components: the sink, the collector and a SQLite store in a temporary folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from trainjob import contract
from trainjob.backends.local import collector as collector_mod
from trainjob.backends.local.collector import Collector
from trainjob.runtime import sinks
from trainjob.runtime.sinks import FileSink
from trainjob.store import Store
from trainjob.store.sqlite import JobRow
from trainjob.types import JobStatus


@pytest.fixture
def setup(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / contract.ERRORS_DIR).mkdir(parents=True)
    store = Store(tmp_path / "trainjob.db")
    store.insert_job(JobRow(id="j", name="j", backend="local", status=JobStatus.RUNNING, created_at=time.time(), num_nodes=1, procs_per_node=1, spec={}))
    col = Collector(store, "j", run_dir)
    yield FileSink(run_dir), col, store, run_dir
    col.close()
    store.close()


def test_progress_metrics_and_events_reach_the_store_once(setup):
    sink, col, store, _ = setup
    col.collect(0)
    assert store.get_job("j").progress is None  # nothing written yet
    sink.event({"time": 1.0, "reason": "TrainBegin", "message": "starts", "data": {"step": 0}, "attempt": 0})
    for step in (1, 2, 3):
        sink.progress({"currentStep": step})
    sink.metrics([{"step": 1, "time": 2.0, "loss": 3.0}, {"step": 2, "time": 3.0, "loss": 2.5}])
    col.collect(0)
    assert store.get_job("j").progress == {"currentStep": 3} and col.progress == {"currentStep": 3}
    col.collect(0)  # nothing new: nothing added again
    sink.metric({"step": 3, "time": 4.0, "loss": float("nan")})
    col.collect(0)
    assert [m["loss"] for m in store.metrics("j")] == [3.0, 2.5, None]
    assert [e["reason"] for e in store.events("j")] == ["TrainBegin"] and col.last_event["TrainBegin"]["data"] == {"step": 0}


def test_a_partial_line_waits_for_its_end(setup):
    sink, col, store, run_dir = setup
    sink.progress({"currentStep": 1})
    with open(run_dir / contract.PROGRESS_FILE, "ab") as f:
        f.write(b'{"currentStep": 2')  # rank 0 is mid-write
    col.collect(0)
    assert store.get_job("j").progress == {"currentStep": 1}
    with open(run_dir / contract.PROGRESS_FILE, "ab") as f:
        f.write(b"}\n")
    col.collect(0)
    assert store.get_job("j").progress == {"currentStep": 2}


def test_progress_file_started_afresh_is_followed(setup, monkeypatch):
    """Rank 0 replaces a long progress file with one holding only the newest line. The new file
    may get the old one's inode number back (ext4 reuses it), so the collector cannot tell the
    files apart by inode alone; it must still store the newest progress, however many
    replacements happened between two passes."""
    sink, col, store, run_dir = setup
    monkeypatch.setattr(sinks, "PROGRESS_ROTATE_BYTES", 200)  # a new file every 4 lines or so
    step = 0
    for every in (1, 3, 10, 25, 2):  # passes after every N writes: from none to several replacements between passes
        for _ in range(30):
            step += 1
            sink.progress({"currentStep": step, "pad": "x" * 20})
            assert (run_dir / contract.PROGRESS_FILE).stat().st_size <= 200
            if step % every == 0:
                col.collect(0)
                assert store.get_job("j").progress["currentStep"] == step, (every, step)


def test_wait_wakes_on_a_write_and_on_a_process_exit(setup, monkeypatch):
    """With the idle interval set to an hour, ``wait`` returns only because of the event
    (if it did not, the test would hang until pytest's timeout fails it)."""
    sink, col, store, _ = setup
    monkeypatch.setattr(collector_mod, "IDLE_INTERVAL", 3600.0)
    col.wait()  # the first call returns at once and starts the watch
    writer = threading.Timer(0.3, lambda: sink.progress({"currentStep": 7}))
    writer.start()
    col.wait()
    writer.join()
    col.collect(0)
    assert store.get_job("j").progress == {"currentStep": 7}

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    try:
        t0 = time.monotonic()
        for _ in range(50):  # a write event still pending from above may wake it once first
            col.wait([proc])
            if proc.poll() is not None:
                break
        # woken by its exit (its pidfd), not by the hour's timeout
        assert proc.poll() == 0 and time.monotonic() - t0 < 60
    finally:
        proc.kill()
        proc.wait()


def test_an_exit_right_after_a_collection_is_not_held_back_by_the_interval(setup):
    """A rank writes its last lines and exits a moment later: the supervisor, just woken by the
    write, must see the exit when it happens, not ``interval`` later (the job's outcome, and an
    optimizer's next trial, wait for it)."""
    _, col, _, _ = setup
    col.wait()  # starts the watch; the next wait is rate-limited by the interval
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        proc_gone = time.monotonic()
        while True:  # the process has ended (not yet reaped: poll() would set returncode)
            try:
                if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    break
            except ChildProcessError:
                break
            time.sleep(0.005)
            assert time.monotonic() - proc_gone < 30
        t0 = time.monotonic()
        col.wait([proc], interval=30.0)
        assert time.monotonic() - t0 < 5.0  # not the 30-s interval
        assert proc.poll() == 0
    finally:
        proc.kill()
        proc.wait()
