"""Following a job from the terminal: a live progress bar, and optionally its logs, until it ends.

Used by ``trainjob run --follow``, ``trainjob progress --watch``, ``trainjob wait`` and
``trainjob demo``. On a terminal the bar is redrawn in place (rich ``Live``) and log lines scroll
above it; when the output is a file or a pipe there are no redraws: a plain progress line is
printed when the status changes and at most every ``plain_every`` seconds while it runs.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from trainjob.core.public_records import job_record
from trainjob.cli.render import progress_line, progress_summary
from trainjob.client import TrainerClient


class JobWatcher:
    """Poll one job every ``interval`` seconds until it is terminal, showing its progress.

    ``console`` shows the progress. With ``logs=True`` every node's log is streamed too: through
    ``console`` when that is a terminal (lines scroll above the bar), else straight to stdout.
    """

    def __init__(
        self,
        client: TrainerClient,
        job_id: str,
        console: Console,
        logs: bool = False,
        interval: float = 0.5,
        plain_every: float = 10.0,
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.console = console
        self.logs = logs
        self.interval = interval
        self.plain_every = plain_every
        self._live: Live | None = None
        self._print_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def snapshot(self) -> dict[str, Any]:
        job = self.client.get_job(self.job_id)
        return job_record(job, self.client.get_job_progress(self.job_id))

    def run(self) -> dict[str, Any]:
        """Block until the job ends; return its final record. ``KeyboardInterrupt`` passes through."""
        record = self.snapshot()
        if self.logs:
            self._start_log_threads(record["num_nodes"])
        try:
            if self.console.is_terminal:
                record = self._run_live(record)
            else:
                record = self._run_plain(record)
        finally:
            self._live = None
        for t in self._threads:  # log streams end on their own once the job is terminal
            t.join(timeout=10)
        return record

    # ---- progress ------------------------------------------------------------------------
    def _run_live(self, record: dict[str, Any]) -> dict[str, Any]:
        with Live(progress_line(record), console=self.console, refresh_per_second=4, transient=False) as live:
            self._live = live
            while not record["is_terminal"]:
                time.sleep(self.interval)
                record = self.snapshot()
                live.update(progress_line(record))
        return record

    def _run_plain(self, record: dict[str, Any]) -> dict[str, Any]:
        last_status, last_step, last_print = None, None, 0.0
        while True:
            p = record.get("progress") or {}
            step = p.get("currentStep")
            now = time.monotonic()
            if record["status"] != last_status or record["is_terminal"] or (step != last_step and now - last_print >= self.plain_every):
                self._emit_status(f"[{record['id']}] {record['status']}  {progress_summary(p)}".rstrip())
                last_status, last_step, last_print = record["status"], step, now
            if record["is_terminal"]:
                return record
            time.sleep(self.interval)
            record = self.snapshot()

    def _emit_status(self, line: str) -> None:
        with self._print_lock:
            self.console.print(Text(line), soft_wrap=True)

    # ---- logs ----------------------------------------------------------------------------
    def _start_log_threads(self, num_nodes: int) -> None:
        for node in range(num_nodes):
            prefix = f"[node-{node}] " if num_nodes > 1 else ""
            t = threading.Thread(target=self._stream, args=(f"node-{node}", prefix), daemon=True, name=f"logs-node-{node}")
            t.start()
            self._threads.append(t)

    def _stream(self, step: str, prefix: str) -> None:
        for line in self.client.get_job_logs(self.job_id, step=step, follow=True):
            self._emit_log(prefix + line)

    def _emit_log(self, line: str) -> None:
        live = self._live
        with self._print_lock:
            if live is not None and self.console.is_terminal and self.console.file is not sys.stderr:
                live.console.print(Text(line), soft_wrap=True)
            else:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
