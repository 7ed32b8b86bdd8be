"""Health checks of a local trainjob home: the folder, its disk, the store, leftover processes.

What ``trainjob doctor`` runs. It works where a client cannot start (a corrupt or locked store):
it opens the database with plain ``sqlite3``, never creates or changes anything, and says for each
problem what to do. Every check returns one :class:`Finding`; ``run_checks`` runs them all.
"""

from __future__ import annotations

import enum
import os
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from trainjob import contract, filesystems
from trainjob.backends.local import procs
from trainjob.resources import format_bytes
from trainjob.store.schema import SCHEMA_VERSION
from trainjob.store.database import RESERVE_BYTES, RESERVE_SUFFIX, network_warning
from trainjob.types import JobStatus

LOW_DISK_BYTES = 2**30  # below this much free space under the home, jobs that save checkpoints may not fit
DB_NAME = "trainjob.db"


class Level(str, enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    """The outcome of one check: what was looked at, how it is, and what to do when it is not ok."""

    check: str
    level: Level
    detail: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "level": self.level.value, "detail": self.detail, "fix": self.fix}


@dataclass(frozen=True)
class _Job:
    id: str
    status: JobStatus
    supervisor_pid: int | None
    supervisor_start: float | None
    supervisor_host: str | None


def run_checks(home: Path) -> list[Finding]:
    """Every check of ``home``, in the order a person would fix things. Reads only."""
    home = Path(home).expanduser()
    findings = [check_home(home)]
    if not home.is_dir():
        return findings
    findings += [check_filesystem(home), check_disk(home)]
    store, jobs = check_store(home / DB_NAME)
    findings.append(store)
    if jobs is not None:
        findings.append(check_lock(home / DB_NAME))
    findings += [check_reserve(home / DB_NAME), check_processes(home, jobs)]
    return findings


def check_home(home: Path) -> Finding:
    """The folder exists, is a folder, is yours, is private (0700) and writable."""
    if not home.exists():
        return Finding("home", Level.WARN, f"{home} does not exist yet", "it is created by the first job (trainjob run / TrainerClient().train)")
    if not home.is_dir():
        return Finding("home", Level.FAIL, f"{home} is not a folder", "set TRAINJOB_HOME to a folder, or move this file away")
    st = home.stat()
    problems = []
    if st.st_uid != os.getuid():
        problems.append(f"owned by uid {st.st_uid}, not you (uid {os.getuid()})")
    if st.st_mode & 0o077:
        problems.append(f"readable by others (mode {stat.filemode(st.st_mode)})")
    if not os.access(home, os.W_OK | os.X_OK):
        problems.append("not writable by you")
    if problems:
        return Finding("home", Level.FAIL if "not writable by you" in problems else Level.WARN, f"{home}: {'; '.join(problems)}", f"chown $USER {home} && chmod 700 {home}")
    return Finding("home", Level.OK, f"{home} (private, writable)")


def check_filesystem(home: Path) -> Finding:
    """The home is on a local disk: SQLite's WAL mode does not work on a network file system."""
    fstype = filesystems.filesystem_type(home)
    if filesystems.is_network_filesystem(fstype):
        return Finding("filesystem", Level.FAIL, network_warning(home / DB_NAME, fstype), "export TRAINJOB_HOME=<a folder on a local disk>")
    return Finding("filesystem", Level.OK, f"{fstype or 'unknown type'} (a local file system)")


def check_disk(home: Path) -> Finding:
    """Free space under the home: jobs write logs, checkpoints and the store there."""
    usage = filesystems.disk_usage(home)
    if usage is None:
        return Finding("disk", Level.WARN, f"cannot read the free space of {home}")
    what = f"{format_bytes(usage.free)} free of {format_bytes(usage.total)} on {usage.path}"
    if usage.nearly_full:
        return Finding("disk", Level.FAIL, f"no space left: {what}", f"free space on {usage.path} (old jobs: trainjob delete ID; cached environments: trainjob envs prune)")
    if usage.free < LOW_DISK_BYTES:
        return Finding("disk", Level.WARN, f"low: {what}", f"free space on {usage.path} before jobs that save checkpoints")
    return Finding("disk", Level.OK, what)


