"""The SQLite store: jobs, events and the metrics history.

Any process may open it (client, supervisors, CLI, dashboard). WAL mode lets readers run while a
supervisor writes; every write is one short transaction, so a writer that crashes mid-way leaves
the previous consistent state. The file is private to the user (0600).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from trainjob import contract
from trainjob.store.schema import MIGRATIONS, SCHEMA_VERSION
from trainjob.types import JobStatus

_JSON_COLUMNS = ("spec", "error", "result", "progress", "steps", "resources", "extra")
_TERMINAL_VALUES = tuple(s.value for s in JobStatus if s.is_terminal)


@dataclass
class JobRow:
    """One row of ``jobs`` with its JSON columns decoded."""

    id: str
    name: str
    backend: str
    status: JobStatus
    created_at: float
    num_nodes: int
    procs_per_node: int
    spec: dict[str, Any]
    started_at: float | None = None
    finished_at: float | None = None
    attempt: int = 0
    message: str | None = None
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    progress_at: float | None = None
    supervisor_pid: int | None = None
    supervisor_start: float | None = None
    steps: list[dict[str, Any]] | None = None
    resources: dict[str, Any] | None = None
    queue_position: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Store:
    """Job state in ``$TRAINJOB_HOME/trainjob.db``. Safe to use from several threads and processes."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else contract.home() / "trainjob.db"
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.RLock()
        self._conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        existed = self.path.exists()
        old = os.umask(0o077)
        try:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        finally:
            os.umask(old)
        if not existed:
            os.chmod(self.path, 0o600)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA foreign_keys = ON")
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        self._migrate(conn)
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has store schema v{version}, newer than this trainjob understands "
                f"(v{SCHEMA_VERSION}); upgrade trainjob or point TRAINJOB_HOME elsewhere"
            )
        if version == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read inside the write lock: another process may have migrated meanwhile.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for i in range(version, SCHEMA_VERSION):
                for stmt in filter(str.strip, MIGRATIONS[i].split(";")):
                    conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ---- jobs --------------------------------------------------------------------------
    def insert_job(self, row: JobRow) -> None:
        values = _encode(row.__dict__)
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self._lock:
            self._conn.execute(f"INSERT INTO jobs ({cols}) VALUES ({marks})", list(values.values()))

    def get_job(self, job_id: str) -> JobRow | None:
        with self._lock:
            r = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _decode(r) if r else None

    def list_jobs(self, statuses: Iterable[JobStatus] | None = None) -> list[JobRow]:
        q, args = "SELECT * FROM jobs", []
        if statuses is not None:
            st = [JobStatus.parse(s).value for s in statuses]
            q += f" WHERE status IN ({', '.join('?' for _ in st)})"
            args = st
        with self._lock:
            rows = self._conn.execute(q + " ORDER BY created_at, id", args).fetchall()
        return [_decode(r) for r in rows]

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Set columns of a job (no status rules: use ``transition`` to change status)."""
        if not fields:
            return
        values = _encode(fields)
        sets = ", ".join(f"{k} = ?" for k in values)
        with self._lock:
            self._conn.execute(f"UPDATE jobs SET {sets} WHERE id = ?", [*values.values(), job_id])

    def transition(self, job_id: str, status: JobStatus, **fields: Any) -> bool:
        """Move a job to ``status`` unless it already ended. Returns False when it had ended.

        Terminal states are final: a late writer (a supervisor noticing an exit after a delete or
        a stop) cannot overwrite them. Timestamps follow the status.
        """
        status = JobStatus.parse(status)
        values = _encode({"status": status.value, **fields})
        now = time.time()
        if status == JobStatus.RUNNING and "started_at" not in values:
            values["started_at"] = now
        if status.is_terminal and "finished_at" not in values:
            values["finished_at"] = now
        sets = ", ".join(f"{k} = ?" for k in values)
        marks = ", ".join("?" for _ in _TERMINAL_VALUES)
        with self._lock:
            cur = self._conn.execute(
                f"UPDATE jobs SET {sets} WHERE id = ? AND status NOT IN ({marks})",
                [*values.values(), job_id, *_TERMINAL_VALUES],
            )
        return cur.rowcount == 1

    def delete_job(self, job_id: str) -> bool:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
                self._conn.execute("DELETE FROM metrics WHERE job_id = ?", (job_id,))
                n = self._conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return n == 1

    # ---- events ------------------------------------------------------------------------
    def add_event(self, job_id: str, reason: str, message: str, data: dict | None = None, at: float | None = None) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO events (job_id, time, reason, message, data) VALUES (?, ?, ?, ?, ?)",
                (job_id, at or time.time(), reason, message, json.dumps(data or {}, default=str)),
            )

    def events(self, job_id: str, after_id: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, time, reason, message, data FROM events WHERE job_id = ? AND id > ? ORDER BY id",
                (job_id, after_id),
            ).fetchall()
        return [{**dict(r), "data": json.loads(r["data"] or "{}")} for r in rows]

    # ---- metrics history ---------------------------------------------------------------
    def add_metrics(self, job_id: str, attempt: int, entries: list[dict[str, Any]]) -> None:
        """Append logged entries (each a dict with at least ``step`` and ``time``) in one transaction."""
        if not entries:
            return
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT INTO metrics (job_id, attempt, step, time, data) VALUES (?, ?, ?, ?, ?)",
                    [(job_id, attempt, e.get("step"), e.get("time") or time.time(), json.dumps(e, default=str)) for e in entries],
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def metrics(self, job_id: str, after_id: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, attempt, data FROM metrics WHERE job_id = ? AND id > ? ORDER BY id", (job_id, after_id)
            ).fetchall()
        out = []
        for r in rows:
            d = json.loads(r["data"])
            d.setdefault("attempt", r["attempt"])
            out.append(d)
        return out


def _encode(fields: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in fields.items():
        if k in _JSON_COLUMNS:
            v = None if v is None else json.dumps(v, default=str)
        elif isinstance(v, JobStatus):
            v = v.value
        out[k] = v
    return out


def _decode(r: sqlite3.Row) -> JobRow:
    d = dict(r)
    for k in _JSON_COLUMNS:
        if d.get(k) is not None:
            d[k] = json.loads(d[k])
    d["extra"] = d.get("extra") or {}
    d["status"] = JobStatus(d["status"])
    return JobRow(**d)
