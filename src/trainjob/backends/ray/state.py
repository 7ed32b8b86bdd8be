"""A Ray job's state, kept in the cluster itself: Ray's GCS key-value store, namespace ``trainjob``.

Everything the client shows (progress, metrics history, events, errors, the outcome) is written
here by the job's driver and workers and read back by any client that reaches the cluster. So
nothing depends on a port on a worker, on a process staying alive after the job, or on the client
that submitted the job: a second client on another machine sees the same job. Keys (``<id>`` is
the trainjob id, which is also the Ray submission id):

====================================  =========================================================
``<id>/job``                          the job record: name, spec (secrets masked), created_at
``<id>/payload``                      the pickled function and its arguments, signed
``<id>/signing``                      the job's signing key (``integrity``): the payload and the
                                      return value are signed with it
``<id>/secrets``                      the real values of the spec's masked fields (``trainjob.masking``):
                                      secret env values reach the ranks here, not through Ray's
                                      ``runtime_env``, which Ray's dashboard shows to anyone
``<id>/driver``                       where the driver runs, the job folder it made
``<id>/initializers``                 each initializer step's status (``initializers``)
``<id>/initlog/<step>``               an initializer step's output, every node's
``<id>/attempt/<NNNN>``               one per attempt (Ray Train worker group), claimed by rank 0
``<id>/ranks/<NNNN>/<RRRRR>``         each rank of each attempt: node, pid, Ray actor id (logs)
``<id>/progress``                     the latest progress document (DESIGN.md section 3)
``<id>/metrics/<NNNN>/<seq>``         logged entries, a list per key, in order
``<id>/events/<time_ns>-<src>-<seq>``  one event per key; the key sorts by time
``<id>/errors/<NNNN>/<RRRRR>``        a rank's exception; ``errors/<NNNN>/first`` the first one
``<id>/checkpoints``                  rank 0's view of its output_dir at the end of an attempt
``<id>/return``                       rank 0's return value (JSON when plain, else cloudpickle), signed
``<id>/stop``                         present: a stop was requested
``<id>/outcome``                      the final status, message, error and result (written once)
====================================  =========================================================

The values are JSON except ``payload`` and ``return``. Writes that decide something
(the attempt number, the first error, the outcome) use put-if-absent, so the first writer wins and
a terminal status is never overwritten, like ``Store.transition`` does locally.

This module imports Ray lazily: the client needs only a GCS connection, not ``ray.init``.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from typing import Any, Iterable, Mapping

from trainjob.types import JobStatus

NAMESPACE = b"trainjob"
CONNECT_TIMEOUT = 5.0


def attempt_tag(attempt: int) -> str:
    return f"{attempt:04d}"


def rank_tag(rank: int) -> str:
    return f"{rank:05d}"


class Keys:
    """The key names of one job (see the module docstring)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.prefix = f"{job_id}/"

    @property
    def job(self) -> str:
        return f"{self.job_id}/job"

    @property
    def payload(self) -> str:
        return f"{self.job_id}/payload"

    @property
    def secrets(self) -> str:
        return f"{self.job_id}/secrets"

    @property
    def driver(self) -> str:
        return f"{self.job_id}/driver"

    @property
    def initializers(self) -> str:
        return f"{self.job_id}/initializers"

    def init_log(self, step: str) -> str:
        return f"{self.job_id}/initlog/{step}"

    @property
    def progress(self) -> str:
        return f"{self.job_id}/progress"

    @property
    def checkpoints(self) -> str:
        return f"{self.job_id}/checkpoints"

    @property
    def return_value(self) -> str:
        return f"{self.job_id}/return"

    @property
    def stop(self) -> str:
        return f"{self.job_id}/stop"

    @property
    def outcome(self) -> str:
        return f"{self.job_id}/outcome"

    def attempts(self) -> str:
        return f"{self.job_id}/attempt/"

    def attempt(self, n: int) -> str:
        return f"{self.job_id}/attempt/{attempt_tag(n)}"

    def ranks(self, attempt: int | None = None) -> str:
        return f"{self.job_id}/ranks/" + ("" if attempt is None else f"{attempt_tag(attempt)}/")

    def rank(self, attempt: int, rank: int) -> str:
        return f"{self.job_id}/ranks/{attempt_tag(attempt)}/{rank_tag(rank)}"

    def metrics(self, attempt: int | None = None) -> str:
        return f"{self.job_id}/metrics/" + ("" if attempt is None else f"{attempt_tag(attempt)}/")

    def events(self) -> str:
        return f"{self.job_id}/events/"

    def event(self, source: str, seq: int, at: float | None = None) -> str:
        ns = int((at if at is not None else time.time()) * 1e9)
        return f"{self.job_id}/events/{ns:020d}-{source}-{seq:06d}"

    def errors(self, attempt: int | None = None) -> str:
        return f"{self.job_id}/errors/" + ("" if attempt is None else f"{attempt_tag(attempt)}/")

    def error(self, attempt: int, rank: int) -> str:
        return f"{self.job_id}/errors/{attempt_tag(attempt)}/{rank_tag(rank)}"

    def first_error(self, attempt: int) -> str:
        return f"{self.job_id}/errors/{attempt_tag(attempt)}/first"


