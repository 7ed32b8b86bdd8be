"""The SQLite store: jobs, events and the metrics history.

Any process may open it (client, supervisors, CLI, dashboard). WAL mode lets readers run while a
supervisor writes; every write is one short transaction, so a writer that crashes mid-way leaves
the previous consistent state. The file is private to the user (0600).

The store survives contention and faults (``Database``):

- **Locks**: a write that meets ``database is locked`` (another program holds a write
  transaction: a ``sqlite3`` shell, a backup) waits and retries with backoff for up to
  ``LOCK_PATIENCE`` seconds. A supervisor blocked this way keeps its job running: the ranks write
  to files, and progress and history catch up when the lock goes.
- **A full disk**: ``trainjob.db.reserve`` (``RESERVE_BYTES``, allocated next to the database
  while there is room) is deleted on the first ``database or disk is full``, the write is
  retried, and what it did not use is taken back at once (``Reserve.refill``): the writes of a
  failure path (the events, the final status) still fit, one after another.
- **Corruption**, an unreadable file, a lock that never goes, a disk that stays full: one
  ``StoreError`` naming the file and what to do, never a raw ``sqlite3`` exception.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import threading
import time
import warnings
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from trainjob import contract, filesystems
from trainjob.errors import StoreError
from trainjob.store import fastjson, history
from trainjob.store.schema import MIGRATIONS, SCHEMA_VERSION
from trainjob.types import JobStatus

T = TypeVar("T")
log = logging.getLogger(__name__)

_JSON_COLUMNS = ("spec", "error", "result", "progress", "steps", "resources", "extra", "labels", "annotations")
_TERMINAL_VALUES = tuple(s.value for s in JobStatus if s.is_terminal)
# What a listing reads: no error, result, resources or progress, and the spec only as text (the
# caller parses it if it is asked for).
_BRIEF_COLUMNS = (
    "id, name, backend, status, created_at, started_at, finished_at, attempt, num_nodes, procs_per_node, message, "
    "supervisor_pid, supervisor_start, supervisor_host, steps, queue_position, extra, labels, annotations, "
    "NULL AS spec, spec AS spec_text"
)
_BRIEF_JSON = ("steps", "extra", "labels", "annotations")
_STATUS_OF = {s.value: s for s in JobStatus}
_LISTING_ONLY = ("spec_text",)  # JobRow fields that are no columns

LOCK_PATIENCE = 600.0  # seconds a call keeps retrying a locked database before it gives up
BUSY_SLICE_MS = 2000  # SQLite's own wait per try (its busy handler); the retry loop spans the rest
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 2.0  # seconds between tries: doubling, with jitter
RESERVE_BYTES = 2 * 2**20
RESERVE_SUFFIX = ".reserve"
DOCTOR_HINT = "run `trainjob doctor` to check trainjob's home folder"

# SQLite's primary result codes (the low byte of an extended code).
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 10, 11, 13, 14, 26
_warned_network: set[str] = set()


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
    spec: dict[str, Any] | None  # None in a listing's row: see spec_text
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
    supervisor_host: str | None = None  # where the supervisor runs: only that host can tell if it died
    steps: list[dict[str, Any]] | None = None
    resources: dict[str, Any] | None = None
    queue_position: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] | None = None  # options=[Labels(...)]
    annotations: dict[str, str] | None = None  # options=[Annotations(...)]
    # A listing's row (``Store.list_jobs(brief=True)``): ``spec`` is None, its JSON text is here
    # (parsed only if someone asks).
    spec_text: str | None = field(default=None, repr=False)


class Database:
    """One connection to ``trainjob.db`` that retries locks, uses the space reserve, names its faults.

    Thread-safe (one lock around the connection). Used by :class:`Store` and by the local
    scheduler's lease book, so every writer of the file behaves the same way. Opening it creates
    the file (0600) and brings its schema up to date.
    """

    def __init__(self, path: str | os.PathLike, lock_patience: float = LOCK_PATIENCE) -> None:
        self.path = Path(path)
        self.lock_patience = lock_patience
        self.reserve = filesystems.Reserve(self.path.with_name(self.path.name + RESERVE_SUFFIX), RESERVE_BYTES)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise StoreError(self.path, f"cannot be created: its folder cannot be made ({e.strerror or e})", "set TRAINJOB_HOME to a folder you can write") from None
        _warn_if_network(self.path)
        self.call(lambda conn: None, "open")
        self.reserve.ensure()

    @property
    def conn(self) -> sqlite3.Connection:
        """The raw connection, for code that runs inside :meth:`call` or :meth:`transaction`."""
        assert self._conn is not None
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def call(self, fn: Callable[[sqlite3.Connection], T], what: str = "access") -> T:
        """Run ``fn(connection)``, retrying while the database is locked; the reserve covers one full disk.

        ``fn`` must be safe to run again after a failure (one statement, or one transaction that
        the failure rolled back). Raises ``StoreError`` for a database that stays locked longer
        than ``lock_patience``, a full disk with no reserve left, a corrupt or unreadable file.
        """
        started = time.monotonic()
        delay, waited_since, freed = BACKOFF_FIRST, None, False
        while True:
            with self._lock:
                try:
                    if self._conn is None:
                        self._conn = self._open()
                    out = fn(self._conn)
                    if freed:
                        kept = self.reserve.refill()  # what this write did not need stays set aside
                        log.debug("%s: written on a full disk; %d bytes set aside again", self.path, kept)
                    if waited_since is not None:
                        log.warning("%s: unlocked after %.1fs; %s went through", self.path, time.monotonic() - waited_since, what)
                    return out
                except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
                    self._abandon_transaction()
                    raise  # the caller's mistake (a duplicate id...), not the store's state
                except sqlite3.DatabaseError as e:
                    self._abandon_transaction()
                    code = _primary_code(e)
                    if code == _SQLITE_FULL and not freed and self.reserve.release():
                        freed = True
                        log.warning("%s: disk full (%s); released the space reserve and retrying %s", self.path, e, what)
                        continue
                    if code not in (_SQLITE_BUSY, _SQLITE_LOCKED):
                        raise self._explain(e, code) from None
                    busy = e
            now, deadline = time.monotonic(), started + self.lock_patience
            if waited_since is None:
                waited_since = now
                log.warning("%s is locked by another process (%s); retrying %s for up to %.0fs", self.path, busy, what, self.lock_patience)
            if now >= deadline:
                raise StoreError(
                    self.path,
                    f"stayed locked by another process for {self.lock_patience:.0f}s ({busy})",
                    "end the program holding a transaction open on it (`fuser` lists the processes that have it open), then retry",
                ) from None
            time.sleep(min(delay * random.uniform(0.5, 1.0), deadline - now))
            delay = min(delay * 2, BACKOFF_MAX)

    def transaction(self, fn: Callable[[sqlite3.Connection], T], what: str = "write") -> T:
        """Run ``fn`` inside ``BEGIN IMMEDIATE ... COMMIT`` (retried as a whole, see :meth:`call`)."""

        def run(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            out = fn(conn)
            conn.execute("COMMIT")
            return out

        return self.call(run, what)

    # ---- internals ---------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        existed = self.path.exists()
        old = os.umask(0o077)
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_SLICE_MS / 1000, isolation_level=None, check_same_thread=False)
        finally:
            os.umask(old)
        try:
            if not existed:
                os.chmod(self.path, 0o600)
                # Pages freed by prune go back to the file system on `PRAGMA incremental_vacuum`
                # (set before the first table; a store made earlier is converted by one VACUUM).
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_SLICE_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                self.path,
                f"has store schema v{version}, newer than this trainjob understands (v{SCHEMA_VERSION})",
                "upgrade trainjob, or point TRAINJOB_HOME elsewhere",
            )
        if version == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        # Re-read inside the write lock: another process may have migrated meanwhile.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for i in range(version, SCHEMA_VERSION):
            step = MIGRATIONS[i]
            if callable(step):
                step(conn)
                continue
            for stmt in filter(str.strip, step.split(";")):
                conn.execute(stmt)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")

    def _abandon_transaction(self) -> None:
        """Roll back what a failed call left open (SQLite may or may not have done it already)."""
        conn = self._conn
        if conn is None:
            return
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            # The connection is unusable (a file that turned out corrupt): open a new one next time.
            conn.close()
            self._conn = None

    def _explain(self, e: sqlite3.DatabaseError, code: int | None) -> StoreError:
        if code == _SQLITE_FULL or (code == _SQLITE_IOERR and _nearly_full(self.path)):
            usage = filesystems.disk_usage(self.path)
            where = usage.path if usage else str(self.path.parent)
            return StoreError(self.path, f"cannot be written: no space left on {where} ({e})", f"free space there; {DOCTOR_HINT}")
        if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            return StoreError(
                self.path,
                f"is corrupt or not a SQLite database ({e})",
                f"{DOCTOR_HINT}; to start over, move it aside (mv {self.path} {self.path}.corrupt): the job folders stay, their records are lost",
            )
        if code in (_SQLITE_CANTOPEN, _SQLITE_PERM, _SQLITE_READONLY):
            return StoreError(self.path, f"cannot be opened for writing ({e})", f"check that you own it and its folder and can write both (ls -l); {DOCTOR_HINT}")
        if code == _SQLITE_IOERR:
            return StoreError(self.path, f"cannot be read or written: disk I/O error ({e})", f"check the disk (dmesg) and {DOCTOR_HINT}")
        return StoreError(self.path, f"cannot be used ({type(e).__name__}: {e})", DOCTOR_HINT)


def _primary_code(e: sqlite3.Error) -> int | None:
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF
    text = str(e).lower()  # SQLite's own wording, for builds without error codes on exceptions
    for needle, c in (("locked", _SQLITE_BUSY), ("disk is full", _SQLITE_FULL), ("malformed", _SQLITE_CORRUPT), ("not a database", _SQLITE_NOTADB), ("unable to open", _SQLITE_CANTOPEN)):
        if needle in text:
            return c
    return None


def _nearly_full(path: Path) -> bool:
    usage = filesystems.disk_usage(path)
    return usage is not None and usage.nearly_full


def _warn_if_network(path: Path) -> None:
    """Say once per process that a store on a network file system is unsafe (SQLite WAL needs a local disk)."""
    key = str(path.parent)
    if key in _warned_network:
        return
    _warned_network.add(key)
    fstype = filesystems.filesystem_type(path.parent)
    if filesystems.is_network_filesystem(fstype):
        warnings.warn(network_warning(path, fstype), stacklevel=3)


def network_warning(path: Path, fstype: str | None) -> str:
    return (
        f"trainjob's job store {path} is on a network file system ({fstype}): SQLite's WAL mode needs a local disk "
        "(its locks and shared-memory index do not work across hosts), so the store can be corrupted and jobs misreported. "
        "Set TRAINJOB_HOME to a folder on a local disk; `trainjob doctor` checks it"
    )


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
            values = _encode({k: v for k, v in row.__dict__.items() if k not in _LISTING_ONLY})
            by_cols.setdefault(tuple(values), []).append(list(values.values()))

        def run(c: sqlite3.Connection) -> None:
            for cols, batch in by_cols.items():
                c.executemany(f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})", batch)

        self.db.transaction(run, "insert job")

    def get_job(self, job_id: str) -> JobRow | None:
        r = self.db.call(lambda c: c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone(), "read job")
        return _decode(r) if r else None

    def ended_progress(self, job_id: str) -> tuple[dict[str, Any] | None] | None:
        """``(progress,)`` of a job that has ended; None for one that has not (or no such job).

        A listing shows 50 or 100 jobs' progress: this reads one column, not the whole row."""
        marks = ", ".join("?" for _ in _TERMINAL_VALUES)
        r = self.db.call(lambda c: c.execute(f"SELECT progress FROM jobs WHERE id = ? AND status IN ({marks})", (job_id, *_TERMINAL_VALUES)).fetchone(), "read job")
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
        (``sweep-*``) or an exact name. ``brief``: the rows of a listing (see ``_BRIEF_COLUMNS``):
        ``spec`` left as text, no error, result, resources or progress.
        """
        where, args = _job_filter(statuses, labels, name)
        order = "DESC" if newest_first else "ASC"
        q = f"SELECT {_BRIEF_COLUMNS if brief else '*'} FROM jobs{where} ORDER BY created_at {order}, id {order}"
        if limit is not None or offset:
            q += " LIMIT ? OFFSET ?"
            args += [-1 if limit is None else max(0, int(limit)), max(0, int(offset))]
        if brief:
            # The parsed JSON values are shared between the rows of one listing: read them, don't change them.
            return self.db.call(lambda c: _brief_rows(c, q, args), "list jobs")
        return [_decode(r) for r in self.db.call(lambda c: c.execute(q, args).fetchall(), "list jobs")]

    def count_jobs(self, statuses: Iterable[JobStatus] | None = None, *, labels: dict[str, str] | None = None, name: str | None = None) -> int:
        """How many jobs ``list_jobs`` with these filters returns without a limit."""
        where, args = _job_filter(statuses, labels, name)
        return self.db.call(lambda c: c.execute(f"SELECT COUNT(*) FROM jobs{where}", args).fetchone()[0], "count jobs")

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Set columns of a job (no status rules: use ``transition`` to change status)."""
        if not fields:
            return
        values = _encode(fields)
        sets = ", ".join(f"{k} = ?" for k in values)
        self.db.call(lambda c: c.execute(f"UPDATE jobs SET {sets} WHERE id = ?", [*values.values(), job_id]), "update job")

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
        cur = self.db.call(
            lambda c: c.execute(f"UPDATE jobs SET {sets} WHERE id = ? AND status NOT IN ({marks})", [*values.values(), job_id, *_TERMINAL_VALUES]),
            f"record status {status.value}",
        )
        return cur.rowcount == 1

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
        job_values = _encode({"progress": progress, "progress_at": progress_at}) if progress is not None else None
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

    def metrics(self, job_id: str, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """The job's logged entries from position ``after`` on (0: the first), at most ``limit``, in order."""
        stop = None if limit is None else after + max(0, limit)
        return self.db.call(lambda c: history.read(c, job_id, after, stop), "read metrics")

    def metrics_count(self, job_id: str) -> int:
        return self.db.call(lambda c: history.count(c, job_id), "count metrics")

    def metrics_series(self, job_id: str, start: int = 0, stop: int | None = None, points: int = history.DEFAULT_POINTS) -> dict[str, Any]:
        """A chart's view of the history (``history.series``): at most about ``points`` points per series."""
        return self.db.call(lambda c: history.series(c, job_id, start, stop, points), "read metrics")


def _job_filter(statuses: Iterable[JobStatus] | None, labels: dict[str, str] | None, name: str | None) -> tuple[str, list[Any]]:
    clauses, args = [], []
    if statuses is not None:
        st = [JobStatus.parse(s).value for s in statuses]
        clauses.append(f"status IN ({', '.join('?' for _ in st)})")
        args += st
    for key, value in (labels or {}).items():
        clauses.append("json_extract(labels, ?) = ?")
        args += ['$."' + str(key).replace("\\", "\\\\").replace('"', '\\"') + '"', str(value)]
    if name is not None:
        clauses.append("name GLOB ?" if any(ch in name for ch in "*?[") else "name = ?")
        args.append(name)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def _encode(fields: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in fields.items():
        if k in _JSON_COLUMNS:
            v = None if v is None else json.dumps(v, default=str)
        elif isinstance(v, JobStatus):
            v = v.value
        out[k] = v
    return out


def _brief_rows(c: sqlite3.Connection, q: str, args: list[Any]) -> list["ListingRow"]:
    """A listing's rows, built for speed (10,000 in a few ms): plain tuples wrapped as they come,
    each JSON column parsed when first read, and each distinct text (steps, labels... repeat
    across jobs) parsed once per listing."""
    cur = c.cursor()
    cur.row_factory = None
    rows = cur.execute(q, args).fetchall()
    parsed: dict[str | None, Any] = {None: None}
    new = object.__new__
    out = []
    for values in rows:
        row = new(ListingRow)
        row._values, row._parsed = values, parsed
        out.append(row)
    return out


class ListingRow:
    """A ``JobRow`` as a listing reads it: the columns of ``_BRIEF_COLUMNS`` (the rest None), its
    JSON columns parsed on first read and the spec kept as text (``spec_text``). Read it, don't
    change it: parsed values are shared between the rows of one listing."""

    __slots__ = ("_values", "_parsed")
    _values: tuple[Any, ...]
    _parsed: dict[str | None, Any]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_listing_row, (self._values,))

    def __repr__(self) -> str:
        return f"ListingRow(id={self.id!r}, status={self.status.value!r})"


def _listing_row(values: tuple[Any, ...]) -> ListingRow:
    row = object.__new__(ListingRow)
    row._values, row._parsed = tuple(values), {None: None}
    return row


def _plain(i: int) -> property:
    return property(lambda row: row._values[i])


def _json(i: int) -> property:
    def get(row: ListingRow) -> Any:
        text = row._values[i]
        parsed = row._parsed
        if text not in parsed:
            parsed[text] = fastjson.loads(text)
        return parsed[text]

    return property(get)


_BRIEF_NAMES = [c.strip().rpartition(" AS ")[2] for c in _BRIEF_COLUMNS.split(",")]
for _i, _name in enumerate(_BRIEF_NAMES):
    if _name == "status":
        setattr(ListingRow, _name, property(lambda row, i=_i: _STATUS_OF[row._values[i]]))
    elif _name == "extra":
        setattr(ListingRow, _name, property(lambda row, get=_json(_i).fget: get(row) or {}))
    elif _name in _BRIEF_JSON:
        setattr(ListingRow, _name, _json(_i))
    else:
        setattr(ListingRow, _name, _plain(_i))
for _name in {f.name for f in dataclasses.fields(JobRow)} - set(_BRIEF_NAMES):
    setattr(ListingRow, _name, None)  # columns a listing does not read


def _decode(r: sqlite3.Row) -> JobRow:
    d = dict(r)
    for k in _JSON_COLUMNS:
        if d.get(k) is not None:
            d[k] = fastjson.loads(d[k])
    d["extra"] = d.get("extra") or {}
    d["status"] = JobStatus(d["status"])
    return JobRow(**d)
