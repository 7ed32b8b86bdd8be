"""Moves what ranks write in the run folder into the store.

Called by the supervisor every ``COLLECT_INTERVAL`` seconds: a stat per file when nothing changed,
so collecting often costs nothing measurable. Reads only whole lines (a rank may be mid-write).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trainjob import contract
from trainjob.store import Store

COLLECT_INTERVAL = 0.25


class Collector:
    def __init__(self, store: Store, job_id: str, run_dir: Path) -> None:
        self.store = store
        self.job_id = job_id
        self.run_dir = run_dir
        self._offsets: dict[str, int] = {}
        self._progress_mtime: int | None = None
        self._endpoint_seen = False
        self.last_event: dict[str, dict[str, Any]] = {}  # reason -> latest event (TrainEnd, Save...)
        self.progress: dict[str, Any] | None = None  # the latest progress rank 0 wrote
        self.checkpoints: list[str] = []

    def collect(self, attempt: int) -> None:
        """One pass: new metric lines, new events, a changed progress file, the endpoint."""
        entries = self._new_lines(contract.METRICS_FILE)
        if entries:
            self.store.add_metrics(self.job_id, attempt, entries)
        for ev in self._new_lines(contract.EVENTS_FILE):
            self.last_event[ev["reason"]] = ev
            if ev["reason"] == "Save" and ev["data"].get("checkpoint"):
                self.checkpoints.append(ev["data"]["checkpoint"])
            self.store.add_event(self.job_id, ev["reason"], ev["message"], ev.get("data"), at=ev.get("time"))
        self._collect_progress()
        if not self._endpoint_seen:
            self._collect_endpoint()

    def forget_endpoint(self) -> None:
        """A restarted rank 0 may serve /metrics on another port: read ``endpoint.json`` again."""
        self._endpoint_seen = False

    def _collect_progress(self) -> None:
        path = self.run_dir / contract.PROGRESS_FILE
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._progress_mtime:
            return
        try:
            progress = json.loads(path.read_text())
        except (OSError, ValueError):
            return  # replaced between stat and read: next pass
        self._progress_mtime = mtime
        self.progress = progress
        self.store.update_job(self.job_id, progress=progress, progress_at=mtime / 1e9)

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
