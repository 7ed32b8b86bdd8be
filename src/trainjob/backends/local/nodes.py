"""Ending a local job's processes: signal its ranks, end its nodes, reap what a dead agent left.

The supervisor is a subreaper, so every process of the job (torchrun agents, ranks, installers)
is its descendant; ranks also record themselves in ``run/pids/`` (pid and start time, so a
reused pid is never signalled). The node processes (the agents) are waited for through their
``Popen`` objects only (see ``NodeControl.kill``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from trainjob import contract
from trainjob.backends.local import procs
from trainjob.backends.local.attempt import Attempt
from trainjob.core.state import JobState


class NodeControl:
    """The processes of one job's attempts, as its supervisor ends them. Records ``EndingNodes`` in ``state``."""

    def __init__(self, run_dir: Path, world: int, state: JobState, job_id: str) -> None:
        self.run_dir = run_dir
        self.world = world
        self.state = state
        self.job_id = job_id

    def recorded(self, pattern: str) -> list[Any]:
        """Live processes recorded in ``run/pids/`` matching ``pattern`` (identity checked: pid + start time)."""
        return procs.recorded_processes(self.run_dir / contract.PIDS_DIR, pattern)

    def rank_processes(self) -> dict[int, Any]:
        """Each rank that recorded itself in ``run/pids/``: its live process, or None once it ended."""
        out: dict[int, Any] = {}
        for f in (self.run_dir / contract.PIDS_DIR).glob("rank-*.json"):
            try:
                rank = int(f.stem.split("-", 1)[1])
                rec = json.loads(f.read_text())
            except (OSError, ValueError, IndexError):
                continue
            out[rank] = procs.process(rec.get("pid"), rec.get("start"))
        return out

    def end_all(self, attempt: Attempt | None) -> int:
        """End every process of the job (agents, ranks, installers): the supervisor is giving up.

        Returns how many were alive.
        """
        import psutil

        found = {c.pid: c for c in psutil.Process().children(recursive=True)}
        for p in self.recorded("*.json"):
            found.setdefault(p.pid, p)
        if not found:
            return 0
        if attempt is not None:
            self.kill(attempt, list(found.values()), signal.SIGKILL, grace=5.0)
        else:
            procs.kill_tree(list(found.values()), grace=5.0, sig=signal.SIGKILL)
        return len(found)

    def signal_ranks(self, attempt: Attempt, sig: int) -> None:
        """Send ``sig`` to every rank (not to torchrun's agents: they would tear the ranks down on their own terms)."""
        import psutil

        targets: dict[int, psutil.Process] = {}
        for i, node in enumerate(attempt.nodes):
            if i in attempt.exit_codes:
                continue
            try:
                p = psutil.Process(node.pid)
                ranks = [p] if self.world == 1 else p.children()
            except psutil.NoSuchProcess:
                continue
            targets.update({r.pid: r for r in ranks})
        for r in self.recorded("rank-*.json"):
            targets.setdefault(r.pid, r)
        for p in targets.values():
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass

    def end_nodes(self, attempt: Attempt, why: str, sig: int = signal.SIGKILL) -> None:
        """End every node still running (and its ranks), recording that the supervisor did it."""
        import psutil

        alive = {i: n for i, n in enumerate(attempt.nodes) if i not in attempt.exit_codes and n.poll() is None}
        if not alive:
            return
        if attempt.ending_since is None:
            attempt.ending_since = time.time()
        attempt.ended.update(alive)
        self.state.add_event(
            self.job_id,
            "EndingNodes",
            f"ending {', '.join(f'node-{i}' for i in alive)}: {why}",
            {"attempt": attempt.number, "nodes": sorted(alive), "signal": signal.Signals(sig).name},
        )
        found: dict[int, psutil.Process] = {}
        for n in alive.values():
            try:
                root = psutil.Process(n.pid)
                found[root.pid] = root
                found.update({c.pid: c for c in root.children(recursive=True)})
            except psutil.NoSuchProcess:
                continue
        self.kill(attempt, list(found.values()), sig, grace=5.0)
        self.reap_orphans(attempt)

    def kill(self, attempt: Attempt, targets: list[Any], sig: int, grace: float) -> None:
        """Signal ``targets``, wait up to ``grace``, SIGKILL what is left.

        The attempt's node processes are waited for through their ``Popen`` objects, never by
        psutil: psutil would reap them and ``Popen.poll()`` would then report exit code 0 for a
        node that was killed (the supervisor would call a failed attempt a success).
        """
        import psutil

        own = {n.pid: n for n in attempt.nodes}
        for p in targets:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        deadline = time.monotonic() + grace
        others = [p for p in targets if p.pid not in own]
        _, left = psutil.wait_procs(others, timeout=grace)
        for p in left:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        for pid, node in own.items():
            if node.returncode is not None or pid not in {p.pid for p in targets}:
                continue
            try:
                node.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
        psutil.wait_procs(left, timeout=2)

    def reap_orphans(self, attempt: Attempt) -> None:
        """End ranks left behind by a dead agent (re-parented to us as subreaper, or recorded in pids/)."""
        import psutil

        own = {n.pid for n in attempt.nodes if n.returncode is None}  # still to be polled: see kill
        found = {c.pid: c for c in psutil.Process().children(recursive=True) if c.pid not in own}
        for p in self.recorded("*.json"):
            if p.pid not in own:
                found.setdefault(p.pid, p)
        if found:
            self.kill(attempt, list(found.values()), signal.SIGTERM, grace=2.0)
