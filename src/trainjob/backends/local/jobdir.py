"""The layout of a local job's folder, ``$TRAINJOB_HOME/jobs/<id>/`` (private: 0700)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainjob import contract
from trainjob.core.spec import JobSpec


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

    @property
    def secrets_file(self) -> Path:
        return self.root / contract.SECRETS_FILE

    def create(self, shown: JobSpec, hidden: dict[str, Any], payload: bytes | None) -> None:
        """Make the folder tree and write the spec (and payload); files 0600, folders 0700.

        ``shown, hidden = spec.split()``: ``spec.json`` gets the spec with secrets masked (safe to
        show or attach to a bug report); the real values of the masked fields go to
        ``secrets.json``, written only when there are any and read only by the supervisor and the
        ranks (``read_spec``, ``contract.read_job_spec``).
        """
        old = os.umask(0o077)
        try:
            self.root.mkdir(parents=True, mode=0o700)
            for d in (self.workdir, self.run_dir, self.logs_dir, self.run_dir / contract.ERRORS_DIR, self.run_dir / contract.PIDS_DIR):
                d.mkdir(mode=0o700, exist_ok=True)
            if hidden:
                fd = os.open(self.secrets_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    json.dump(hidden, f, default=str)
            self.spec_file.write_text(shown.require_masked().to_json(indent=1))
            if payload is not None:
                self.payload_file.write_bytes(payload)
        finally:
            os.umask(old)

    def read_spec(self) -> JobSpec:
        """The real spec (secrets included), for launching the job; never for showing it."""
        return contract.read_job_spec(self.root)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
