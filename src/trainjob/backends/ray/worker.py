"""What every Ray Train worker runs: one rank of a trainjob job (Ray's ``train_loop_per_worker``).

Runs inside the Ray Train worker processes only, in a thread of a ``RayTrainWorker`` actor, after
Ray Train has set ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR`` and initialised a torch
process group (which this module uses once, then hands the ranks over as torchrun would: see
``_agree_on_attempt``). It goes through the same steps as a local rank (``runtime.bootstrap``):
instrument every Trainer unless tracking is off, resume from the newest complete checkpoint on a
restart, run the user's function/script/module with the same ``run_entrypoint`` in the job's
``workdir``, record the exception, tear the process group down. What differs is where reports go:
``RaySink`` writes them into Ray's GCS key-value store (``state``), and a thread turns a stop
request found there into ``stopping.request()``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from trainjob import contract
from trainjob.backends.ray.state import KV, Keys, RayState, writer_tag
from trainjob.core import events
from trainjob.core.outcome import describe_error
from trainjob.core.rank_env import free_port, rank_env
from trainjob.backends.ray.integrity import signed_return_value, verified_payload
from trainjob.core.records import error_record, record_traceback
from trainjob.core.spec import JobSpec
from trainjob.masking import secret_values

FLUSH_INTERVAL = 0.25  # seconds between writes of queued reports to the GCS
STOP_POLL = 0.5  # seconds between reads of the stop key
MAX_RETURN_BYTES = 64 * 2**20  # a larger return value is reported by its repr


def train_loop(config: dict[str, Any]) -> None:
    """One rank. ``config``: ``job_id``, ``job_dir`` (absolute, the same on every node), ``spec``, ``resume_from``."""
    from trainjob.runtime import sinks

    job_id, spec = config["job_id"], JobSpec.from_json(config["spec"])  # the masked spec, as stored
    job_dir = Path(config["job_dir"])
    kv, keys = KV.in_cluster(), Keys(job_id)
    info = contract.RankInfo.from_env()
    attempt, stopped = _agree_on_attempt(kv, keys, info)
    tracking = spec.tracking.enabled
    resume = attempt > 0 or bool(config.get("resume_from"))
    os.environ.update(rank_env(spec, job_id=job_id, job_dir=job_dir, attempt=attempt, resume=resume))
    os.environ.pop(contract.RUN_DIR, None)  # no run folder on Ray: reports go to the sink below
    sink = RaySink(kv, keys, attempt, source=f"r{info.rank}")
    sinks.set_current(sink)
    _register_rank(kv, keys, attempt, info)
    if info.rank == 0:
        _announce(kv, keys, sink, attempt, info, resume)
    if stopped:
        sink.close()
        return  # a stop came before this attempt: nothing to train (the driver records Stopped)

    # Secret env values and the real script arguments come from the GCS, not from Ray's
    # runtime_env (which Ray's dashboard shows): set them before any user code runs.
    hidden = job_secrets(kv, keys)
    spec = spec.with_secrets(hidden)
    os.environ.update(hidden.get("env") or {})
    watcher = StopWatcher(kv, keys) if tracking else None
    previous_cwd = os.getcwd()
    output = _MergedOutput()
    value, failure = None, None
    try:
        if tracking or resume:
            from trainjob.runtime import instrument

            instrument.install(callback=tracking, resume=resume)
        runnable = _materialize(kv, keys, job_dir, spec)
        workdir = job_dir / contract.WORKDIR
        workdir.mkdir(parents=True, exist_ok=True)
        os.chdir(workdir)  # Ray Train workers start in a Ray folder: relative paths land in the job's workdir
        from trainjob.runtime.bootstrap import run_entrypoint

        value = run_entrypoint(runnable, job_dir)
    except SystemExit as e:
        if e.code not in (None, 0):
            failure = e
    except BaseException as e:  # noqa: BLE001 - recorded for the driver, then re-raised to Ray Train
        failure = e
    finally:
        if failure is not None:
            print(record_traceback(failure, secret_values(hidden)), end="", file=sys.stderr, flush=True)  # secrets masked, as in the record
            _record_error(kv, keys, sink, attempt, info.rank, failure)
        from trainjob.runtime.bootstrap import shutdown_distributed

        shutdown_distributed()
        if watcher is not None:
            watcher.close()
        if info.rank == 0:
            _report_checkpoints(kv, keys, sink, attempt)
            if failure is None:
                _put_return_value(kv, keys, value)
        sink.close()
        output.restore()
        os.chdir(previous_cwd)
    if isinstance(failure, SystemExit):
        raise RuntimeError(f"the training code exited with code {failure.code}") from None
    if failure is not None:
        raise failure


# ---- the attempt and the ranks -------------------------------------------------------------
def _agree_on_attempt(kv: KV, keys: Keys, info: contract.RankInfo) -> tuple[int, bool]:
    """Agree on the attempt number, a rendezvous port and whether a stop came before the start,
    then hand the ranks over as torchrun would.

    Ray Train does not tell workers which restart this is, so rank 0 counts in the GCS with a
    put-if-absent and broadcasts the number over the process group Ray Train set up (with the
    stop flag as rank 0 read it: every rank returns, or none does, so no rank waits for a peer
    that will never come). That group
    is then destroyed and ``MASTER_PORT`` pointed at a fresh port: the user's code (HF's
    accelerate, or a plain ``dist.init_process_group("gloo")`` written for torchrun) creates its
    own group from the ``env://`` variables, exactly as under torchrun, instead of failing on
    "initialize the default process group twice".
    """
    n, port, stop = 0, 0, 0
    if info.rank == 0:
        n = len(kv.keys(keys.attempts()))
        while not kv.claim_json(keys.attempt(n), {"attempt": n, "time": time.time(), "world_size": info.world_size}):
            n += 1
        port = free_port(os.environ.get("MASTER_ADDR") or "127.0.0.1")
        stop = int(kv.get(keys.stop) is not None)
    n, port, stop = _share_from_rank0(n, port, stop)
    if port:
        os.environ["MASTER_PORT"] = str(port)
    return n, bool(stop)


def _share_from_rank0(*values: int) -> tuple[int, ...]:
    """Broadcast ints from rank 0 over Ray Train's process group, then destroy that group."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return values
    if dist.get_world_size() > 1:
        import torch

        device = "cpu"
        if dist.get_backend() == "nccl":
            from ray.train.torch import get_device

            device = get_device()
        t = torch.tensor(list(values), dtype=torch.int64, device=device)
        dist.broadcast(t, src=0)
        values = tuple(int(v) for v in t.tolist())
    dist.destroy_process_group()
    return values


