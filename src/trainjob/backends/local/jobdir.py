"""The layout of a local job's folder, ``$TRAINJOB_HOME/jobs/<id>/`` (private: 0700)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainjob import contract


@dataclass(frozen=True)
class JobDir:
    root: Path

    @classmethod
    def for_job(cls, home: Path, job_id: str) -> "JobDir":
        return cls(home / "jobs" / job_id)

    @property
    def spec_file(self) -> Path:
        return self.root / contract.SPEC_FILE

    @property
    def payload_file(self) -> Path:
        return self.root / contract.PAYLOAD_FILE

    @property
    def workdir(self) -> Path:
        return self.root / contract.WORKDIR

    @property
    def run_dir(self) -> Path:
        return self.root / contract.RUN

    @property
    def logs_dir(self) -> Path:
        return self.root / contract.LOGS

    @property
    def supervisor_log(self) -> Path:
        return self.root / contract.SUPERVISOR_LOG

    def attempt_logs(self, attempt: int) -> Path:
        return self.logs_dir / f"attempt-{attempt}"

    def create(self, spec: dict[str, Any], payload: bytes | None) -> None:
        """Make the folder tree and write the spec (and payload); files 0600, folders 0700."""
        old = os.umask(0o077)
        try:
            self.root.mkdir(parents=True, mode=0o700)
            for d in (self.workdir, self.run_dir, self.logs_dir, self.run_dir / contract.ERRORS_DIR, self.run_dir / contract.PIDS_DIR):
                d.mkdir(mode=0o700, exist_ok=True)
            self.spec_file.write_text(json.dumps(spec, indent=1, default=str))
            if payload is not None:
                self.payload_file.write_bytes(payload)
        finally:
            os.umask(old)

    def read_spec(self) -> dict[str, Any]:
        return json.loads(self.spec_file.read_text())

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
