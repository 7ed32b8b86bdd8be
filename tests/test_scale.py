"""Scale (issue 17): listings filtered, ordered and paged in the store; specs parsed only when
read; the metrics history read by position and downsampled keeping extremes; prune.

Rows go straight into the store (``Store.insert_jobs``, ``add_metrics``): no process is started
except where a test needs one. No timings here: they are in benchmarks/scale.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainjob import LocalBackendConfig, TrainerClient
from trainjob import series
from trainjob.errors import JobNotFoundError, ValidationError
from trainjob.store import JobRow, Store
from trainjob.store.schema import MIGRATIONS
from trainjob.types import JobStatus, TrainJob

T0 = 1_800_000_000.0
SPEC = {"trainer": "CustomTrainer", "entrypoint": "func", "func": "train:main", "env": {"HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyz"}, "resources": {"gpu": 0}, "initializers": []}


def _row(i: int, status: JobStatus = JobStatus.COMPLETE, **kw) -> JobRow:
    fields = dict(
        id=f"job-{i:04d}", name=f"job-{i:04d}", backend="local", status=status, created_at=T0 + i, num_nodes=1, procs_per_node=1,
        spec=SPEC, labels={"team": ("nlp", "cv")[i % 2]}, finished_at=T0 + i + 5 if status.is_terminal else None,
    )  # fmt: skip
    fields.update(kw)
    return JobRow(**fields)


@pytest.fixture
def stocked(home) -> TrainerClient:
    """30 ended jobs: job-0000..job-0029, every 3rd Failed, even ones team=nlp, odd ones team=cv."""
    store = Store(home / "trainjob.db")
    store.insert_jobs([_row(i, JobStatus.FAILED if i % 3 == 0 else JobStatus.COMPLETE) for i in range(30)])
    return TrainerClient(LocalBackendConfig(home=str(home)))


def names(jobs) -> list[str]:
    return [j.name for j in jobs]


def test_list_jobs_filters_orders_and_pages_in_the_store(stocked):
    c = stocked
    every = names(c.list_jobs())
    assert every == [f"job-{i:04d}" for i in range(30)]  # Kubeflow's default: all, oldest first
    assert names(c.list_jobs(limit=5)) == every[:5]
    assert names(c.list_jobs(limit=5, offset=27)) == every[27:]
    assert names(c.list_jobs(limit=3, newest_first=True)) == every[::-1][:3]
    assert names(c.list_jobs(offset=28)) == every[28:]
    assert c.list_jobs(limit=0) == []
    failed = names(c.list_jobs(status="Failed"))
    assert failed == [f"job-{i:04d}" for i in range(0, 30, 3)]
    assert names(c.list_jobs(status=["failed"], labels={"team": "nlp"}, limit=2, newest_first=True)) == ["job-0024", "job-0018"]
    assert names(c.list_jobs(name="job-001*")) == [f"job-{i:04d}" for i in range(10, 20)]
    assert names(c.list_jobs(name="job-0007")) == ["job-0007"]
    assert c.list_jobs(labels={"team": "nobody"}) == []
    assert c.list_jobs(runtime="no-such-runtime") == []
    assert c.count_jobs() == 30 and c.count_jobs(status="Failed", labels={"team": "cv"}) == 5
    with pytest.raises(ValidationError) as e:
        c.list_jobs(limit=-1, offset="x")
    assert {p.field for p in e.value.problems} == {"limit", "offset"}


def test_the_in_memory_paging_of_other_backends_agrees_with_the_store(stocked):
    """``Backend.query_jobs`` (what the Ray backend uses: filters and pages over ``list_jobs``)
    selects what the local store's SQL does."""
    from trainjob.backends.base import Backend, JobQuery

    local = stocked.backend
    for q in (
        JobQuery(), JobQuery(limit=4, offset=3), JobQuery(newest_first=True, limit=5), JobQuery(status={JobStatus.FAILED}, newest_first=True, offset=2),
        JobQuery(labels={"team": "cv"}, name="job-00[12]*"), JobQuery(name="job-0007"), JobQuery(runtime=local._runtime().name, limit=1),
    ):  # fmt: skip
        assert names(Backend.query_jobs(local, q)) == names(local.query_jobs(q)), q