def _register_rank(kv: KV, keys: Keys, attempt: int, info: contract.RankInfo) -> None:
    import ray

    ctx = ray.get_runtime_context()
    kv.put_json(
        keys.rank(attempt, info.rank),
        {
            "rank": info.rank,
            "local_rank": info.local_rank,
            "node_rank": info.node_rank,
            "world_size": info.world_size,
            "node_ip": ray.util.get_node_ip_address(),
            "node_id": ctx.get_node_id(),
            "actor_id": ctx.get_actor_id(),
            "pid": os.getpid(),
            "time": time.time(),
        },
    )


def _announce(kv: KV, keys: Keys, sink: "RaySink", attempt: int, info: contract.RankInfo, resume: bool) -> None:
    """Rank 0: the ``Started`` event, and ``Restarting`` (with what failed and where it resumes) on a restart."""
    world = info.world_size
    if attempt > 0:
        from trainjob.checkpoints import checkpoint_step, latest_complete

        prev = kv.get_json(keys.first_error(attempt - 1))
        cause = describe_error(prev) if prev else "a worker failed"
        ckpt = latest_complete(previous_output_dir(kv, keys))
        max_restarts = JobSpec.from_dict((kv.get_json(keys.job) or {}).get("spec") or {}).limits.max_restarts
        sink.event(events.restarting(attempt, max_restarts, cause, ckpt, checkpoint_step(ckpt) if ckpt else None).as_record(attempt))
    sink.event(events.started(attempt, world, "as Ray Train workers", resume).as_record(attempt))
    sink.flush()


def previous_output_dir(kv: KV, keys: Keys) -> str | None:
    """The ``output_dir`` of the job's Trainer so far: rank 0's end-of-attempt report, else its last ``TrainBegin``."""
    from trainjob.backends.ray.state import last_event, read_events

    reported = (kv.get_json(keys.checkpoints) or {}).get("output_dir")
    if reported:
        return reported
    begin = last_event(read_events(kv, keys), "TrainBegin")
    return ((begin or {}).get("data") or {}).get("output_dir")


