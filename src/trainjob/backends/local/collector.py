"""Moves what ranks write in the run folder into the store.

The supervisor alternates ``wait`` and ``collect``. ``collect`` costs a ``stat`` per file when
nothing changed and reads only new, whole lines (a rank may be mid-write). ``wait`` returns at
most every ``COLLECT_INTERVAL`` seconds while rank 0 writes (so the stored progress is never much
older than what the rank wrote), and otherwise sleeps until the run folder changes, a watched
process exits, or ``IDLE_INTERVAL`` passes: a job whose ranks report nothing (imports, tracking
off, slow steps) wakes its supervisor once a second instead of four times. Changes are seen
through inotify (Linux, via ctypes) and process exits through pidfds; without them ``wait`` is a
plain sleep of ``COLLECT_INTERVAL``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Protocol

from trainjob import contract
from trainjob.backends.local.watch import ChangeWatch
from trainjob.store import Store

COLLECT_INTERVAL = 0.25  # seconds: the shortest time between two collections
IDLE_INTERVAL = 1.0  # seconds: the longest wait when nothing changes


class _Process(Protocol):
    """What ``Collector.wait`` needs of a process it watches (``subprocess.Popen`` has it)."""

    pid: int
    returncode: int | None


class Collector:
    def __init__(self, store: Store, job_id: str, run_dir: Path) -> None:
        self.store = store
        self.job_id = job_id
        self.run_dir = run_dir
        self._offsets: dict[str, int] = {}
        self._progress_ino: int | None = None  # the progress file being read (a new one after rank 0 starts it afresh)
        self._progress_offset = 0  # bytes of it already read
        self._progress_seen: tuple[int, int, int] | None = None  # (inode, size, mtime) at the last read
        self._changes: ChangeWatch | None = None
        self._last_wake = -float("inf")
        self._endpoint_seen = False
        self.last_event: dict[str, dict[str, Any]] = {}  # reason -> latest event (TrainEnd, Save...)
        self.progress: dict[str, Any] | None = None  # the latest progress rank 0 wrote

    def collect(self, attempt: int) -> None:
        """One pass: new metric lines, new events and a changed progress, stored in one transaction; the endpoint."""
        entries = self._new_lines(contract.METRICS_FILE)
        events = self._new_lines(contract.EVENTS_FILE)
        for ev in events:
            self.last_event[ev["reason"]] = ev
        progress, written_at = self._new_progress()
        self.store.add_reports(self.job_id, attempt, metrics=entries, events=events, progress=progress, progress_at=written_at)
        if progress is not None:
            self.progress = progress
        if not self._endpoint_seen:
            self._collect_endpoint()

    def forget_endpoint(self) -> None:
        """A restarted rank 0 may serve /metrics on another port: read ``endpoint.json`` again."""
        self._endpoint_seen = False

    def wait(self, processes: Iterable[_Process] = (), interval: float = COLLECT_INTERVAL) -> None:
        """Return when the next ``collect`` is due.

        That is at least ``interval`` after the previous return (what changed meanwhile is
        collected in one pass), then as soon as the run folder changes or one of ``processes``
        (those still without a ``returncode``) exits, and at most ``IDLE_INTERVAL`` after it. A
        process exit is never held back by ``interval``: the pause only spaces out collections of
        what ranks write, and the job's end (the last ones, then its outcome) is what a waiting
        client, or an optimizer about to start the next trial, is waiting for (a rank that exits
        right after its last write used to be noticed up to ``interval`` late).
        """
        if self._changes is None:
            self._changes = ChangeWatch.start([self.run_dir, self.run_dir / contract.ERRORS_DIR])
        pids = [p.pid for p in processes if p.returncode is None]
        now = time.monotonic()
        if now < self._last_wake + interval:
            if not pids:
                time.sleep(self._last_wake + interval - now)
            elif self._changes.wait_exit(pids, self._last_wake + interval - now):
                self._last_wake = time.monotonic()
                return
        if self._changes.fd is None:
            self._last_wake = time.monotonic()  # no inotify here: poll every interval
            return
        timeout = max(0.0, self._last_wake + max(interval, IDLE_INTERVAL) - time.monotonic())
        self._changes.wait(pids, timeout)
        self._last_wake = time.monotonic()

    def close(self) -> None:
        """Release the change watch (the collector can still ``collect``; ``wait`` reopens it)."""
        if self._changes is not None:
            self._changes.close()
            self._changes = None

    def _new_progress(self) -> tuple[dict[str, Any] | None, float | None]:
        """The last complete line of ``progress.jsonl`` and when it was written, if rank 0 wrote
        since the last pass; else (None, None)."""
        path = self.run_dir / contract.PROGRESS_FILE
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None, None
        if (st.st_ino, st.st_size, st.st_mtime_ns) == self._progress_seen:
            return None, None
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())  # the file opened, which a rename may have made a new one
                # A new file (rank 0 started one afresh) may reuse the old one's inode number:
                # a file shorter than what was read is new too. One that has grown past it is
                # read from there: only its last complete line matters.
                if st.st_ino != self._progress_ino or st.st_size < self._progress_offset:
                    self._progress_ino, self._progress_offset = st.st_ino, 0
                f.seek(self._progress_offset)
                chunk = f.read(st.st_size - self._progress_offset)
        except OSError:
            return None, None
        self._progress_seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        end = chunk.rfind(b"\n")
        if end < 0:
            return None, None  # only part of a line so far
        self._progress_offset += end + 1
        for line in reversed(chunk[:end].split(b"\n")):
            try:
                progress = json.loads(line)
            except ValueError:
                continue
            if isinstance(progress, dict):
                return progress, st.st_mtime_ns / 1e9
        return None, None

    def _collect_endpoint(self) -> None:
        path = self.run_dir / contract.ENDPOINT_FILE
        try:
            endpoint = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        self._endpoint_seen = True
        job = self.store.get_job(self.job_id)
        extra = dict(job.extra if job else {})
        extra["metrics_endpoint"] = f"http://{endpoint['host']}:{endpoint['port']}/metrics"
        self.store.update_job(self.job_id, extra=extra)
        if endpoint.get("requested") and endpoint["port"] != endpoint["requested"]:
            self.store.add_event(
                self.job_id, "MetricsPort", f"port {endpoint['requested']} was taken; rank 0 serves /metrics on {endpoint['port']}", endpoint
            )

    def _new_lines(self, name: str) -> list[dict[str, Any]]:
        path = self.run_dir / name
        offset = self._offsets.get(name, 0)
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            return []
        if size <= offset:
            return []
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read(size - offset)
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self._offsets[name] = offset + end + 1
        out = []
        for line in chunk[: end + 1].splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out