def test_a_listing_parses_no_spec_until_one_is_read(stocked):
    jobs = stocked.list_jobs(limit=2)
    assert all("_spec" not in j.__dict__ for j in jobs)  # the spec is still text
    one = stocked.get_job(jobs[0].name)
    assert jobs[0].spec == one.spec and jobs[0].spec["env"]["HF_TOKEN"] == "******"  # masked when read
    assert "_spec" in jobs[0].__dict__ and "_spec" not in jobs[1].__dict__
    assert jobs[0] == one and jobs[0].job_dir == one.job_dir and jobs[0].steps == one.steps
    assert jobs[0].steps[0].status == JobStatus.FAILED
    # still a TrainJob everywhere: replaced, pickled (its spec parsed on the other side), as a dict
    again = pickle.loads(pickle.dumps(jobs[1]))
    assert again == jobs[1] and again.spec == one.spec and isinstance(again, TrainJob)
    changed = dataclasses.replace(jobs[1], message="x")
    assert changed.message == "x" and changed.spec == one.spec and dataclasses.asdict(changed)["spec"] == one.spec


def test_listing_records_a_lost_job_before_filtering(home):
    """A Running row whose supervisor is gone is listed Failed (reconciled first), never Running."""
    store = Store(home / "trainjob.db")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.insert_jobs([_row(0), _row(1, JobStatus.RUNNING, supervisor_pid=dead.pid, supervisor_start=1.0, created_at=T0 - 10_000)])
    c = TrainerClient(LocalBackendConfig(home=str(home)))
    assert c.list_jobs(status="Running") == []
    assert [j.status for j in c.list_jobs()] == [JobStatus.FAILED, JobStatus.COMPLETE]


def _entries(start: int, stop: int, attempt: int = 0) -> list[dict]:
    return [{"step": i + 1, "time": T0 + i, "loss": 1.0 / (i + 1), "attempt": attempt} for i in range(start, stop)]


def test_metrics_history_by_position(stocked, home):
    store = Store(home / "trainjob.db")
    job = "job-0001"
    expected = []
    for size in (1, 7, 300, 255, 2, 600):  # batches across chunk boundaries
        batch = _entries(len(expected), len(expected) + size)
        store.add_metrics(job, 0, batch)
        expected += batch
    c = stocked
    assert c.get_job_metrics(job) == expected
    assert c.count_job_metrics(job) == len(expected) == 1165
    for after, limit in ((0, 1), (255, 2), (256, 256), (1000, None), (1165, None), (2000, 5), (511, 600)):
        want = expected[after:] if limit is None else expected[after : after + limit]
        assert c.get_job_metrics(job, after=after, limit=limit) == want, (after, limit)
    assert list(c.iter_job_metrics(job, batch=100)) == expected
    assert list(c.iter_job_metrics(job, after=1100, batch=7)) == expected[1100:]
    assert c.get_job_metrics("job-0002") == [] and c.get_job_metrics("job-0002", after=3) == []
    with pytest.raises(JobNotFoundError):
        c.get_job_metrics("no-such-job", after=0)
    with pytest.raises(ValidationError):
        c.get_job_metrics(job, after=-1)
    # an entry without an attempt gets the batch's; a NaN stays (JSON's NaN, as before)
    store.add_metrics(job, 2, [{"step": 9999, "time": T0, "loss": float("nan")}])
    (last,) = c.get_job_metrics(job, after=1165)
    assert last["attempt"] == 2 and math.isnan(last["loss"])