def _materialize(kv: KV, keys: Keys, job_dir: Path, spec: JobSpec) -> JobSpec:
    """What ``run_entrypoint`` needs on this node; returns the spec to run.

    A function's payload is written into the job folder if it is not there yet (on shared storage
    the driver wrote it; on a node with its own disk the first rank there fetches it from the GCS).
    A script came with Ray's ``working_dir`` (its folder), which Ray puts first on ``PYTHONPATH``.
    """
    entry = spec.entrypoint
    if entry.is_function:
        _write_once(job_dir / contract.PAYLOAD_FILE, lambda: verified_payload(kv, keys))  # a changed payload is refused
    elif entry.kind == "script":
        name = Path(entry.script or "").name
        found = [Path(p) / name for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and (Path(p) / name).is_file()]
        if not found:
            raise RuntimeError(f"the script {name} did not arrive with the job's Ray working_dir (PYTHONPATH={os.environ.get('PYTHONPATH')!r})")
        return dataclasses.replace(spec, entrypoint=dataclasses.replace(entry, script=str(found[0])))
    return spec


def _write_once(path: Path, fetch) -> None:
    if path.exists():
        return
    data = fetch()
    if data is None:
        raise RuntimeError(f"the job's {path.name} is missing from the Ray GCS (was the job deleted?)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---- errors and results --------------------------------------------------------------------
def job_secrets(kv: KV, keys: Keys) -> dict[str, Any]:
    """The real values of the job's masked spec fields (``<id>/secrets``); empty when none."""
    return kv.get_json(keys.secrets) or {}


def job_secret_values(kv: KV, keys: Keys) -> list[str]:
    """The job's secret strings, to mask them in error records (which are stored and shown)."""
    return secret_values(job_secrets(kv, keys))


def claim_first_error(kv: KV, keys: Keys, attempt: int, record: dict[str, Any], write_event) -> bool:
    """Record ``record`` as the first failure of ``attempt`` unless one is already; emit ``AttemptFailed`` if so."""
    if not RayState(kv).record_error(keys.job_id, attempt, record):
        return False
    write_event(events.attempt_failed(record, attempt).as_record(attempt))
    return True


def _record_error(kv: KV, keys: Keys, sink: "RaySink", attempt: int, rank: int, exc: BaseException) -> None:
    try:
        record = error_record(rank, exc, job_secret_values(kv, keys), attempt=attempt)
        kv.put_json(keys.error(attempt, rank), record)
        claim_first_error(kv, keys, attempt, record, sink.event)
        sink.flush()
    except Exception as e:  # noqa: BLE001 - the GCS is unreachable: the driver falls back to Ray's own error
        print(f"[trainjob] could not record the error in the Ray GCS: {e}", file=sys.stderr, flush=True)


def _report_checkpoints(kv: KV, keys: Keys, sink: "RaySink", attempt: int) -> None:
    """Rank 0, end of an attempt: the checkpoints it sees in its ``output_dir`` (the client may not see that disk)."""
    from trainjob.checkpoints import latest_complete, list_checkpoints

    out = sink.output_dir
    if not out:
        return
    ckpt = latest_complete(out)
    try:
        kv.put_json(
            keys.checkpoints,
            {
                "attempt": attempt,
                "output_dir": out,
                "checkpoint": str(ckpt) if ckpt else None,
                "checkpoints": [str(p) for p in list_checkpoints(out)],
                "best_checkpoint": (sink.train_end or {}).get("best_model_checkpoint"),
                "global_step": (sink.train_end or {}).get("global_step"),
            },
        )
    except Exception as e:  # noqa: BLE001 - reporting must not turn a finished training into a failure
        print(f"[trainjob] could not report checkpoints: {e}", file=sys.stderr, flush=True)


def _put_return_value(kv: KV, keys: Keys, value: Any) -> None:
    try:
        kv.put(keys.return_value, signed_return_value(kv, keys, value, MAX_RETURN_BYTES))
    except Exception as e:  # noqa: BLE001
        print(f"[trainjob] could not store the return value: {e}", file=sys.stderr, flush=True)


def root_cause(worker_exceptions: dict[int, BaseException]) -> tuple[int, BaseException]:
    """The rank whose failure explains the others: a dead worker before the peers that lost it, then the lowest rank."""

    def died(e: BaseException) -> bool:
        return type(e).__name__ in ("ActorDiedError", "RayActorError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError")

    ranked = sorted(worker_exceptions.items(), key=lambda kv_: (not died(kv_[1]), kv_[0]))
    rank, exc = ranked[0]
    return rank, getattr(exc, "cause", None) if isinstance(getattr(exc, "cause", None), BaseException) else exc


# ---- the sink and the stop watcher ---------------------------------------------------------
class RaySink:
    """Where rank 0's callback reports on Ray: the job's keys in the GCS (see ``state``).

    ``progress``/``metric``/``event`` only queue (a few microseconds); a daemon thread writes the
    queue every ``FLUSH_INTERVAL`` seconds, so training never waits on the network. ``TrainEnd``
    is written at once and synchronously: the final state must be recorded before the process
    may end. Write errors are printed once and dropped; reporting never fails training.
    """

    def __init__(self, kv: KV, keys: Keys, attempt: int, source: str) -> None:
        self.kv, self.keys, self.attempt = kv, keys, attempt
        self.source = f"{source}{writer_tag()}"
        self.output_dir: str | None = None
        self.train_end: dict[str, Any] | None = None
        self._progress: dict[str, Any] | None = None
        self._metrics: list[dict[str, Any]] = []
        self._events: list[dict[str, Any]] = []
        self._seq = 0
        self._lock = threading.Lock()  # the queues
        self._write_lock = threading.Lock()  # one writer at a time keeps keys in order
        self._wake = threading.Event()
        self._closed = False
        self._warned = False
        self._thread: threading.Thread | None = None

    # ---- Sink protocol -----------------------------------------------------------------
    def progress(self, progress: dict[str, Any]) -> None:
        with self._lock:
            self._progress = progress
        self._start()

    def metric(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._metrics.append(entry)
        self._start()

    def event(self, event: dict[str, Any]) -> None:
        data = event.get("data") or {}
        if event.get("reason") == "TrainBegin" and data.get("output_dir"):
            self.output_dir = data["output_dir"]
        with self._lock:
            self._events.append(event)
        if event.get("reason") == "TrainEnd":
            self.train_end = data
            self.flush()
        else:
            self._start()

    # ---- writing -----------------------------------------------------------------------
    def flush(self) -> None:
        """Write everything queued now, in the calling thread."""
        with self._write_lock:
            with self._lock:
                progress, self._progress = self._progress, None
                metrics, self._metrics = self._metrics, []
                events, self._events = self._events, []
            try:
                if metrics:
                    self._seq += 1
                    self.kv.put(self.keys.metrics(self.attempt) + f"{time.time_ns():020d}-{self.source}-{self._seq:06d}", _json(metrics))
                for ev in events:
                    self._seq += 1
                    self.kv.put(self.keys.event(self.source, self._seq, ev.get("time")), _json(ev))
                if progress is not None:
                    self.kv.put(self.keys.progress, _json(progress))
            except Exception as e:  # noqa: BLE001 - the GCS is briefly unreachable: drop, never fail training
                if not self._warned:
                    self._warned = True
                    print(f"[trainjob] could not report progress to the Ray GCS: {e}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()

    def _start(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="trainjob-ray-sink", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(FLUSH_INTERVAL)
            self.flush()


class StopWatcher:
    """A daemon thread that reads the job's stop key and, once it is there, asks this rank to stop.

    The ranks then agree on a step, save a checkpoint there and end (``runtime.stopping``).
    """

    def __init__(self, kv: KV, keys: Keys, interval: float = STOP_POLL) -> None:
        self.kv, self.keys, self.interval = kv, keys, interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trainjob-stop-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from trainjob.runtime import stopping

        while not self._done.wait(self.interval):
            try:
                if self.kv.get(self.keys.stop) is not None:
                    stopping.request()
                    return
            except Exception:  # noqa: BLE001 - GCS hiccup: ask again next time
                continue

    def close(self) -> None:
        self._done.set()


class _MergedOutput:
    """stderr joins stdout for the user's code, so a rank's log (the worker's ``.out`` file) is one stream."""

    def __init__(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = os.dup(2)
        os.dup2(1, 2)

    def restore(self) -> None:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self._saved, 2)
        os.close(self._saved)


def _json(value: Any) -> str:
    from trainjob.backends.ray.state import dumps

    return dumps(value)