class KV:
    """Ray's GCS key-value store, namespace ``trainjob``; str keys, bytes or JSON values.

    ``gcs`` is anything with GcsClient's ``internal_kv_*`` methods: a ``ray._raylet.GcsClient``
    (client side, a direct connection), the connected worker's own client (inside the cluster), or
    ``_RayClientGcs`` (through a ``ray://`` Ray Client connection).
    """

    def __init__(self, gcs: Any) -> None:
        self._gcs = gcs

    # ---- constructors ------------------------------------------------------------------
    @classmethod
    def in_cluster(cls) -> "KV":
        """In a Ray driver, task or actor (after ``ray.init``): the process's own GCS connection."""
        from ray.experimental import internal_kv

        gcs = internal_kv.internal_kv_get_gcs_client()
        if gcs is None:
            import ray

            gcs = ray._private.worker.global_worker.gcs_client
        return cls(gcs)

    @classmethod
    def connect(cls, gcs_address: str) -> "KV":
        """A direct connection to the GCS at ``host:port`` (no ``ray.init``: no driver, ~10 ms).

        Raises ``ConnectionError`` at once if nothing listens there (GcsClient itself would retry
        for a minute).
        """
        host, _, port = gcs_address.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT):
                pass
        except (OSError, ValueError) as e:
            raise ConnectionError(f"cannot reach the Ray GCS at {gcs_address}: {e}") from e
        from ray._raylet import GcsClient

        return cls(GcsClient(address=gcs_address))

    @classmethod
    def through_ray_client(cls) -> "KV":
        """Through the current ``ray://`` connection (``ray.init("ray://...")`` already called)."""
        return cls(_RayClientGcs())

    # ---- bytes -------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        return self._gcs.internal_kv_get(key.encode(), NAMESPACE)

    def put(self, key: str, value: bytes | str) -> None:
        self._gcs.internal_kv_put(key.encode(), _bytes(value), True, NAMESPACE)

    def claim(self, key: str, value: bytes | str) -> bool:
        """Put only if absent; True if this call created the key (the first writer wins)."""
        return bool(self._gcs.internal_kv_put(key.encode(), _bytes(value), False, NAMESPACE))

    def keys(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix``, sorted."""
        return sorted(k.decode() for k in self._gcs.internal_kv_keys(prefix.encode(), NAMESPACE))

    def multi_get(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The keys that exist, with their values."""
        keys = list(keys)
        if not keys:
            return {}
        got = self._gcs.internal_kv_multi_get([k.encode() for k in keys], NAMESPACE)
        return {k.decode(): v for k, v in got.items() if v is not None}

    def scan(self, prefix: str) -> list[tuple[str, bytes]]:
        """Every (key, value) under ``prefix``, sorted by key."""
        got = self.multi_get(self.keys(prefix))
        return sorted(got.items())

    def delete_prefix(self, prefix: str) -> int:
        return int(self._gcs.internal_kv_del(prefix.encode(), True, NAMESPACE) or 0)

    def delete(self, key: str) -> None:
        self._gcs.internal_kv_del(key.encode(), False, NAMESPACE)

    # ---- JSON --------------------------------------------------------------------------
    def get_json(self, key: str) -> Any:
        raw = self.get(key)
        return None if raw is None else json.loads(raw)

    def put_json(self, key: str, value: Any) -> None:
        self.put(key, dumps(value))

    def claim_json(self, key: str, value: Any) -> bool:
        return self.claim(key, dumps(value))

    def scan_json(self, prefix: str) -> list[tuple[str, Any]]:
        out = []
        for k, v in self.scan(prefix):
            try:
                out.append((k, json.loads(v)))
            except ValueError:
                continue  # not ours, or cut short: skip rather than fail every reader
        return out


class _RayClientGcs:
    """GcsClient's methods over a Ray Client (``ray://``) connection, via ``ray.experimental.internal_kv``."""

    def internal_kv_get(self, key: bytes, namespace: bytes) -> bytes | None:
        from ray.experimental import internal_kv

        return internal_kv._internal_kv_get(key, namespace=namespace)

    def internal_kv_put(self, key: bytes, value: bytes, overwrite: bool, namespace: bytes) -> int:
        from ray.experimental import internal_kv

        already = internal_kv._internal_kv_put(key, value, overwrite, namespace=namespace)
        return 0 if already else 1

    def internal_kv_keys(self, prefix: bytes, namespace: bytes) -> list[bytes]:
        from ray.experimental import internal_kv

        return list(internal_kv._internal_kv_list(prefix, namespace=namespace))

    def internal_kv_multi_get(self, keys: list[bytes], namespace: bytes) -> dict[bytes, bytes | None]:
        return {k: self.internal_kv_get(k, namespace) for k in keys}

    def internal_kv_del(self, key: bytes, del_by_prefix: bool, namespace: bytes) -> int:
        from ray.experimental import internal_kv

        return internal_kv._internal_kv_del(key, del_by_prefix=del_by_prefix, namespace=namespace)


def dumps(value: Any) -> str:
    """JSON; NaN/inf become null (JSON has no NaN); unknown objects become their str()."""
    from trainjob.runtime.sinks import dumps_line

    return dumps_line(value).rstrip("\n")


def writer_tag() -> str:
    """A short random name for one writer of events (keeps event keys unique across processes)."""
    return secrets.token_hex(3)


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


# ---- reading a job's history ---------------------------------------------------------------
def read_metrics(kv: KV, keys: Keys) -> list[dict[str, Any]]:
    """Every logged entry, attempt by attempt, in the order rank 0 logged them."""
    out: list[dict[str, Any]] = []
    for _, batch in kv.scan_json(keys.metrics()):
        if isinstance(batch, list):
            out.extend(e for e in batch if isinstance(e, dict))
    return out


def read_events(kv: KV, keys: Keys) -> list[dict[str, Any]]:
    """Every event ``{"time", "reason", "message", "data", ...}``, oldest first."""
    return [e for _, e in kv.scan_json(keys.events()) if isinstance(e, dict) and "reason" in e]


def last_event(events: list[dict[str, Any]], reason: str) -> dict[str, Any] | None:
    for e in reversed(events):
        if e.get("reason") == reason:
            return e
    return None


class EventWriter:
    """Synchronous event writes for the client and the driver (rank 0 queues through ``RaySink``)."""

    def __init__(self, kv: KV, keys: Keys, source: str) -> None:
        self.kv, self.keys = kv, keys
        self.source = f"{source}{writer_tag()}"
        self._seq = 0

    def __call__(self, reason: str, message: str, data: dict[str, Any] | None = None, attempt: int | None = None) -> None:
        self.write({"time": time.time(), "reason": reason, "message": message, "data": data or {}, "attempt": attempt})

    def write(self, event: dict[str, Any]) -> None:
        self._seq += 1
        self.kv.put(self.keys.event(self.source, self._seq, event.get("time")), dumps(event))


class RayState:
    """The Ray backend's ``core.state.JobState``: a job's lifecycle in the GCS keys above.

    ``transition`` to a terminal status and ``record_outcome`` claim ``<id>/outcome`` (the first
    writer wins); before the outcome, Ray itself and the keys the ranks write say how far a job
    is (``RayBackend`` derives Queued and Running from them), so a non-terminal ``transition``
    records its fields in ``<id>/driver``, the driver's own record (where it runs, the scaling it
    waits for), with the status and the time. ``record_error`` claims
    ``errors/<attempt>/first``. ``events``: one key each, written through ``events`` when given
    (a process keeps one writer, so its keys stay in order), else through a writer of its own
    named ``source``.
    """

    def __init__(self, kv: KV, source: str = "st", events: EventWriter | None = None) -> None:
        self.kv = kv
        self.source = source
        self._tag = f"{source}{writer_tag()}"  # keeps this writer's metrics keys apart from other writers'
        self._writers: dict[str, EventWriter] = {events.keys.job_id: events} if events is not None else {}
        self._seq = 0

    def _writer(self, job_id: str) -> EventWriter:
        if job_id not in self._writers:
            self._writers[job_id] = EventWriter(self.kv, Keys(job_id), self.source)
        return self._writers[job_id]

    def transition(self, job_id: str, status: JobStatus, **fields: Any) -> bool:
        status = JobStatus.parse(status)
        keys = Keys(job_id)
        if status.is_terminal:
            return self.record_outcome(job_id, status, fields.get("message"), fields.get("error"), fields.get("result") or {})
        if self.kv.get(keys.outcome) is not None:
            return False
        record = {**(self.kv.get_json(keys.driver) or {}), **fields, "status": status.value, "status_at": time.time()}
        self.kv.put_json(keys.driver, record)
        return True

    def add_event(self, job_id: str, reason: str, message: str, data: dict[str, Any] | None = None, at: float | None = None) -> None:
        data = data or {}
        attempt = data.get("attempt") if isinstance(data.get("attempt"), int) else None
        self._writer(job_id).write({"time": time.time() if at is None else at, "reason": reason, "message": message, "data": data, "attempt": attempt})

    def set_progress(self, job_id: str, progress: dict[str, Any], at: float | None = None) -> None:
        self.kv.put_json(Keys(job_id).progress, progress)

    def append_metrics(self, job_id: str, attempt: int, entries: list[dict[str, Any]]) -> None:
        if not entries:
            return
        self._seq += 1
        rows = [e if "attempt" in e else {**e, "attempt": attempt} for e in entries]
        self.kv.put_json(Keys(job_id).metrics(attempt) + f"{time.time_ns():020d}-{self._tag}-{self._seq:06d}", rows)

    def record_error(self, job_id: str, attempt: int, error: Mapping[str, Any]) -> bool:
        return self.kv.claim_json(Keys(job_id).first_error(attempt), dict(error))

    def record_outcome(self, job_id: str, status: JobStatus, message: str | None, error: Mapping[str, Any] | None, result: Mapping[str, Any]) -> bool:
        status = JobStatus.parse(status)
        outcome = {"status": status.value, "message": message, "error": dict(error) if error else None, "result": dict(result), "finished_at": time.time()}
        return self.kv.claim_json(Keys(job_id).outcome, outcome)

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return read_events(self.kv, Keys(job_id))

    def metrics(self, job_id: str) -> list[dict[str, Any]]:
        return read_metrics(self.kv, Keys(job_id))
