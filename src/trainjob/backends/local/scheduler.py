"""The local scheduler: which job may use which CPUs, GPUs and memory of this machine, and when.

Every job's supervisor is its own process, so the books are kept where all of them can see them:
the ``leases`` table of the SQLite store, changed only in ``BEGIN IMMEDIATE`` transactions (one
writer at a time). A job that asks for resources enters the queue (a ``waiting`` lease); each
time any supervisor looks at the queue (when it enters it, when it releases, and when a waiting
one is woken), the waiting leases are granted **strictly in order of job creation** while they fit:
the first one that does not fit stops the walk, so small jobs never overtake (and starve) a large
one. Waiting jobs are ``Queued`` with their ``queue_position`` (1 = next) and a message saying
what they wait for.

A waiting supervisor does not poll the table: it sleeps (``watch.ChangeWatch``) until a pass that
changed the leases rings the queue (touches ``<home>/queue/changed``), a process holding a lease
exits (a pidfd: its lease is reclaimed), its own stop file appears, or ``RECHECK_INTERVAL``
passes (a missed ring, a home on a disk without inotify). Without inotify it looks every
``POLL_INTERVAL``.

What a job costs, per node, times ``num_nodes`` (local nodes share the machine):

- ``cpu``: whole cores (a fractional request is rounded up: a core is the unit of CPU affinity),
  pinned with ``sched_setaffinity``, and ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/
  ``OPENBLAS_NUM_THREADS`` set to the cores per rank (unless the job's ``env`` sets them);
- ``gpu``: that many of the GPUs present (``resources.detect_gpus``), given to the node's ranks in
  ``CUDA_VISIBLE_DEVICES``;
- ``memory``: bytes, reserved from the machine's total and enforced (see ``memlimit``).

A job that asks for nothing (no ``resources_per_node``) costs nothing and never waits: it is not
pinned and shares the machine like any other process (best effort, as a Kubernetes pod without
requests). Where the machine has GPUs, such a job sees none (``CUDA_VISIBLE_DEVICES=""``): GPUs
are only used by jobs that were given them, so two jobs never fight over one.

A lease is released by the supervisor on every way out (``Grant.release`` runs in a ``finally``),
removed by ``forget`` when a job is deleted, and reclaimed by any scheduler pass when its holder
(the supervisor: pid + start time) is dead; ranks such a supervisor left behind are ended first,
so a reclaimed lease never hands out CPUs or memory that are still in use.

What fits where, and the variables a job's ranks get for it, is decided by the pure functions of
``placement``; this module keeps the books they are applied to.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from trainjob.backends.local import memlimit, procs
from trainjob.backends.local.placement import Assignment, Machine, Request, assign, describe_free, free_resources, never_fits, placement_env
from trainjob.backends.local.watch import ChangeWatch
from trainjob.core.spec import JobSpec
from trainjob.errors import BackendError
from trainjob import contract
from trainjob.store.database import Database
from trainjob.types import JobStatus

POLL_INTERVAL = 0.25  # seconds between two looks at the queue while waiting, where inotify is not available
RECHECK_INTERVAL = 5.0  # seconds: the longest a waiting supervisor sleeps without an event
RING_DIR = "queue"  # under TRAINJOB_HOME: ``changed`` is touched after every pass that changed a lease
_WAITING, _HELD = "waiting", "held"


class SchedulingError(BackendError):
    """A job's resources can never be granted on this machine (or its lease vanished)."""


# ---- the shared books (SQLite) -------------------------------------------------------------
@dataclass
class _QueueState:
    assigned: Assignment | None
    position: int | None
    message: str | None


@dataclass
class _Dead:
    job_id: str
    assigned: dict[str, Any] | None
    orphans: list[Any]