def test_series_keeps_every_point_when_they_fit_and_the_extremes_when_not(stocked, home):
    store = Store(home / "trainjob.db")
    job = "job-0003"
    n = 70_000  # beyond 1,000 buckets x SUB entries: drawn from the chunks' summaries
    entries = []
    for i in range(n):
        attempt = 0 if i < 40_000 else 1
        e = {"step": i + 1 - (5000 if attempt else 0), "loss": math.sin(i / 500.0), "attempt": attempt}
        if i == 12_345:
            e["loss"] = 7.5  # a spike
        if i == 50_001:
            e["loss"] = -3.0  # a dip
        if i % 1000 == 999:
            e = {"step": e["step"], "eval_loss": 0.5 + (i == 60_999), "attempt": attempt}
        entries.append(e)
    store.add_metrics(job, 0, entries[:100])
    store.add_metrics(job, 0, entries[100:])
    c = stocked
    small = c.get_job_metrics_series(job, start=100, stop=1100, points=2000)
    assert not small["downsampled"] and len(small["series"]["loss"]) == 999  # one eval entry among them
    assert small["series"]["loss"][0] == [101, entries[100]["loss"], 0, 100]

    view = c.get_job_metrics_series(job)
    assert view["downsampled"] and view["count"] == n and (view["start"], view["stop"]) == (0, n)
    loss = view["series"]["loss"]
    assert 1000 <= len(loss) <= 2000
    values = [p[1] for p in loss]
    assert max(values) == 7.5 and min(values) == -3.0
    assert [p[3] for p in loss] == sorted(p[3] for p in loss)  # in order
    assert [12_345, 50_001] == [p[3] for p in loss if p[1] in (7.5, -3.0)]
    assert len(view["series"]["eval_loss"]) == 70 and max(p[1] for p in view["series"]["eval_loss"]) == 1.5
    assert view["restarts"] == [{"seq": 40_000, "step": 35_001, "attempt": 1}]

    # a zoomed range with unaligned edges: the raw edges and the summaries in between
    zoom = c.get_job_metrics_series(job, start=12_000, stop=80_000, points=200)
    assert zoom["stop"] == n and zoom["downsampled"] and len(zoom["series"]["loss"]) <= 200
    assert {7.5, -3.0} <= {p[1] for p in zoom["series"]["loss"]} and min(p[3] for p in zoom["series"]["loss"]) >= 12_000
    mid = c.get_job_metrics_series(job, start=12_300, stop=12_400, points=2000)
    assert [p[3] for p in mid["series"]["loss"]] == list(range(12_300, 12_400))  # detail: every point


def test_downsample_in_memory_matches_the_store(stocked, home):
    store = Store(home / "trainjob.db")
    entries = _entries(0, 5000)
    store.add_metrics("job-0004", 0, entries)
    stored = stocked.get_job_metrics_series("job-0004", points=500)
    in_memory = series.downsample(stocked.get_job_metrics("job-0004"), points=500)
    assert stored == in_memory and stored["downsampled"]
    assert len(stored["series"]["loss"]) <= 500 and stored["series"]["loss"][0][1] == 1.0


