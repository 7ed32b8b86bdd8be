"""The contract between a launcher (any backend) and the processes of a job.

One module owns it: the environment variables every rank receives and the layout of the files a
rank writes for its supervisor to collect. Launchers write these, ``trainjob.runtime`` reads them.
This module imports nothing heavy: it is loaded by supervisors and by every rank.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainjob.core.spec import JobSpec

# ---- environment variables given to every rank -------------------------------------------
JOB_ID = "TRAINJOB_JOB_ID"
JOB_DIR = "TRAINJOB_JOB_DIR"  # the job's folder (spec, payload, logs, run state)
RUN_DIR = "TRAINJOB_RUN_DIR"  # where ranks write progress/metrics/events for the supervisor
ATTEMPT = "TRAINJOB_ATTEMPT"  # 0 for the first launch, +1 per restart
TRACKING = "TRAINJOB_TRACKING"  # "1": instrument every Trainer; "0": inject nothing
METRICS_PORT = "TRAINJOB_METRICS_PORT"  # rank 0's /metrics port (0: pick a free one)
METRICS_HOST = "TRAINJOB_METRICS_HOST"  # bind address of the rank-0 endpoint (loopback by default)
CUSTOM_METRICS = "TRAINJOB_CUSTOM_METRICS"  # JSON {"logged_key": "exposed_name"}
SUBMIT_DIR = "TRAINJOB_SUBMIT_DIR"  # the submitter's working directory
PLACEMENT = "TRAINJOB_PLACEMENT"  # JSON: each node's CPUs, GPUs and memory cgroup (runtime/affinity.py)
RESUME = "TRAINJOB_RESUME"  # "1": Trainers resume from the newest complete checkpoint
HOME = "TRAINJOB_HOME"  # where the store and job folders live (default ~/.trainjob)
PRUNING = "TRAINJOB_PRUNING"  # JSON: the Optuna trial that rank 0 reports each value of the objective to (runtime/pruning.py)

# ---- files in a job's folder -------------------------------------------------------------
SPEC_FILE = "spec.json"  # the job's spec, secrets masked (trainjob.masking): safe to show
SECRETS_FILE = "secrets.json"  # the real values of the spec's masked fields (0600); read by launchers and ranks only
PAYLOAD_FILE = "payload.pkl"  # cloudpickled (func, func_args) for function jobs
WORKDIR = "workdir"  # ranks' working directory: relative paths in user code land here
LOGS = "logs"
RUN = "run"
SUPERVISOR_LOG = "supervisor.log"

# ---- files in RUN_DIR (written by ranks, read by the supervisor) -------------------------
PROGRESS_FILE = "progress.jsonl"  # progress documents, appended; the last complete line is the current one
METRICS_FILE = "metrics.jsonl"  # every logged entry, appended
EVENTS_FILE = "events.jsonl"  # train_begin / evaluate / save / train_end, appended
ENDPOINT_FILE = "endpoint.json"  # {"host", "port"} of rank 0's /metrics server
RESULT_FILE = "result.pkl"  # rank 0's return value (JSON when plain data, else cloudpickle: core.records)
ERRORS_DIR = "errors"  # errors/rank-N.json: a rank's exception
PIDS_DIR = "pids"  # pids/rank-N.json (ranks), pids/node-K.json (launchers): pid and start time, to end orphans
STOP_FILE = "stop"  # present: ranks save a checkpoint at an agreed step and end
DONE_DIR = "done"  # done/rank-N.json: this rank's work is done (training ended, its function returned)

# ---- signals a launcher may send to a rank -------------------------------------------------
# SIGQUIT: write every thread's Python stack into the rank's log and keep running (as the JVM
# does). The supervisor sends it to a rank it is about to end as hung, so the log says where.
STACK_DUMP_SIGNAL = "SIGQUIT"


def home() -> Path:
    """trainjob's state folder: ``$TRAINJOB_HOME`` or ``~/.trainjob``."""
    return Path(os.environ.get(HOME) or Path.home() / ".trainjob").expanduser()


def write_json_atomic(path: Path, data: object) -> None:
    """Replace ``path`` so a concurrent reader sees the old or the new content, never a torn file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, default=str)
    os.replace(tmp, path)


def read_job_spec(job_dir: Path) -> "JobSpec":
    """A job's real spec, for launching it: ``spec.json`` with ``secrets.json`` put back in.

    Only the processes that start the ranks (and the ranks, for their script arguments) read
    this; everything that shows a job reads the masked ``spec.json`` or the store.
    """
    from trainjob.core.spec import JobSpec

    try:
        hidden = json.loads((job_dir / SECRETS_FILE).read_text())
    except FileNotFoundError:
        hidden = {}
    return JobSpec.from_json((job_dir / SPEC_FILE).read_text()).with_secrets(hidden)


@dataclass(frozen=True)
class RankInfo:
    """What a rank knows about itself, read from the environment torchrun/Ray/trainjob set."""

    rank: int
    local_rank: int
    world_size: int
    node_rank: int

    @classmethod
    def from_env(cls) -> "RankInfo":
        env = os.environ
        return cls(
            rank=int(env.get("RANK", 0)),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            world_size=int(env.get("WORLD_SIZE", 1)),
            node_rank=int(env.get("GROUP_RANK", env.get("NODE_RANK", 0))),
        )
