"""Job logs on Ray: the Ray Train workers' own output files and the driver's log, through the dashboard."""

from __future__ import annotations

import time
from typing import Any, Iterator

from trainjob.backends.records import parse_log_step
from trainjob.backends.ray.state import Keys

FOLLOW_INTERVAL = 1.0  # seconds between log polls with follow=True
_RAY_MARKERS = (":job_id:", ":actor_name:", ":task_name:", ":task_attempt_start:", ":task_attempt_end:")


class Logs:
    """``RayBackend``'s ``get_job_logs`` (a mixin: it uses the backend's ``conn`` and ``_snapshot``)."""

    def get_job_logs(self, job_id: str, step: str = "node-0", follow: bool = False) -> Iterator[str]:
        """Rank logs are the Ray Train workers' own output files, read through the dashboard's log API.

        ``node-K``: the ranks Ray Train placed on its node K (prefixed ``[rank R]`` when there are
        several); ``rank-R``: one rank, every attempt in turn; ``driver`` (or ``supervisor``): the
        Ray job's driver output, which Ray also streams worker output into; ``model-initializer``/
        ``dataset-initializer``: the step's output on every node (kept in the GCS once it ended).
        """
        snap = self._snapshot(job_id)
        spec = snap.spec
        if step in [s["step"] for s in spec.initializers]:
            return self._stream_logs(job_id, lambda backend, job_id: [(f"init:{job_id}/{step}", "")], follow)
        world, nodes = spec.world_size, spec.num_nodes
        sources = _log_sources(step, nodes, world)
        return self._stream_logs(job_id, sources, follow)

    def _stream_logs(self, job_id: str, select, follow: bool) -> Iterator[str]:
        seen: dict[str, int] = {}
        while True:
            done = self._snapshot(job_id).status.is_terminal if follow else True  # state before content: no lost tail
            for source, prefix in select(self, job_id):
                text = self._read_log(source)
                lines = text.splitlines()
                if not done and text and not text.endswith("\n"):
                    lines = lines[:-1]  # a line still being written
                start = seen.get(source, 0)
                for line in lines[start:]:
                    yield prefix + line
                seen[source] = max(start, len(lines))
            if done:
                return
            time.sleep(FOLLOW_INTERVAL)

    def _read_log(self, source: str) -> str:
        kind, _, ident = source.partition(":")
        try:
            if kind == "driver":
                return self.conn.api.logs(ident)
            if kind == "init":  # an initializer step's output, kept in the GCS by the driver
                job, _, step = ident.partition("/")
                return (self.conn.kv.get(Keys(job).init_log(step)) or b"").decode(errors="replace")
            raw = self.conn.api.get("/api/v0/logs/file", actor_id=ident, lines=-1, suffix="out").decode(errors="replace")
        except Exception as e:  # noqa: BLE001 - a node that is gone takes its log files with it
            return f"[trainjob] the log of {source} is not available from Ray: {type(e).__name__}: {e}\n"
        return "".join(line for line in raw.splitlines(keepends=True) if not line.startswith(_RAY_MARKERS))

    def _ranks_by_attempt(self, job_id: str) -> list[list[dict[str, Any]]]:
        kv, keys = self.conn.kv, Keys(job_id)
        per: dict[str, list[dict[str, Any]]] = {}
        for key, rec in kv.scan_json(keys.ranks()):
            per.setdefault(key.split("/")[2], []).append(rec)
        return [per[a] for a in sorted(per)]


def _log_sources(step: str, nodes: int, world: int):
    """Which logs make up ``step``: a callable (backend, job_id) -> [(source, line prefix)]."""
    kind, k = parse_log_step(step, nodes, world, ("driver", "supervisor"))
    if kind in ("driver", "supervisor"):
        return lambda backend, job_id: [(f"driver:{job_id}", "")]

    def select(backend: Logs, job_id: str) -> list[tuple[str, str]]:
        out = []
        for ranks in backend._ranks_by_attempt(job_id):
            mine = sorted((r for r in ranks if (r.get("rank") if kind == "rank" else r.get("node_rank")) == k), key=lambda r: r["rank"])
            several = kind == "node" and len(mine) > 1
            out += [(f"actor:{r['actor_id']}", f"[rank {r['rank']}] " if several else "") for r in mine if r.get("actor_id")]
        return out

    return select


