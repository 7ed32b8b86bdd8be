"""``Database``: one connection to ``trainjob.db`` that survives contention and faults.

Every writer of the file (the ``Store``, the local scheduler's lease book) goes through it, so
they all behave the same way:

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

Opening it creates the file (0600, WAL mode) and brings its schema up to date.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, TypeVar

from trainjob import filesystems
from trainjob.errors import StoreError
from trainjob.store.schema import MIGRATIONS, SCHEMA_VERSION

T = TypeVar("T")
log = logging.getLogger(__name__)

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
