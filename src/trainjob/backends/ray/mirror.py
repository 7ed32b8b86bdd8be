"""A job's GCS state, mirrored into a file that the dashboard's log endpoint serves.

For clients that reach only the dashboard (Jobs API) port (``RayBackendConfig(address="http://...")``
without ``gcs_address``): such a client submits with ``TRAINJOB_STATE_MIRROR=1`` in the job's
environment and reads every job through ``DashboardGcs``. The driver, when the job's environment
sets ``TRAINJOB_STATE_MIRROR=1``, writes every ``INTERVAL`` seconds a JSON copy of the job's keys
(``state``; not the payload, the secrets or the job key) to ``trainjob-<id>.state.json`` in the head
node's Ray log folder, replaced atomically; the client reads it with
``GET /api/v0/logs/file?node_id=<driver node>&filename=...`` (about 10 ms here) through
``MirrorGcs``, which has GcsClient's read methods, so ``state.KV`` and the readers built on it
work unchanged. Staleness: at most ``INTERVAL`` plus one request. Cost: the driver scans the
job's keys each interval, and each read moves the whole file (it grows with the metrics history).

The client's writes have their own channels: submit (``bundle``), stop and delete (``relay``).
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from trainjob.backends.ray.state import KV, Keys

ENV = "TRAINJOB_STATE_MIRROR"
INTERVAL = 0.5  # seconds between the driver's copies
READ_TTL = 0.2  # seconds a client reuses the file it read (one _snapshot reads several keys)


def mirror_filename(job_id: str) -> str:
    return f"trainjob-{job_id}.state.json"


def _private(keys: Keys) -> set[str]:
    from trainjob.backends.ray.integrity import signing_key_name

    return {keys.payload, keys.secrets, signing_key_name(keys)}


def snapshot(kv: KV, keys: Keys) -> dict[str, Any]:
    """The job's keys as JSON: text values as ``{"t": ...}``, binary ones (the signed return value) as ``{"b": base64}``."""
    private = _private(keys)
    out: dict[str, Any] = {}
    for key, raw in kv.scan(keys.prefix):
        if key in private:
            continue
        try:
            out[key] = {"t": raw.decode()}
        except UnicodeDecodeError:
            out[key] = {"b": base64.b64encode(raw).decode()}
    return {"version": 1, "time": time.time(), "keys": out}


class StateMirror:
    """The driver's writer thread (started only when the job's environment asks for it)."""

    current: "StateMirror | None" = None  # the driver's mirror, for an exit that skips ``close`` (``flush``)

    def __init__(self, kv: KV, keys: Keys, log_dir: Path, interval: float = INTERVAL) -> None:
        self.kv, self.keys, self.path, self.interval = kv, keys, Path(log_dir) / mirror_filename(keys.job_id), interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="trainjob-state-mirror", daemon=True)

    @classmethod
    def start_if_asked(cls, kv: KV, keys: Keys) -> "StateMirror | None":
        if os.environ.get(ENV) != "1":
            return None
        import ray

        mirror = cls(kv, keys, Path(ray._private.worker._global_node.get_logs_dir_path()))
        mirror._thread.start()
        cls.current = mirror
        return mirror

    @classmethod
    def flush(cls) -> None:
        """Write the current state now, if this process mirrors a job (before an ``os._exit``)."""
        if cls.current is not None:
            try:
                cls.current.write()
            except Exception as e:  # noqa: BLE001 - the process is ending anyway
                print(f"[trainjob] state mirror: {type(e).__name__}: {e}", flush=True)

    def write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(snapshot(self.kv, self.keys)))
        os.replace(tmp, self.path)

    def close(self) -> None:
        """Stop the thread and write the final state (the outcome included)."""
        self._done.set()
        self._thread.join(timeout=5)
        self.write()

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            try:
                self.write()
            except Exception as e:  # noqa: BLE001 - a GCS hiccup: the next interval tries again
                print(f"[trainjob] state mirror: {type(e).__name__}: {e}", flush=True)


