"""Stopping and deleting jobs."""

from __future__ import annotations

import time
from pathlib import Path

from trainjob.backends.ray.jobs_api import JobsAPIError, RayJob
from trainjob.backends.ray.reads import RAY_TERMINAL
from trainjob.backends.ray.state import EventWriter, Keys
from trainjob.errors import BackendError, JobNotFoundError
from trainjob.types import JobStatus

DELETE_WAIT = 30.0  # seconds delete_job waits for Ray to end a running job
ENDING_GRACE = 5.0  # seconds delete_job lets a driver that has recorded the outcome end by itself


class Control:
    """``RayBackend``'s ``stop_job`` and ``delete_job`` (a mixin: it uses the backend's ``conn`` and reads)."""

    def stop_job(self, job_id: str) -> None:
        snap = self._snapshot(self._check_id(job_id), info=self._job_info(job_id))  # Ray's record fresh: whether a driver runs decides below
        if snap.status.is_terminal:
            return
        kv, keys = self.conn.kv, Keys(job_id)
        if kv.claim_json(keys.stop, {"time": time.time()}):
            EventWriter(kv, keys, "cli")("StopRequested", "stop requested by the user")
        if snap.status == JobStatus.CREATED:
            # No driver yet to carry the stop out: have Ray cancel the job, and record it here.
            from trainjob.backends.ray.outcome import record_outcome

            self._ray_stop(job_id)
            record_outcome(kv, keys, EventWriter(kv, keys, "cli"), JobStatus.STOPPED, "stopped on request before it started", None, {"metrics": {}})

    def delete_job(self, job_id: str) -> None:
        kv, keys = self.conn.kv, Keys(self._check_id(job_id))
        info = self._job_info(job_id)
        record = kv.get_json(keys.job)
        if info is not None and info.metadata.get("trainjob.id") != job_id:
            info = None  # a Ray job that is not trainjob's (same id by chance or on purpose): never touched
        if record is None and info is None:
            raise JobNotFoundError(job_id)
        if info is not None and not self._ray_ended(info):
            # A driver that has written the outcome is exiting by itself: let it (a stop would only race it).
            if kv.get(keys.outcome) is None or not self._wait_ray_end(job_id, ENDING_GRACE):
                self._ray_stop(job_id)
                if not self._wait_ray_end(job_id, DELETE_WAIT):
                    raise BackendError(f"Ray did not end job {job_id} within {DELETE_WAIT:g}s of `ray job stop`; try again")
            info = self._job_info(job_id)
        driver = kv.get_json(keys.driver) or {}
        if info is not None:
            try:
                self.conn.api.delete(job_id)
            except JobsAPIError as e:
                if e.status != 404:  # 404: the record is already gone
                    raise BackendError(f"Ray could not delete job {job_id}: {e}") from e
        kv.delete_prefix(keys.prefix)
        self._info_cache.pop(job_id, None)
        folder = Path(driver["job_dir"]) if driver.get("job_dir") else None
        if folder is not None and folder.name == job_id and folder.parent.name == "jobs" and folder.is_dir():
            import shutil

            shutil.rmtree(folder, ignore_errors=True)  # visible here when the cluster's home is this machine's or shared

    @staticmethod
    def _ray_ended(info: RayJob | None) -> bool:
        return info is None or info.status in RAY_TERMINAL

    def _wait_ray_end(self, job_id: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._ray_ended(self._job_info(job_id)):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def _ray_stop(self, job_id: str) -> None:
        try:
            self.conn.api.stop(job_id)
        except JobsAPIError as e:
            if e.status != 404:  # 404: it is gone meanwhile
                raise BackendError(f"Ray could not stop job {job_id}: {e}") from e

