"""A small Ray job that writes into a job's GCS keys for a client that reaches only the Jobs API.

``python -m trainjob.backends.ray.relay stop JOB_ID`` asks the job to stop gracefully: it writes
the ``stop`` key (and the ``StopRequested`` event) that the driver and the ranks poll, exactly what
a client with a GCS connection writes, so the ranks agree on a step and save a checkpoint there.
``ray job stop`` could not do it: Ray ends the driver (SIGTERM, then SIGKILL seconds later) and
with it the job's actors, before any checkpoint.

``python -m trainjob.backends.ray.relay delete JOB_ID [PACKAGE_URI]`` removes an ended job's keys,
its state mirror file (``mirror``) on this node, its job folder (``<home>/jobs/<id>``, as the
driver recorded it) and its submission package if still there. The client submits it after Ray
has ended the job, then deletes the Ray job record.

Both print one JSON line; the exit status is 0 when done.
Cost: one small Ray job, about 1-2 s (a Python start, ``ray.init``, a few GCS writes).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from trainjob.backends.ray.state import KV, EventWriter, Keys


def stop(kv: KV, job_id: str) -> dict:
    """Written even before the job's driver has put its record in (the client checked with Ray that the job exists): it stops at its start."""
    keys = Keys(job_id)
    asked = kv.claim_json(keys.stop, {"time": time.time()})
    if asked:
        EventWriter(kv, keys, "cli")("StopRequested", "stop requested by the user")
    return {"stop": "requested" if asked else "already requested"}


def delete(kv: KV, job_id: str, package: str | None = None) -> dict:
    import ray

    from trainjob.backends.ray.mirror import mirror_filename

    keys = Keys(job_id)
    driver = kv.get_json(keys.driver) or {}
    removed = []
    folder = Path(driver["job_dir"]) if driver.get("job_dir") else None
    if folder is not None and folder.name == job_id and folder.parent.name == "jobs" and folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)
        removed.append("job_dir")
    mirror = Path(ray._private.worker._global_node.get_logs_dir_path()) / mirror_filename(job_id)
    if mirror.exists():
        mirror.unlink()
        removed.append("mirror")
    if package:
        from ray.experimental.internal_kv import _internal_kv_del

        _internal_kv_del(package)
    removed.append(f"{kv.delete_prefix(keys.prefix)} keys")
    return {"deleted": removed}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[0] not in ("stop", "delete"):
        print("usage: python -m trainjob.backends.ray.relay stop|delete JOB_ID [PACKAGE_URI] (submitted by trainjob's Ray backend)", file=sys.stderr)
        return 2
    import ray

    ray.init(logging_level="WARNING")  # inside a Ray job: the cluster it runs on
    kv = KV.in_cluster()
    out = stop(kv, argv[1]) if argv[0] == "stop" else delete(kv, argv[1], argv[2] if len(argv) > 2 else None)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    import os

    code = main()
    sys.stdout.flush()
    os._exit(code)  # skip Ray's shutdown: the relay's job ends as soon as its writes are done