class MirrorGcs:
    """GcsClient's read methods over a job's mirror file, read through the dashboard (client side).

    ``get_file`` is a callable that returns the file's bytes (``JobsAPI.get`` of the log endpoint).
    Writes are refused: the client's writes go through a relay job (``relay``).
    """

    def __init__(self, get_file, ttl: float = READ_TTL) -> None:
        self._get_file, self._ttl = get_file, ttl
        self._cached: tuple[float, dict[str, bytes]] | None = None

    @classmethod
    def through_dashboard(cls, api, job_id: str, node_id: str, ttl: float = READ_TTL) -> "MirrorGcs":
        return cls(lambda: api.get("/api/v0/logs/file", node_id=node_id, filename=mirror_filename(job_id), lines=-1), ttl)

    def refresh(self) -> None:
        """Forget the cached copy: the next read fetches the file."""
        self._cached = None

    def _data(self) -> dict[str, bytes]:
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > self._ttl:
            doc = json.loads(self._get_file() or b"{}")
            data = {k: (v["t"].encode() if "t" in v else base64.b64decode(v["b"])) for k, v in (doc.get("keys") or {}).items()}
            self._cached = (now, data)
        return self._cached[1]

    def internal_kv_get(self, key: bytes, namespace: bytes) -> bytes | None:
        return self._data().get(key.decode())

    def internal_kv_multi_get(self, keys: list[bytes], namespace: bytes) -> dict[bytes, bytes | None]:
        data = self._data()
        return {k: data.get(k.decode()) for k in keys}

    def internal_kv_keys(self, prefix: bytes, namespace: bytes) -> list[bytes]:
        p = prefix.decode()
        return [k.encode() for k in self._data() if k.startswith(p)]

    def internal_kv_put(self, key: bytes, value: bytes, overwrite: bool, namespace: bytes) -> int:
        raise ReadOnlyError(key)

    def internal_kv_del(self, key: bytes, del_by_prefix: bool, namespace: bytes) -> int:
        raise ReadOnlyError(key)


class ReadOnlyError(RuntimeError):
    """A write on the dashboard-only store: a code path that should have used a relay job."""

    def __init__(self, key: bytes) -> None:
        super().__init__(f"internal error: a write of {key.decode(errors='replace')!r} through the Jobs API alone (the client has no GCS connection; writes go through trainjob.backends.ray.relay)")


class DashboardGcs:
    """GcsClient's read methods over every job, through the dashboard alone (client side).

    A key's first segment is its job id (``state.Keys``). The job's record comes from Ray's job
    ``metadata`` (``trainjob.record``: the client puts it there at submit, so a job whose driver
    has not started yet is listed), every other key from the job's mirror file on its driver's node
    (``MirrorGcs``). Ray's record of a job is asked for at most once per ``info_ttl`` seconds
    (``prime`` gives it one already read, e.g. by ``list_jobs``).
    """

    def __init__(self, api, info_ttl: float = 1.0) -> None:
        self.api, self.info_ttl = api, info_ttl
        self._infos: dict[str, tuple[float, Any]] = {}
        self._mirrors: dict[tuple[str, str], MirrorGcs] = {}
        self._lock = threading.Lock()

    def prime(self, job_id: str, info) -> None:
        with self._lock:
            self._infos[job_id] = (time.monotonic(), info)

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._infos.pop(job_id, None)
            for k in [k for k in self._mirrors if k[0] == job_id]:
                del self._mirrors[k]

    def refresh(self, job_id: str) -> None:
        """The next read of ``job_id`` asks Ray and reads the mirror file again."""
        with self._lock:
            self._infos.pop(job_id, None)
            mirrors = [m for k, m in self._mirrors.items() if k[0] == job_id]
        for m in mirrors:
            m.refresh()

    def _info(self, job_id: str):
        with self._lock:
            hit = self._infos.get(job_id)
        if hit is not None and time.monotonic() - hit[0] < self.info_ttl:
            return hit[1]
        info = self.api.info(job_id)
        self.prime(job_id, info)
        return info

    def _job(self, job_id: str) -> dict[str, bytes]:
        info = self._info(job_id)
        if info is None or info.metadata.get("trainjob.id") != job_id or "trainjob.record" not in info.metadata:
            return {}  # no such Ray job, or not one a dashboard-only client submitted
        data: dict[str, bytes] = {}
        if info.driver_node_id:
            with self._lock:
                mirror = self._mirrors.setdefault((job_id, info.driver_node_id), MirrorGcs.through_dashboard(self.api, job_id, info.driver_node_id))
            try:
                data = dict(mirror._data())
            except (OSError, ValueError):
                data = {}  # no file yet (the driver is starting), or the node is gone
        data.setdefault(f"{job_id}/job", info.metadata["trainjob.record"].encode())
        return data

    def internal_kv_get(self, key: bytes, namespace: bytes) -> bytes | None:
        k = key.decode()
        return self._job(k.partition("/")[0]).get(k)

    def internal_kv_multi_get(self, keys: list[bytes], namespace: bytes) -> dict[bytes, bytes | None]:
        by_job: dict[str, dict[str, bytes]] = {}
        out = {}
        for key in keys:
            k = key.decode()
            job = k.partition("/")[0]
            if job not in by_job:
                by_job[job] = self._job(job)
            out[key] = by_job[job].get(k)
        return out

    def internal_kv_keys(self, prefix: bytes, namespace: bytes) -> list[bytes]:
        p = prefix.decode()
        return [k.encode() for k in self._job(p.partition("/")[0]) if k.startswith(p)]

    def internal_kv_put(self, key: bytes, value: bytes, overwrite: bool, namespace: bytes) -> int:
        raise ReadOnlyError(key)

    def internal_kv_del(self, key: bytes, del_by_prefix: bool, namespace: bytes) -> int:
        raise ReadOnlyError(key)
