"""A Ray Train callback that records why an attempt failed when the failing worker could not.

Runs in Ray Train's controller process (an actor of the job). A rank that raises records its own
exception before Ray Train sees it (``worker.train_loop``); a worker that dies without raising
(killed, out of memory, its node lost) cannot, so Ray Train's report of it is recorded here as the
attempt's first failure, with an ``AttemptFailed`` event. Built by the driver.
"""

from __future__ import annotations

import sys

from ray.train import UserCallback

from trainjob.backends.ray.state import KV, EventWriter, Keys
from trainjob.backends.ray.worker import claim_first_error, job_secret_values, root_cause
from trainjob.core.records import error_record


class FailureRecorder(UserCallback):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id

    def after_exception(self, run_context, worker_exceptions) -> None:  # noqa: ANN001 - Ray's signature
        if not worker_exceptions:
            return
        try:
            kv, keys = KV.in_cluster(), Keys(self.job_id)
            attempt = max(0, len(kv.keys(keys.attempts())) - 1)
            rank, exc = root_cause(worker_exceptions)
            claim_first_error(kv, keys, attempt, error_record(rank, exc, job_secret_values(kv, keys), attempt=attempt), EventWriter(kv, keys, "ctl").write)
        except Exception as e:  # noqa: BLE001 - a callback must not break Ray Train's own failure handling
            print(f"[trainjob] could not record the failure: {e}", file=sys.stderr, flush=True)
