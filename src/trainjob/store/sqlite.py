"""The SQLite store: jobs, events and the metrics history, in ``$TRAINJOB_HOME/trainjob.db``.

Any process may open it (client, supervisors, CLI, dashboard). WAL mode lets readers run while a
supervisor writes; every write is one short transaction, so a writer that crashes mid-way leaves
the previous consistent state. The file is private to the user (0600). Locks, a full disk and a
corrupt file are handled by ``database.Database``; the rows' Python form is ``rows``.

``Store`` is the local backend's ``core.state.JobState``: the supervisor records a job's
lifecycle through that interface (``transition``, ``add_event``, ``record_error``,
``record_outcome``...), and the rest of the local backend reads and lists jobs here.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from trainjob import contract
from trainjob.store import history
from trainjob.store.database import LOCK_PATIENCE, Database
from trainjob.store.rows import BRIEF_COLUMNS, LISTING_ONLY, TERMINAL_VALUES, JobRow, ListingRow, brief_rows, decode, encode, job_filter
from trainjob.types import JobStatus


class Store:
    """Job state in ``$TRAINJOB_HOME/trainjob.db``. Safe to use from several threads and processes.

    Every method may block while another program holds the database's write lock (up to
    ``LOCK_PATIENCE``) and raises ``StoreError`` for a store that cannot be used (see ``Database``).
    """

    def __init__(self, path: str | os.PathLike | None = None, lock_patience: float = LOCK_PATIENCE) -> None:
        self.path = Path(path) if path is not None else contract.home() / "trainjob.db"
        self.db = Database(self.path, lock_patience)

    def close(self) -> None:
        self.db.close()

    # ---- jobs --------------------------------------------------------------------------
    def insert_job(self, row: JobRow) -> None:
        self.insert_jobs([row])

    def insert_jobs(self, rows: Iterable[JobRow]) -> None:
        """Insert rows in one transaction (all or none): imports, tests and benchmarks."""
        by_cols: dict[tuple[str, ...], list[list[Any]]] = {}
        for row in rows:
            values = encode({k: v for k, v in row.__dict__.items() if k not in LISTING_ONLY})
            by_cols.setdefault(tuple(values), []).append(list(values.values()))

        def run(c: sqlite3.Connection) -> None:
            for cols, batch in by_cols.items():
                c.executemany(f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})", batch)

        self.db.transaction(run, "insert job")

    def get_job(self, job_id: str) -> JobRow | None:
        r = self.db.call(lambda c: c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone(), "read job")
        return decode(r) if r else None

    def ended_progress(self, job_id: str) -> tuple[dict[str, Any] | None] | None:
        """``(progress,)`` of a job that has ended; None for one that has not (or no such job).

        A listing shows 50 or 100 jobs' progress: this reads one column, not the whole row."""
        marks = ", ".join("?" for _ in TERMINAL_VALUES)
        r = self.db.call(lambda c: c.execute(f"SELECT progress FROM jobs WHERE id = ? AND status IN ({marks})", (job_id, *TERMINAL_VALUES)).fetchone(), "read job")
        if r is None:
            return None
        return (json.loads(r[0]) if r[0] is not None else None,)

    def has_job(self, job_id: str) -> bool:
        return self.db.call(lambda c: c.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone(), "read job") is not None

    def list_jobs(
        self,
        statuses: Iterable[JobStatus] | None = None,
        *,
        labels: dict[str, str] | None = None,
        name: str | None = None,
        newest_first: bool = False,
        limit: int | None = None,
        offset: int = 0,
        brief: bool = False,
    ) -> list[JobRow] | list["ListingRow"]:
        """Jobs, filtered and ordered in SQL (by creation time, then id), ``offset`` skipped, at most ``limit``.

        ``labels``: jobs carrying every one of these labels; ``name``: a glob pattern
        (``sweep-*``) or an exact name. ``brief``: the rows of a listing (see ``BRIEF_COLUMNS``):
        ``spec`` left as text, no error, result, resources or progress.
        """
        where, args = job_filter(statuses, labels, name)
        order = "DESC" if newest_first else "ASC"
        q = f"SELECT {BRIEF_COLUMNS if brief else '*'} FROM jobs{where} ORDER BY created_at {order}, id {order}"
        if limit is not None or offset:
            q += " LIMIT ? OFFSET ?"
            args += [-1 if limit is None else max(0, int(limit)), max(0, int(offset))]
        if brief:
            # The parsed JSON values are shared between the rows of one listing: read them, don't change them.
            return self.db.call(lambda c: brief_rows(c, q, args), "list jobs")
        return [decode(r) for r in self.db.call(lambda c: c.execute(q, args).fetchall(), "list jobs")]

    def count_jobs(self, statuses: Iterable[JobStatus] | None = None, *, labels: dict[str, str] | None = None, name: str | None = None) -> int:
        """How many jobs ``list_jobs`` with these filters returns without a limit."""
        where, args = job_filter(statuses, labels, name)
        return self.db.call(lambda c: c.execute(f"SELECT COUNT(*) FROM jobs{where}", args).fetchone()[0], "count jobs")

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Set columns of a job (no status rules: use ``transition`` to change status)."""
        if not fields:
            return
        values = encode(fields)
        sets = ", ".join(f"{k} = ?" for k in values)
        self.db.call(lambda c: c.execute(f"UPDATE jobs SET {sets} WHERE id = ?", [*values.values(), job_id]), "update job")

    def transition(self, job_id: str, status: JobStatus, **fields: Any) -> bool:
        """Move a job to ``status`` unless it already ended. Returns False when it had ended.

        Terminal states are final: a late writer (a supervisor noticing an exit after a delete or
        a stop) cannot overwrite them. Timestamps follow the status.
        """
        status = JobStatus.parse(status)
        values = encode({"status": status.value, **fields})
        now = time.time()
        if status == JobStatus.RUNNING and "started_at" not in values:
            values["started_at"] = now
        if status.is_terminal and "finished_at" not in values:
            values["finished_at"] = now
        sets = ", ".join(f"{k} = ?" for k in values)
        marks = ", ".join("?" for _ in TERMINAL_VALUES)
        cur = self.db.call(
            lambda c: c.execute(f"UPDATE jobs SET {sets} WHERE id = ? AND status NOT IN ({marks})", [*values.values(), job_id, *TERMINAL_VALUES]),
            f"record status {status.value}",
        )
        return cur.rowcount == 1

    def record_outcome(self, job_id: str, status: JobStatus, message: str | None, error: Mapping[str, Any] | None, result: Mapping[str, Any]) -> bool:
        """The job's terminal status with its message, error and result; False if it had already ended (``JobState``)."""
        return self.transition(job_id, status, message=message, error=dict(error) if error else None, result=dict(result))

    def record_error(self, job_id: str, attempt: int, error: Mapping[str, Any]) -> bool:
        """Keep ``error`` as attempt ``attempt``'s first failure (``extra.attempt_errors``); False if it has one (``JobState``).

        One statement, so two writers cannot both be first.
        """
        path = f'$.attempt_errors."{int(attempt)}"'
        cur = self.db.call(
            lambda c: c.execute(
                "UPDATE jobs SET extra = json_set(COALESCE(extra, '{}'), ?, json(?)) WHERE id = ? AND json_extract(COALESCE(extra, '{}'), ?) IS NULL",
                (path, json.dumps(dict(error), default=str), job_id, path),
            ),
            "record error",
        )
        return cur.rowcount == 1

    def attempt_errors(self, job_id: str) -> dict[int, dict[str, Any]]:
        """Each failed attempt's first failure, by attempt (what ``record_error`` kept)."""
        job = self.get_job(job_id)
        found = (job.extra or {}).get("attempt_errors") or {} if job else {}
        return {int(k): v for k, v in sorted(found.items(), key=lambda kv: int(kv[0]))}

    def delete_job(self, job_id: str) -> bool:
        def run(c: sqlite3.Connection) -> int:
            c.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
            c.execute("DELETE FROM metric_chunks WHERE job_id = ?", (job_id,))
            return c.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount

        return self.db.transaction(run, "delete job") == 1

    def size(self) -> int:
        """Bytes the store takes on disk: the database and its write-ahead log (the reserve aside)."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(f"{self.path}{suffix}").st_size
            except FileNotFoundError:
                pass
        return total

    def compact(self) -> tuple[int, int]:
        """Give the pages of deleted rows back to the file system; the store's size before and after.

        A store made with incremental auto-vacuum (every store created since schema v6) frees them at
        once (``PRAGMA incremental_vacuum``); an older one is converted first by one ``VACUUM``
        (it rewrites the file: seconds for a large store, and other writers wait meanwhile). The
        write-ahead log is then checkpointed and truncated.
        """
        before = self.size()

        def run(c: sqlite3.Connection) -> None:
            if c.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
                c.execute("PRAGMA auto_vacuum = INCREMENTAL")
                c.execute("VACUUM")
            else:
                # executescript steps the pragma to its end; execute() would free one page per call
                c.executescript("PRAGMA incremental_vacuum;")
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

        self.db.call(run, "compact the store")
        return before, self.size()

    # ---- events ------------------------------------------------------------------------
    def add_event(self, job_id: str, reason: str, message: str, data: dict | None = None, at: float | None = None) -> None:
        row = (job_id, at or time.time(), reason, message, json.dumps(data or {}, default=str))
        self.db.call(lambda c: c.execute("INSERT INTO events (job_id, time, reason, message, data) VALUES (?, ?, ?, ?, ?)", row), f"add event {reason}")

    def events(self, job_id: str, after_id: int = 0) -> list[dict[str, Any]]:
        rows = self.db.call(
            lambda c: c.execute("SELECT id, time, reason, message, data FROM events WHERE job_id = ? AND id > ? ORDER BY id", (job_id, after_id)).fetchall(),
            "read events",
        )
        return [{**dict(r), "data": json.loads(r["data"] or "{}")} for r in rows]

    # ---- metrics history ---------------------------------------------------------------
    def add_metrics(self, job_id: str, attempt: int, entries: list[dict[str, Any]]) -> None:
        """Append logged entries (each a dict with at least ``step`` and ``time``) in one transaction."""
        self.add_reports(job_id, attempt, metrics=entries)

    def add_reports(
        self,
        job_id: str,
        attempt: int,
        metrics: Iterable[dict[str, Any]] = (),
        events: Iterable[dict[str, Any]] = (),
        progress: dict[str, Any] | None = None,
        progress_at: float | None = None,
    ) -> None:
        """What a job's ranks reported since the last look, in one transaction (one commit, not three):
        logged entries, events (dicts with ``reason``, ``message``, optional ``data`` and ``time``)
        and, if given, the newest progress. The local collector calls it a few times a second."""
        now = time.time()
        metric_rows = [e if "attempt" in e else {**e, "attempt": attempt} for e in metrics]
        event_rows = [(job_id, e.get("time") or now, e["reason"], e["message"], json.dumps(e.get("data") or {}, default=str)) for e in events]
        job_values = encode({"progress": progress, "progress_at": progress_at}) if progress is not None else None
        if not (metric_rows or event_rows or job_values):
            return

        def run(c: sqlite3.Connection) -> None:
            if metric_rows:
                history.append(c, job_id, metric_rows)
            if event_rows:
                c.executemany("INSERT INTO events (job_id, time, reason, message, data) VALUES (?, ?, ?, ?, ?)", event_rows)
            if job_values:
                c.execute("UPDATE jobs SET progress = ?, progress_at = ? WHERE id = ?", (job_values["progress"], job_values["progress_at"], job_id))

        self.db.transaction(run, "add reports")

    def append_metrics(self, job_id: str, attempt: int, entries: list[dict[str, Any]]) -> None:
        """Append logged entries of attempt ``attempt`` (``JobState``; the collector batches with ``add_reports``)."""
        self.add_reports(job_id, attempt, metrics=entries)

    def set_progress(self, job_id: str, progress: dict[str, Any], at: float | None = None) -> None:
        """Replace the job's latest progress (``JobState``)."""
        values = encode({"progress": progress, "progress_at": time.time() if at is None else at})
        self.db.call(lambda c: c.execute("UPDATE jobs SET progress = ?, progress_at = ? WHERE id = ?", (values["progress"], values["progress_at"], job_id)), "set progress")

    def metrics(self, job_id: str, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """The job's logged entries from position ``after`` on (0: the first), at most ``limit``, in order."""
        stop = None if limit is None else after + max(0, limit)
        return self.db.call(lambda c: history.read(c, job_id, after, stop), "read metrics")

    def metrics_count(self, job_id: str) -> int:
        return self.db.call(lambda c: history.count(c, job_id), "count metrics")

    def metrics_series(self, job_id: str, start: int = 0, stop: int | None = None, points: int = history.DEFAULT_POINTS) -> dict[str, Any]:
        """A chart's view of the history (``history.series``): at most about ``points`` points per series."""
        return self.db.call(lambda c: history.series(c, job_id, start, stop, points), "read metrics")