class LeaseBook:
    """The ``leases`` table, over a connection of its own (transactions must not mix with the Store's).

    The connection is the store's ``Database``: a transaction that meets another program's write
    lock waits and retries (see ``trainjob.store.database``) instead of failing the job. Only this
    host's leases are looked at: with TRAINJOB_HOME on a shared disk, each host schedules its own
    CPUs and GPUs, and cannot check another host's lease holders.
    """

    def __init__(self, db_path: str | os.PathLike) -> None:
        self.db_path = Path(db_path)
        self.home = self.db_path.parent
        self.db = Database(self.db_path)
        self.host = procs.this_host()
        self.ring_dir = self.home / RING_DIR
        self.ring_dir.mkdir(mode=0o700, exist_ok=True)
        self.holders: list[int] = []  # pids holding a lease on this host, as of the last pass

    def ring(self) -> None:
        """Wake the waiting supervisors: the leases changed (one may now be granted, or may fit)."""
        try:
            (self.ring_dir / "changed").touch()
        except OSError:
            pass  # they look again within RECHECK_INTERVAL

    @property
    def conn(self) -> sqlite3.Connection:
        return self.db.conn

    def close(self) -> None:
        self.db.close()

    def _tx(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in one write transaction (re-run from the start if the transaction is retried)."""
        return self.db.transaction(lambda conn: fn(), "update resource leases")

    def enqueue(self, job_id: str, created: float, req: Request) -> None:
        me = os.getpid()
        self._tx(
            lambda: self.conn.execute(
                "INSERT OR REPLACE INTO leases (job_id, job_created, state, request, assigned, holder_pid, holder_start, holder_host, since) VALUES (?, ?, ?, ?, NULL, ?, ?, ?, ?)",
                (job_id, created, _WAITING, json.dumps(req.to_json()), me, procs.start_time(me), self.host, time.time()),
            )
        )

    def withdraw(self, job_id: str) -> dict[str, Any] | None:
        """Drop a job's lease (held or waiting); returns what it held. Grants the next jobs."""

        def run():
            row = self.conn.execute("SELECT assigned FROM leases WHERE job_id = ?", (job_id,)).fetchone()
            self.conn.execute("DELETE FROM leases WHERE job_id = ?", (job_id,))
            return json.loads(row["assigned"]) if row and row["assigned"] else None

        held = self._tx(run)
        self.advance(Machine.detect())
        self.ring()
        return held

    def set_cgroups(self, job_id: str, assignment: Assignment, cgroups: list[str]) -> None:
        data = {"nodes": assignment.to_json(), "cgroups": cgroups}
        self._tx(lambda: self.conn.execute("UPDATE leases SET assigned = ? WHERE job_id = ?", (json.dumps(data), job_id)))

    def advance(self, machine: Machine, job_id: str | None = None) -> _QueueState | None:
        """One scheduler pass: reclaim dead holders' leases, grant waiting ones in order, renumber the queue.

        Returns ``job_id``'s state afterwards (None if it has no lease).
        """
        dead: list[_Dead] = []
        changed: list[str] = []  # leases granted or removed by this pass

        def first_pass() -> _QueueState | None:
            dead.clear()  # a retried transaction starts over
            changed.clear()
            return self._pass(machine, job_id, dead, changed)

        state = self._tx(first_pass)
        for d in dead:  # outside the transaction: ending processes takes time
            if d.orphans:
                procs.kill_tree(d.orphans, grace=2.0)
            memlimit.remove_cgroups(list((d.assigned or {}).get("cgroups") or []))
        if any(d.orphans for d in dead):  # their leases can go now
            state = self._tx(lambda: self._pass(machine, job_id, [], changed))
        if changed:
            self.ring()
        return state

    def _pass(self, machine: Machine, job_id: str | None, dead: list[_Dead], changed: list[str]) -> _QueueState | None:
        rows = self.conn.execute(
            "SELECT * FROM leases WHERE holder_host IS NULL OR holder_host = ? ORDER BY job_created, job_id", (self.host,)
        ).fetchall()
        live = []
        for r in rows:
            if procs.is_alive(r["holder_pid"], r["holder_start"]):
                live.append(r)
                continue
            assigned = json.loads(r["assigned"]) if r["assigned"] else None
            orphans = _orphans(self.home, r["job_id"]) if r["state"] == _HELD else []
            dead.append(_Dead(r["job_id"], assigned, orphans))
            if orphans:
                live.append(r)  # still in use until they are ended
            else:
                self.conn.execute("DELETE FROM leases WHERE job_id = ?", (r["job_id"],))
                changed.append(r["job_id"])
        held = [_assignment_of(r) for r in live if r["state"] == _HELD]
        self.holders = [r["holder_pid"] for r in live if r["state"] == _HELD]
        waiting = [r for r in live if r["state"] == _WAITING]
        now = time.time()
        mine: _QueueState | None = None
        blocked_at = len(waiting)
        for i, r in enumerate(waiting):
            a = assign(_request_of(r), machine, held)
            if a is None:
                blocked_at = i
                break
            self.conn.execute("UPDATE leases SET state = ?, assigned = ?, since = ? WHERE job_id = ?", (_HELD, json.dumps({"nodes": a.to_json()}), now, r["job_id"]))
            held.append(a)
            changed.append(r["job_id"])
            if r["job_id"] == job_id:
                mine = _QueueState(a, None, None)
        free = free_resources(machine, held)
        for pos, r in enumerate(waiting[blocked_at:], start=1):
            req = _request_of(r)
            if pos == 1:
                msg = f"waiting for resources: needs {req.describe()}; free now: {describe_free(req, free, machine)}"
            else:
                msg = f"waiting for resources: {pos - 1} job{'s' if pos > 2 else ''} ahead in the queue (first come, first served)"
            # Only a change is written: every waiting supervisor runs this pass several times a second.
            self.conn.execute(
                "UPDATE jobs SET queue_position = ?, message = ? WHERE id = ? AND status IN (?, ?) AND (queue_position IS NOT ? OR message IS NOT ?)",
                (pos, msg, r["job_id"], JobStatus.CREATED.value, JobStatus.QUEUED.value, pos, msg),
            )
            if r["job_id"] == job_id:
                mine = _QueueState(None, pos, msg)
        if mine is None and job_id is not None:
            for r in live:
                if r["job_id"] == job_id and r["state"] == _HELD:
                    mine = _QueueState(_assignment_of(r), None, None)
        return mine

    def leases(self) -> list[dict[str, Any]]:
        """Every lease, in queue order (for inspection and tests)."""
        rows = self.db.call(lambda c: c.execute("SELECT * FROM leases ORDER BY job_created, job_id").fetchall(), "read resource leases")
        return [{**dict(r), "request": json.loads(r["request"]), "assigned": json.loads(r["assigned"]) if r["assigned"] else None} for r in rows]


def _request_of(row: sqlite3.Row) -> Request:
    return Request(**json.loads(row["request"]))


def _assignment_of(row: sqlite3.Row) -> Assignment:
    data = json.loads(row["assigned"]) if row["assigned"] else {"nodes": []}
    return Assignment.from_json(data.get("nodes") or [])


def _orphans(home: Path, job_id: str) -> list[Any]:
    """Live processes a job recorded (launchers and ranks, identity-checked) in its ``run/pids``."""
    return procs.recorded_processes(home / "jobs" / job_id / contract.RUN / contract.PIDS_DIR)


# ---- what the supervisor calls ---------------------------------------------------------------
def _no_errors() -> list[dict]:
    return []


@dataclass
class Grant:
    """A job's resources: the extra environment of its ranks, and how to give them back.

    ``release()`` is idempotent and must be called on every way out of the supervisor.
    ``limit_errors()`` returns, once each, error records for nodes that were ended for exceeding
    their memory limit (the shape of ``errors/rank-N.json``), for the root-cause analysis.
    """

    env: dict[str, str] = field(default_factory=dict)
    release: Callable[[], None] = lambda: None
    limit_errors: Callable[[], list[dict]] = _no_errors
    assignment: Assignment | None = None


def acquire(
    store: Any,
    job_id: str,
    spec: JobSpec,
    should_abort: Callable[[], bool],
    poll_interval: float = POLL_INTERVAL,
    wake_dirs: Iterable[Path] = (),
) -> Grant:
    """Wait until a job's resources are free, take them, and say how its ranks use them. Runs in the supervisor.

    While it waits the job is ``Queued`` with its position. Returns an empty Grant at once for a
    job that asks for nothing, and as soon as ``should_abort()`` is true (the job was stopped
    while queued). Raises SchedulingError if the request can never fit this machine.

    The wait sleeps until an event (see the module's docstring): ``should_abort`` is asked after
    each one, so what makes it true must change a file in ``wake_dirs`` (the supervisor's stop
    file is in its run folder) or it is seen within ``RECHECK_INTERVAL``; the job's
    ``active_deadline_seconds`` shortens the sleep so the deadline is seen when it passes.
    """
    req = Request.from_spec(spec)
    machine = Machine.detect()
    user_env = spec.env
    if req.is_empty:
        if machine.gpu_ids:
            store.add_event(job_id, "ResourcesAssigned", "no GPU requested, so the job sees none (CUDA_VISIBLE_DEVICES=''); ask for resources_per_node={'gpu': N}")
        return Grant(env=placement_env(req, None, machine, user_env))
    problem = never_fits(req, machine)
    if problem:
        raise SchedulingError(problem)
    job = store.get_job(job_id)
    created = job.created_at if job else time.time()
    limit_s = spec.limits.active_deadline_seconds
    deadline = created + float(limit_s) if limit_s else None
    book = LeaseBook(store.path)
    watch = ChangeWatch.start([book.ring_dir, *wake_dirs])  # before the first pass: no ring is missed
    t0 = time.monotonic()
    try:
        book.enqueue(job_id, created, req)
        queued = False
        while True:
            state = book.advance(machine, job_id)
            if state is None:
                raise SchedulingError("the job's resource lease was removed while it waited (was the job deleted?)")
            if state.assigned is not None:
                break
            if not queued:
                # Position and message are the pass's to write (it renumbers every waiting job): a
                # supervisor writing its own, older view could overwrite a newer one.
                store.add_event(job_id, "Queued", state.message or "waiting for resources", {"position": state.position, "request": req.to_json()})
                store.transition(job_id, JobStatus.QUEUED)
                queued = True
            if should_abort():
                book.withdraw(job_id)
                book.close()
                return Grant()
            if watch.fd is None:
                time.sleep(poll_interval)
            else:
                timeout = RECHECK_INTERVAL if deadline is None else min(RECHECK_INTERVAL, max(0.0, deadline - time.time()) + 0.01)
                watch.wait(book.holders, timeout)
        waited = time.monotonic() - t0
        limit = None
        if req.memory:
            limit = memlimit.setup(job_id, req.nodes, req.memory)
            book.set_cgroups(job_id, state.assigned, limit.cgroups)
            limit.start(lambda rec: store.add_event(job_id, "MemoryLimitExceeded", rec["message"], rec))
    except BaseException:
        try:
            book.withdraw(job_id)
        finally:
            book.close()
        raise
    finally:
        watch.close()
    assignment = state.assigned
    env = placement_env(req, assignment, machine, user_env, limit.cgroups if limit else None)
    granted = {"nodes": assignment.to_json(), "request": req.to_json(), "waited_seconds": round(waited, 3)}
    if limit is not None:
        granted["memory_enforcement"] = {"mode": limit.mode, "cgroups": limit.cgroups, "why": limit.why}
    store.update_job(job_id, resources=granted)
    store.add_event(job_id, "ResourcesAssigned", _describe_grant(req, assignment, limit, waited), granted)
    released = False

    def release() -> None:
        nonlocal released
        if released:
            return
        released = True
        try:
            if limit is not None:
                limit.close()
            book.withdraw(job_id)
        finally:
            book.close()

    return Grant(env=env, release=release, limit_errors=limit.new_violations if limit else _no_errors, assignment=assignment)


def _describe_grant(req: Request, a: Assignment, limit: memlimit.MemoryLimit | None, waited: float) -> str:
    parts = []
    if req.cpus:
        parts.append("CPUs " + "; ".join(_ranges(n.cpus) for n in a.nodes))
    if req.gpus:
        parts.append("GPUs " + "; ".join(",".join(n.gpus) for n in a.nodes))
    if limit is not None:
        parts.append(f"memory limit {limit.describe()}")
    text = ", ".join(parts)
    return text + (f" (after {waited:.1f}s in the queue)" if waited >= 0.5 else "")


def _ranges(ids: Iterable[int]) -> str:
    ids = sorted(ids)
    out, start = [], None
    for i, c in enumerate(ids):
        if start is None:
            start = c
        if i + 1 == len(ids) or ids[i + 1] != c + 1:
            out.append(f"{start}" if start == c else f"{start}-{c}")
            start = None
    return ",".join(out)


def forget(store: Any, job_id: str) -> None:
    """A deleted job's lease goes (its processes were ended by the caller); the next jobs may start."""
    book = LeaseBook(store.path)
    try:
        held = book.withdraw(job_id)
    finally:
        book.close()
    memlimit.remove_cgroups(list((held or {}).get("cgroups") or []))
