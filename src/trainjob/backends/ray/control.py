"""Stopping and deleting jobs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from trainjob.backends.ray.jobs_api import JobsAPIError, RayJob
from trainjob.backends.ray.reads import RAY_TERMINAL
from trainjob.backends.ray.state import EventWriter, Keys
from trainjob.errors import BackendError, JobNotFoundError
from trainjob.types import JobStatus

DELETE_WAIT = 30.0  # seconds delete_job waits for Ray to end a running job
RELAY_TIMEOUT = 120.0  # seconds a relay job (Jobs-API-only mode) may take
HELPER_KEY = "trainjob.helper"  # Ray job metadata: one of trainjob's own small jobs (relay, package listing)
RELAY_RECORD_GRACE = 2.0  # seconds after a relay job ended before its Ray record is deleted (_relay)
ENDING_GRACE = 5.0  # seconds delete_job lets a driver that has recorded the outcome end by itself


class Control:
    """``RayBackend``'s ``stop_job`` and ``delete_job`` (a mixin: it uses the backend's ``conn`` and reads)."""

    def stop_job(self, job_id: str) -> None:
        snap = self._snapshot(self._check_id(job_id), info=self._job_info(job_id))  # Ray's record fresh: whether a driver runs decides below
        if snap.status.is_terminal:
            return
        if self.conn.jobs_api_only:
            if snap.status == JobStatus.CREATED:
                self._ray_stop(job_id)  # no driver yet, nothing to save: Ray cancels the job (read back as Stopped)
            else:
                self._relay("stop", job_id)  # the stop key, written on the cluster: the same graceful stop
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
        if self.conn.jobs_api_only:
            return self._delete_through_jobs_api(self._check_id(job_id))
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

    def _delete_through_jobs_api(self, job_id: str) -> None:
        """End the Ray job, then a relay job removes the job's keys, mirror file, folder and package; then Ray's record goes."""
        keys = Keys(job_id)
        info = self._job_info(job_id)
        if info is None or info.metadata.get("trainjob.id") != job_id or "trainjob.record" not in info.metadata:
            raise JobNotFoundError(job_id)  # never touch a Ray job trainjob's dashboard-only client did not submit
        if not self._ray_ended(info):
            if self.conn.kv.get(keys.outcome) is None or not self._wait_ray_end(job_id, ENDING_GRACE):
                self._ray_stop(job_id)
                if not self._wait_ray_end(job_id, DELETE_WAIT):
                    raise BackendError(f"Ray did not end job {job_id} within {DELETE_WAIT:g}s of `ray job stop`; try again")
        self._relay("delete", job_id, *([info.metadata["trainjob.bundle"]] if info.metadata.get("trainjob.bundle") else []))
        try:
            self.conn.api.delete(job_id)
        except JobsAPIError as e:
            if e.status != 404:
                raise BackendError(f"Ray could not delete job {job_id}: {e}") from e
        self._info_cache.pop(job_id, None)
        self.conn.kv._gcs.forget(job_id)

    def _relay(self, action: str, job_id: str, *args: str) -> str:
        """Run ``python -m trainjob.backends.ray.relay ACTION JOB_ID ...`` as a small Ray job and wait for it (about 1-2 s).

        For a client without a GCS connection (``relay``): its output on success, ``BackendError`` otherwise.
        """
        import shlex

        entry = f"{shlex.quote(self.config.python)} -m trainjob.backends.ray.relay {action} " + " ".join(shlex.quote(a) for a in (job_id, *args))
        what = f"trainjob's {action} relay job for {job_id}"
        info, text = self._helper_job(f"relay-{action}", entry, {"trainjob.relay": action, "trainjob.target": job_id}, RELAY_TIMEOUT, what)
        if info is None or info.status != "SUCCEEDED":
            raise BackendError(f"{what} failed on the cluster ({info.status if info else 'no record'}): {text.strip()[-800:]}")
        return text

    def _helper_job(self, kind: str, entrypoint: str, metadata: dict[str, str], timeout: float, what: str) -> tuple[RayJob | None, str]:
        """Run one of trainjob's own small Ray jobs (a relay, the package listing) through the Jobs API
        and wait for its end: its last record and its output. ``BackendError`` if Ray does not run it.

        Its Ray record is deleted a little later, not at once: Ray's job manager checks on a job's
        supervisor once a second, and a record deleted before it saw the supervisor exit comes
        back as FAILED. A timer here, and every later helper job (any client's), delete it.
        """
        import secrets

        api = self.conn.api
        helper_id = f"trainjob-{kind}-{secrets.token_hex(4)}"  # not a DNS-1035 job name: never a trainjob job's
        info = None
        self._clean_relays()
        try:
            api.submit(entrypoint=entrypoint, submission_id=helper_id, runtime_env={}, metadata={**metadata, HELPER_KEY: kind})
            deadline = time.monotonic() + timeout
            while not self._ray_ended(info := api.info(helper_id)):
                if time.monotonic() >= deadline:
                    raise BackendError(f"{what} ({helper_id}) did not end within {timeout:g}s on the cluster")
                time.sleep(0.1)
            return info, api.logs(helper_id)
        except (JobsAPIError, OSError) as e:
            raise BackendError(f"Ray did not run {what}: {e}") from e
        finally:
            try:
                if not self._ray_ended(info):
                    api.stop(helper_id)
            except (JobsAPIError, OSError):
                pass
            timer = threading.Timer(RELAY_RECORD_GRACE + 0.5, self._clean_relays)
            timer.daemon = True
            timer.start()

    def _clean_relays(self) -> None:
        """Delete Ray's records of trainjob's helper jobs that ended more than ``RELAY_RECORD_GRACE`` seconds ago (best effort)."""
        try:
            api = self.conn.api
            now_ms = time.time() * 1000
            for d in api.list():
                mine = d.metadata.get(HELPER_KEY) or d.metadata.get("trainjob.relay")  # the second: records of an earlier release
                if mine and d.status in RAY_TERMINAL and d.end_time and now_ms - d.end_time > RELAY_RECORD_GRACE * 1000:
                    api.delete(d.submission_id)
        except (JobsAPIError, OSError):
            pass

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

