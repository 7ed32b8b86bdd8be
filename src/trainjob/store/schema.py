"""The store's schema, versioned with SQLite's ``user_version``.

Each entry of ``MIGRATIONS`` takes the database from version ``i`` to ``i + 1``; a database made by
an older trainjob is upgraded in place when it is opened, and one made by a newer trainjob is
refused rather than misread. An entry is SQL (statements separated by ``;``) or, where data must
be reshaped, a function of the open connection; both run inside the migration's one transaction.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Callable, Union

from trainjob.store import history


def _metrics_into_chunks(conn: sqlite3.Connection) -> None:
    """5 -> 6: the metrics history moves from one row per entry to chunks of ``history.CHUNK``
    entries (``metric_chunks``): a read of 100,000 entries decodes 391 JSON arrays, not 100,000
    objects, and each full chunk carries the extremes of every series for downsampled views."""
    conn.execute(history.CREATE_TABLE)
    conn.execute(history.CREATE_INDEX)
    job, pending = None, []
    for job_id, attempt, data in conn.execute("SELECT job_id, attempt, data FROM metrics ORDER BY job_id, id"):
        if job_id != job:
            history.append(conn, job, pending)
            job, pending = job_id, []
        entry = json.loads(data)
        entry.setdefault("attempt", attempt)
        pending.append(entry)
    history.append(conn, job, pending)
    conn.execute("DROP TABLE metrics")


MIGRATIONS: list[Union[str, Callable[[sqlite3.Connection], None]]] = [
    # 0 -> 1
    """
    CREATE TABLE jobs (
        id               TEXT PRIMARY KEY,
        name             TEXT NOT NULL,
        backend          TEXT NOT NULL,
        status           TEXT NOT NULL,
        created_at       REAL NOT NULL,
        started_at       REAL,
        finished_at      REAL,
        attempt          INTEGER NOT NULL DEFAULT 0,
        num_nodes        INTEGER NOT NULL,
        procs_per_node   INTEGER NOT NULL,
        spec             TEXT NOT NULL,          -- JSON, secrets masked
        message          TEXT,
        error            TEXT,                   -- JSON
        result           TEXT,                   -- JSON
        progress         TEXT,                   -- JSON, the progress schema
        progress_at      REAL,
        supervisor_pid   INTEGER,
        supervisor_start REAL,                   -- process start time: pid identity
        steps            TEXT,                   -- JSON list of node states
        resources        TEXT,                   -- JSON, what the scheduler granted
        queue_position   INTEGER,
        extra            TEXT                    -- JSON, backend-specific (e.g. Ray job id)
    );
    CREATE INDEX jobs_status ON jobs(status);
    CREATE INDEX jobs_created ON jobs(created_at);
    CREATE TABLE events (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id  TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        time    REAL NOT NULL,
        reason  TEXT NOT NULL,
        message TEXT NOT NULL,
        data    TEXT
    );
    CREATE INDEX events_job ON events(job_id, id);
    CREATE TABLE metrics (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id  TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        attempt INTEGER NOT NULL,
        step    INTEGER,
        time    REAL NOT NULL,
        data    TEXT NOT NULL
    );
    CREATE INDEX metrics_job ON metrics(job_id, id);
    """,
    # 1 -> 2: the local scheduler's resource leases (backends/local/scheduler.py)
    """
    CREATE TABLE leases (
        job_id       TEXT PRIMARY KEY,
        job_created  REAL NOT NULL,          -- queue order: first created, first served
        state        TEXT NOT NULL,          -- 'waiting' or 'held'
        request      TEXT NOT NULL,          -- JSON: nodes, procs_per_node, cpus, memory, gpus (per node)
        assigned     TEXT,                   -- JSON: each node's CPU ids, GPU ids, memory, cgroups
        holder_pid   INTEGER NOT NULL,       -- the supervisor holding or waiting for it
        holder_start REAL,                   -- its start time: pid identity
        since        REAL NOT NULL
    );
    CREATE INDEX leases_order ON leases(state, job_created);
    """,
    # 2 -> 3: the host a supervisor (or a lease holder) runs on. With TRAINJOB_HOME on a shared
    # disk, a reader on another host cannot check a pid: it must leave that job alone.
    """
    ALTER TABLE jobs ADD COLUMN supervisor_host TEXT;
    ALTER TABLE leases ADD COLUMN holder_host TEXT
    """,
    # 3 -> 4: a job's name is its identifier (Kubeflow's model). Jobs stored before keep their id
    # as their name; a name they had apart from it is kept as the annotation 'trainjob/former-name'.
    # Labels and annotations (options=[Labels(...), Annotations(...)]) are JSON objects.
    """
    ALTER TABLE jobs ADD COLUMN labels TEXT;
    ALTER TABLE jobs ADD COLUMN annotations TEXT;
    UPDATE jobs SET annotations = json_object('trainjob/former-name', name), name = id WHERE name <> id
    """,
    # 4 -> 5: listings ordered and filtered in SQL (issue 17): (status, created_at, id) serves
    # `ls --status`, (created_at, id) the unfiltered newest-first and oldest-first pages.
    """
    DROP INDEX jobs_status;
    DROP INDEX jobs_created;
    CREATE INDEX jobs_status_created ON jobs(status, created_at, id);
    CREATE INDEX jobs_created_id ON jobs(created_at, id)
    """,
    # 5 -> 6: the metrics history in chunks (see _metrics_into_chunks)
    _metrics_into_chunks,
]

SCHEMA_VERSION = len(MIGRATIONS)
