"""The Ray driver's initializer steps: each one run once on every node that can host a rank.

Ray nodes do not share a filesystem, and Ray Train places the ranks only once ``fit()`` has
started, so the driver runs each step of the spec's ``initializers``
(``trainjob.initializers.plan``) before it: as one small Ray task per alive node on which a rank
fits, pinned there (``NodeAffinitySchedulingStrategy``, ``soft=False``). The task runs
``python -m trainjob.runtime.initialize`` with the job's Python and environment (the job's
``runtime_env``, plus its secret env values, such as the hub token, from the GCS) into
``<job folder>/workdir/workspace/...`` on its node: the same folder the ranks there take as their
current directory. The status of each step is in ``<id>/initializers`` (``TrainJob.steps``), its
output in ``<id>/initlog/<step>`` (``get_job_logs(name, step="model-initializer")``), and events
``InitializerStarted``/``InitializerCompleted``/``InitializerFailed`` tell it. A step that fails
on any node fails the job with that node's last log line (the hub's error) and no rank starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from trainjob import contract
from trainjob.backends.ray.state import KV, Keys
from trainjob.core.spec import JobSpec


class InitializerFailed(RuntimeError):
    """An initializer step could not put its model or dataset in place on some node."""


def run_initializers(kv: KV, keys: Keys, event: Callable[..., None], job_dir: Path, spec: JobSpec, per_worker: dict[str, float]) -> None:
    """Run every initializer step in order on every node that can host a rank; raises ``InitializerFailed`` for the first that fails."""
    steps = spec.initializers
    if not steps:
        return
    import ray

    nodes = hosting_nodes(ray.nodes(), per_worker)
    statuses = {s["step"]: "Created" for s in steps}
    kv.put_json(keys.initializers, statuses)
    env = (kv.get_json(keys.secrets) or {}).get("env") or {}  # a hub token is a secret env value: never in Ray's runtime_env
    task = ray.remote(num_cpus=0, max_retries=0)(fetch_on_node)
    for step in steps:
        name = step["step"]
        statuses[name] = "Running"
        kv.put_json(keys.initializers, statuses)
        where = step.get("repo_id") or step.get("path")
        event("InitializerStarted", f"{name}: {where} -> {step['target']} on {len(nodes)} node(s)", {"step": name, "nodes": [ip for _, ip in nodes]})
        started = time.monotonic()
        refs = [task.options(scheduling_strategy=_pinned(node_id)).remote(step, str(job_dir / contract.WORKDIR), env) for node_id, _ in nodes]
        results = [_result(ref, ip, name) for ref, (_, ip) in zip(refs, nodes)]
        several = len(results) > 1
        kv.put(keys.init_log(name), "".join(_prefixed(r["log"], f"[{r['node_ip']}] " if several else "") for r in results))
        failed = [r for r in results if r["rc"] != 0]
        if not failed:
            statuses[name] = "Complete"
            kv.put_json(keys.initializers, statuses)
            event("InitializerCompleted", f"{name}: {step['target']} ready on {len(nodes)} node(s) in {time.monotonic() - started:.1f}s", {"step": name})
            continue
        statuses[name] = "Failed"
        kv.put_json(keys.initializers, statuses)
        last = _last_line(failed[0]["log"]).removeprefix(f"[{name}] failed: ") or f"exit code {failed[0]['rc']}"
        on = f" on node {failed[0]['node_ip']}" if several else ""
        event("InitializerFailed", f"{name}: {last}", {"step": name, "node_ip": failed[0]["node_ip"]})
        raise InitializerFailed(f"{name} failed ({where}){on}: {last}; its log: trainjob logs {keys.job_id} --step {name}")


def hosting_nodes(nodes: list[dict[str, Any]], per_worker: dict[str, float]) -> list[tuple[str, str]]:
    """``(node id, ip)`` of the alive nodes on which one rank fits (Ray Train places ranks only there)."""
    return [
        (n["NodeID"], n.get("NodeManagerAddress", ""))
        for n in nodes
        if n.get("Alive") and all((n.get("Resources") or {}).get(k, 0) >= v for k, v in per_worker.items())
    ]


def fetch_on_node(step: dict[str, Any], workdir: str, env: dict[str, str]) -> dict[str, Any]:
    """A Ray task on one node: the step's process, its exit code and output."""
    import ray

    Path(workdir).mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "trainjob.runtime.initialize", json.dumps(step), workdir],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=workdir, env={**os.environ, **env},
    )  # fmt: skip
    return {"rc": proc.returncode, "log": proc.stdout.decode(errors="replace"), "node_ip": ray.util.get_node_ip_address()}


def _pinned(node_id: str):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


def _result(ref: Any, ip: str, name: str) -> dict[str, Any]:
    import ray

    try:
        return ray.get(ref)
    except Exception as e:  # noqa: BLE001 - a node that died or a task Ray could not run fails the step alike
        return {"rc": 1, "log": f"[{name}] failed: {type(e).__name__}: {e}\n", "node_ip": ip}


def _prefixed(text: str, prefix: str) -> str:
    return "".join(prefix + line for line in text.splitlines(keepends=True)) if prefix else text


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