def check_store(db: Path) -> tuple[Finding, list[_Job] | None]:
    """The database opens, passes SQLite's ``quick_check`` and has a schema this trainjob reads; its jobs."""
    if not db.exists():
        return Finding("store", Level.OK, f"{db} does not exist yet (made by the first job)"), []
    move_aside = f"move it aside (mv {db} {db}.corrupt; the job folders stay, their records are lost) and run trainjob again"
    try:
        conn = sqlite3.connect(db.absolute().as_uri() + "?mode=rw", uri=True, timeout=5.0)
    except sqlite3.Error as e:
        return Finding("store", Level.FAIL, f"{db} cannot be opened ({e})", f"check that you own it and can read and write it (ls -l {db})"), None
    try:
        conn.row_factory = sqlite3.Row
        problems = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            shown = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
            return Finding("store", Level.FAIL, f"{db} is damaged: {shown}", move_aside), None
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            return Finding("store", Level.FAIL, f"{db} has schema v{version}, newer than this trainjob (v{SCHEMA_VERSION})", "upgrade trainjob"), None
        cols = {r["name"] for r in conn.execute("PRAGMA table_info(jobs)").fetchall()}
        host = "supervisor_host" if "supervisor_host" in cols else "NULL"
        rows = conn.execute(f"SELECT id, status, supervisor_pid, supervisor_start, {host} AS supervisor_host FROM jobs").fetchall() if cols else []
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    except sqlite3.DatabaseError as e:
        return Finding("store", Level.FAIL, f"{db} is corrupt or not a SQLite database ({e})", move_aside), None
    finally:
        conn.close()
    jobs = [_Job(r["id"], JobStatus.parse(r["status"]), r["supervisor_pid"], r["supervisor_start"], r["supervisor_host"]) for r in rows]
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.status.value] = counts.get(j.status.value, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no jobs"
    notes = [] if version == SCHEMA_VERSION else [f"schema v{version} is upgraded to v{SCHEMA_VERSION} on next use"]
    if mode != "wal":
        notes.append(f"journal mode {mode}, set to WAL on next use")
    return Finding("store", Level.OK, f"{db}: intact, schema v{version}, {summary}" + (f" ({'; '.join(notes)})" if notes else "")), jobs


def check_lock(db: Path) -> Finding:
    """Nobody holds the write lock now (if somebody does, writes wait for it; see the store)."""
    try:
        conn = sqlite3.connect(db.absolute().as_uri() + "?mode=rw", uri=True, timeout=0, isolation_level=None)
    except sqlite3.Error as e:
        return Finding("lock", Level.WARN, f"cannot open {db} to test its lock ({e})")
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return Finding("lock", Level.OK, "no write lock held")
    except sqlite3.OperationalError as e:
        holders = ", ".join(f"{p.pid} ({p.name()})" for p in _processes_with_open(db)) or "unknown (another user, or another host)"
        return Finding(
            "lock",
            Level.WARN,
            f"another process holds the write lock now ({e}); processes with it open: {holders}",
            "jobs keep running and their writes wait (up to 10 minutes); end the program that keeps a transaction open",
        )
    finally:
        conn.close()


def check_reserve(db: Path) -> Finding:
    """The space reserve next to the store is in place (it is what lets a final status fit on a full disk)."""
    reserve = filesystems.Reserve(db.with_name(db.name + RESERVE_SUFFIX), RESERVE_BYTES)
    if reserve.in_place:
        return Finding("reserve", Level.OK, f"{format_bytes(RESERVE_BYTES)} set aside for a full disk ({reserve.path.name})")
    if not db.exists():
        return Finding("reserve", Level.OK, "made with the store")
    return Finding(
        "reserve",
        Level.WARN,
        f"{reserve.path} is missing: it was used up by a full disk, or there was too little room to make it",
        "free some space; the next trainjob command makes it again",
    )


def check_processes(home: Path, jobs: list[_Job] | None) -> Finding:
    """No process of an ended (or deleted) job still runs; every running job's supervisor is alive."""
    by_id = {j.id: j for j in jobs or []}
    leaked: dict[str, list[psutil.Process]] = {}
    lost, running, elsewhere = [], 0, 0
    for folder in sorted((home / "jobs").glob("*")):
        alive = procs.recorded_processes(folder / contract.RUN / contract.PIDS_DIR)
        job = by_id.get(folder.name)
        if job is not None and not job.status.is_terminal:
            if job.supervisor_host and job.supervisor_host != procs.this_host():
                elsewhere += 1
            elif procs.is_alive(job.supervisor_pid, job.supervisor_start) or job.supervisor_pid is None:
                running += 1
            else:
                lost.append(job.id)
            continue
        if alive:
            leaked[folder.name] = alive
    parts = [f"{running} running job(s)" if jobs is not None else "job records unreadable"] + ([f"{elsewhere} supervised on other hosts"] if elsewhere else [])
    if leaked:
        pids = " ".join(str(p.pid) for ps in leaked.values() for p in ps)
        what = "ended or deleted jobs" if jobs is not None else "jobs whose records cannot be read"
        detail = f"{sum(len(p) for p in leaked.values())} process(es) of {what} still run: " + "; ".join(f"{j}: {', '.join(str(p.pid) for p in ps)}" for j, ps in leaked.items())
        return Finding("processes", Level.FAIL if jobs is not None else Level.WARN, detail, f"end them: kill {pids}")
    if lost:
        return Finding(
            "processes", Level.WARN, f"the supervisor of {', '.join(lost)} is gone", "`trainjob ls` records such jobs Failed and ends their leftover processes"
        )
    return Finding("processes", Level.OK, ", ".join(parts) + ", no leftover process")


def _processes_with_open(path: Path) -> list[psutil.Process]:
    """Processes of this user that have ``path`` (or its WAL/shm files) open, this one excepted."""
    targets = {str(path), f"{path}-wal", f"{path}-shm"}
    found = []
    for p in psutil.process_iter(["pid"]):
        if p.pid == os.getpid():
            continue
        try:
            if any(f.path in targets for f in p.open_files()):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found
