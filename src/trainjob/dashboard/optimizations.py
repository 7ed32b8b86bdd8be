"""The dashboard's optimization pages: ``/optimizations`` and ``/optimizations/{name}`` over ``OptimizerClient``.

Read-only JSON: the optimization's record (trials, best trial) and, per trial, the objective's
values by step, read from each trial job's metrics history after the position the page already
has (``?after=trial:position,...``), so a poll carries only what is new.
"""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from trainjob.errors import JobNotFoundError
from trainjob.optimizer import OptimizerClient
from trainjob.optimizer.records import study_record
from trainjob.optimizer.spec import metric_key


class OptimizationApi:
    def __init__(self, client: OptimizerClient) -> None:
        self.client = client

    def list(self, request: Request) -> Response:
        return JSONResponse({"optimizations": [study_record(j) for j in self.client.list_jobs()]})

    def get(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            job = self.client.get_job(name)
        except JobNotFoundError as e:
            return JSONResponse({"error": str(e)}, status_code=404)
        after = dict(p.rpartition(":")[::2] for p in request.query_params.get("after", "").split(",") if ":" in p)
        metric = job.objectives[0].metric
        curves: dict[str, Any] = {}
        for t in job.trials:
            if t.trainjob is None:
                continue
            start = int(after.get(t.name) or 0) if str(after.get(t.name) or "0").isdigit() else 0
            entries = self.client.trainer_client.get_job_metrics(t.name, after=start)
            key = metric_key(metric, entries) or metric
            points = [[e.get("step"), e[key]] for e in entries if key in e and isinstance(e.get(key), (int, float)) and math.isfinite(e[key]) and "step" in e]
            curves[t.name] = {"after": start + len(entries), "points": points}
        return JSONResponse({**study_record(job), "curves": curves}, headers={"cache-control": "no-store"})