def test_a_store_of_schema_v4_is_migrated_with_its_history(tmp_path):
    path = tmp_path / "trainjob.db"
    conn = sqlite3.connect(path)
    conn.executescript(";".join(MIGRATIONS[:4]) + "; PRAGMA user_version = 4;")  # a store of an earlier trainjob
    conn.execute("INSERT INTO jobs (id, name, backend, status, created_at, num_nodes, procs_per_node, spec) VALUES ('old1', 'old1', 'local', 'Complete', 1.0, 1, 1, '{}')")
    rows = [("old1", i // 300, i, T0 + i, json.dumps({"step": i, "loss": 0.5})) for i in range(700)]
    conn.executemany("INSERT INTO metrics (job_id, attempt, step, time, data) VALUES (?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()
    store = Store(path)
    got = store.metrics("old1")
    assert [(m["step"], m["attempt"]) for m in got] == [(i, i // 300) for i in range(700)]
    assert store.metrics_count("old1") == 700 and store.metrics("old1", 650, 3)[0]["step"] == 650
    tables = {r[0] for r in store.db.call(lambda c: c.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall())}
    assert "metrics" not in tables and "metric_chunks" in tables
    assert store.delete_job("old1") and store.metrics_count("old1") == 0


def _with_folder(home: Path, name: str, size: int) -> Path:
    folder = home / "jobs" / name / "workdir"
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(os.urandom(size))
    return folder.parent


def test_prune_removes_old_ended_jobs_with_their_files_and_history_never_a_running_one(home):
    store = Store(home / "trainjob.db")
    now = time.time()
    day = 86400.0
    me = os.getpid()
    from trainjob.backends.local import procs

    rows = [
        _row(0, JobStatus.COMPLETE, created_at=now - 40 * day, finished_at=now - 39 * day),
        _row(1, JobStatus.FAILED, created_at=now - 35 * day, finished_at=now - 35 * day),
        _row(2, JobStatus.STOPPED, created_at=now - 31 * day, finished_at=now - 31 * day),
        _row(3, JobStatus.COMPLETE, created_at=now - 2 * day, finished_at=now - 2 * day),
        # Running for 50 days under a live supervisor (this process): never pruned
        _row(4, JobStatus.RUNNING, created_at=now - 50 * day, supervisor_pid=me, supervisor_start=procs.start_time(me), supervisor_host=procs.this_host()),
    ]
    store.insert_jobs(rows)
    for r in rows:
        _with_folder(home, r.id, 200_000)
        store.add_metrics(r.id, 0, _entries(0, 3000))
        store.add_event(r.id, "Created", "x")
    c = TrainerClient(LocalBackendConfig(home=str(home)))
    with pytest.raises(ValidationError):
        c.prune_jobs()  # neither an age nor a number to keep
    with pytest.raises(ValidationError):
        c.prune_jobs(keep_last=0, status="Running")

    plan = c.prune_jobs(older_than=30 * day, dry_run=True)
    assert plan.names == ["job-0002", "job-0001", "job-0000"] and plan.files_bytes >= 3 * 200_000 and plan.store_bytes is None
    assert c.count_jobs() == 5  # a dry run removes nothing

    kept_newest = c.prune_jobs(older_than=30 * day, keep_last=2)  # keeps job-0003 and job-0002
    assert kept_newest.names == ["job-0001", "job-0000"]
    before, after = kept_newest.store_bytes
    assert after < before and store.db.call(lambda c: c.execute("PRAGMA freelist_count").fetchone()[0]) == 0  # freed pages went back to the disk
    assert not (home / "jobs" / "job-0000").exists() and (home / "jobs" / "job-0002").exists()
    assert store.metrics_count("job-0000") == 0 and store.events("job-0000") == []
    assert names(c.list_jobs()) == ["job-0004", "job-0002", "job-0003"]

    everything = c.prune_jobs(keep_last=0)
    assert everything.names == ["job-0003", "job-0002"]
    assert names(c.list_jobs()) == ["job-0004"] and (home / "jobs" / "job-0004").exists() and store.metrics_count("job-0004") == 3000


def test_cli_ls_limits_filters_and_prune(home):
    store = Store(home / "trainjob.db")
    long_ago = time.time() - 100 * 86400
    store.insert_jobs([_row(i, JobStatus.FAILED if i % 3 == 0 else JobStatus.COMPLETE, created_at=long_ago + i, finished_at=long_ago + i + 1) for i in range(60)])
    store.add_metrics("job-0059", 0, _entries(0, 500))
    env = {**os.environ, "TRAINJOB_HOME": str(home), "COLUMNS": "200"}

    def cli(*args: str, rc: int = 0) -> subprocess.CompletedProcess:
        p = subprocess.run([sys.executable, "-m", "trainjob.cli.main", *args], env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert p.returncode == rc, (args, p.stdout, p.stderr)
        return p

    shown = cli("ls", "-q")
    assert shown.stdout.split() == [f"job-{i:04d}" for i in range(10, 60)]  # the newest 50, the newest last
    assert "10 older jobs not shown" in shown.stderr
    assert cli("ls", "-q", "--all").stdout.split() == [f"job-{i:04d}" for i in range(60)]
    assert cli("ls", "-q", "-n", "2", "--status", "failed").stdout.split() == ["job-0054", "job-0057"]
    assert cli("ls", "-q", "--name", "job-000*", "-l", "team=cv").stdout.split() == ["job-0001", "job-0003", "job-0005", "job-0007", "job-0009"]
    table = cli("ls", "-n", "3").stdout
    assert "job-0059" in table and "job-0056" not in table
    tail = json.loads(cli("metrics", "job-0059", "--tail", "3", "-o", "json").stdout)
    assert [e["step"] for e in tail] == [498, 499, 500]
    assert len(json.loads(cli("metrics", "job-0059", "-o", "json").stdout)) == 500

    assert "--older-than" in cli("prune", rc=2).stderr
    assert "older-than" in cli("prune", "--older-than", "soon", rc=2).stderr
    dry = cli("prune", "--older-than", "30d", "--keep-last", "50", "--dry-run")
    assert dry.stdout.split() == [f"job-{i:04d}" for i in range(9, -1, -1)] and "nothing removed" in dry.stderr
    assert "--yes" in cli("prune", "--older-than", "30d", "--keep-last", "50", rc=2).stderr  # stdin is no terminal
    failed = json.loads(cli("prune", "--older-than", "30d", "--keep-last", "18", "--status", "Failed", "--yes", "-o", "json").stdout)
    assert failed["pruned"] == ["job-0003", "job-0000"] and failed["store_bytes_after"] <= failed["store_bytes_before"]
    done = cli("prune", "--older-than", "30d", "--keep-last", "50", "--yes")
    assert done.stderr.startswith("removed 8 job(s)") and "store" in done.stderr
    assert len(cli("ls", "-q", "--all").stdout.split()) == 50
