"""Enforcing ``resources_per_node['memory']`` for local jobs: a limit a job cannot exceed silently.

Mechanisms, the first that works here is used (``TRAINJOB_MEMORY_ENFORCEMENT`` = ``auto`` (default),
``cgroup``, ``watchdog`` or ``off`` forces one):

- ``cgroup-v2`` / ``cgroup-v1``: one memory cgroup per node of the job
  (``<the supervisor's cgroup>/trainjob/<job id>/node-<k>``), limited to the node's memory and
  without swap. Each rank moves itself into its node's cgroup before it runs user code
  (``trainjob.runtime.affinity``), so everything it and its children (data loader workers) allocate
  counts. Over the limit the kernel's OOM killer ends the largest process of the node (SIGKILL);
  the supervisor reads the cgroup's ``oom_kill`` counter and reports "exceeded its memory limit".
  Needs a writable cgroup (root, or a delegated cgroup v2 subtree such as systemd's user slice).
- ``watchdog``: the supervisor measures each node's process tree (PSS: shared pages such as torch's
  libraries counted once) every ``WATCHDOG_INTERVAL`` seconds and kills the node's processes when
  it is over the limit. It can overshoot for up to one interval, so it protects the machine less
  tightly than a cgroup; the job still fails with "exceeded its memory limit".

``RLIMIT_AS`` and ``RLIMIT_DATA`` are not used: they limit address space, not memory. A tiny
GPT-2 training process measured here had 1.4 GiB of data segment for 0.47 GiB resident, so a
limit that lets such a job run would be three times too loose for anything else.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from trainjob.resources import format_bytes

MODE_ENV = "TRAINJOB_MEMORY_ENFORCEMENT"
CGROUP_V1, CGROUP_V2, WATCHDOG, OFF = "cgroup-v1", "cgroup-v2", "watchdog", "off"
WATCHDOG_INTERVAL = 0.5


# ---- finding a cgroup we may write --------------------------------------------------------
def _read(path: str | Path) -> str:
    with open(path) as f:
        return f.read()


def find_cgroup_base(proc_cgroup: str, mountinfo: str, writable: Callable[[str], bool] = lambda p: os.access(p, os.W_OK)) -> tuple[str, str] | None:
    """Where job cgroups can be made: ``(version, folder)`` or None. Pure but for ``writable``.

    ``proc_cgroup`` and ``mountinfo`` are the texts of ``/proc/self/cgroup`` and
    ``/proc/self/mountinfo``. cgroup v2 needs a folder whose ``cgroup.subtree_control`` already
    enables ``memory`` (our own cgroup or its parent: a delegated subtree); v1 needs the memory
    hierarchy's folder of our cgroup (or the hierarchy's root).
    """
    v1_path = v2_path = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2_path = parts[2]
        elif "memory" in parts[1].split(","):
            v1_path = parts[2]
    v1_mount = v2_mount = None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        fstype, mount, opts = rfields[0], fields[4], rfields[2].split(",")
        if fstype == "cgroup2" and v2_mount is None:
            v2_mount = mount
        elif fstype == "cgroup" and "memory" in opts and v1_mount is None:
            v1_mount = mount
    if v2_mount and v2_path is not None:
        own = os.path.join(v2_mount, v2_path.lstrip("/"))
        for cand in (own, os.path.dirname(own.rstrip("/"))):
            if not cand.startswith(v2_mount):
                continue
            try:
                controls = _read(os.path.join(cand, "cgroup.subtree_control")).split()
            except OSError:
                continue
            if "memory" in controls and writable(cand):
                return CGROUP_V2, cand
    if v1_mount and v1_path is not None:
        for cand in (os.path.join(v1_mount, v1_path.lstrip("/")), v1_mount):
            if os.path.isdir(cand) and writable(cand):
                return CGROUP_V1, cand
    return None


def detect_mode(environ=os.environ) -> tuple[str, str | None, str]:
    """``(mode, cgroup folder or None, why)`` for this process, honouring ``TRAINJOB_MEMORY_ENFORCEMENT``."""
    wanted = (environ.get(MODE_ENV) or "auto").strip().lower()
    if wanted not in ("auto", "cgroup", "watchdog", "off"):
        raise ValueError(f"{MODE_ENV}={wanted!r}: one of auto, cgroup, watchdog, off")
    if wanted == "off":
        return OFF, None, f"{MODE_ENV}=off"
    if wanted == "watchdog":
        return WATCHDOG, None, f"{MODE_ENV}=watchdog"
    try:
        found = find_cgroup_base(_read("/proc/self/cgroup"), _read("/proc/self/mountinfo"))
    except OSError:
        found = None
    if found:
        return found[0], found[1], "a writable memory cgroup"
    if wanted == "cgroup":
        raise ValueError(f"{MODE_ENV}=cgroup but no writable memory cgroup was found (needs root or a delegated cgroup v2 subtree)")
    return WATCHDOG, None, "no writable memory cgroup here"


# ---- one job's limit -----------------------------------------------------------------------
@dataclass
class MemoryLimit:
    """The memory limit of one job's nodes and how it is enforced. Lives in the job's supervisor.

    A monitor thread (``start``) notices violations as they happen: in cgroup modes it reads the
    cgroups' ``oom_kill`` counters, in watchdog mode it measures and kills. Each violation is
    reported once, to the ``on_violation`` callback (an event) and by ``new_violations`` (the
    supervisor's root-cause analysis), whichever asks first.
    """

    job_id: str
    mode: str
    per_node: int  # bytes
    cgroups: list[str] = field(default_factory=list)  # one folder per node (cgroup modes)
    why: str = ""
    _reported: dict[int, int] = field(default_factory=dict)  # node -> OOM kills already seen
    _pending: list[dict] = field(default_factory=list)  # violations not yet taken by new_violations()
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _on_violation: Callable[[dict], None] | None = None

    def describe(self) -> str:
        return f"{format_bytes(self.per_node)} per node ({self.mode})"

    def oom_kills(self, node: int) -> int:
        """How many processes the kernel killed in node ``node``'s cgroup for exceeding the limit."""
        if self.mode not in (CGROUP_V1, CGROUP_V2) or node >= len(self.cgroups):
            return 0
        name = "memory.events" if self.mode == CGROUP_V2 else "memory.oom_control"
        try:
            for line in _read(os.path.join(self.cgroups[node], name)).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def new_violations(self) -> list[dict]:
        """Error records (the ``errors/rank-N.json`` shape) for violations not taken before."""
        with self._lock:
            found = self._check_cgroups()
            out, self._pending = self._pending, []
        self._report(found)  # seen here before the monitor thread saw them
        return out

    def _report(self, found: list[dict]) -> None:
        for record in found:
            if self._on_violation is None:
                continue
            try:
                self._on_violation(record)
            except Exception:  # noqa: BLE001 - reporting must not end the enforcement
                pass

    def _check_cgroups(self) -> list[dict]:
        """Caller holds the lock. New OOM kills become pending records; returns them."""
        found = []
        for node in range(len(self.cgroups)):
            n = self.oom_kills(node)
            if n > self._reported.get(node, 0):
                self._reported[node] = n
                what = "a process" if n == 1 else f"{n} processes"
                found.append(self._record(node, f"node-{node} exceeded its memory limit of {format_bytes(self.per_node)}: the kernel's OOM killer ended {what} of it"))
        self._pending.extend(found)
        return found

    def _record(self, node: int, message: str) -> dict:
        return {
            "rank": None,
            "node": node,
            "type": "MemoryLimitExceeded",
            "message": message,
            "time": time.time(),
            "traceback": "",
            "hint": f"resources_per_node['memory'] is {format_bytes(self.per_node)} per node: ask for more, or use less (smaller batches, fewer data loader workers)",
        }

    # ---- the monitor thread --------------------------------------------------------------
    def start(self, on_violation: Callable[[dict], None]) -> None:
        """Watch the job's nodes until ``close``; call ``on_violation(record)`` once per violation."""
        if self.mode == OFF or self._thread is not None:
            return
        self._on_violation = on_violation
        self._thread = threading.Thread(target=self._watch, name=f"memory-limit-{self.job_id}", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        import psutil

        me = psutil.Process()
        node_of: dict[int, int | None] = {}
        while not self._stop.wait(WATCHDOG_INTERVAL):
            if self.mode != WATCHDOG:
                with self._lock:
                    found = self._check_cgroups()
            else:
                found = self._measure(me, node_of)
            self._report(found)

    def _measure(self, me, node_of: dict[int, int | None]) -> list[dict]:
        """Watchdog mode: kill any node whose process tree uses more than the limit."""
        import psutil

        try:
            children = me.children()
        except psutil.Error:
            return []
        found = []
        for child in children:
            if child.pid not in node_of:
                node_of[child.pid] = _node_of(child, self.job_id)
            node = node_of[child.pid]
            if node is None:
                continue
            tree = [child]
            try:
                tree += child.children(recursive=True)
            except psutil.Error:
                pass
            used = sum(_pss(p) for p in tree)
            if used <= self.per_node:
                continue
            for p in tree:
                try:
                    p.send_signal(signal.SIGKILL)
                except psutil.Error:
                    pass
            node_of[child.pid] = None  # reported once, even while the killed process lingers
            record = self._record(node, f"node-{node} exceeded its memory limit of {format_bytes(self.per_node)} (it used {format_bytes(used)}): trainjob's memory watchdog ended it")
            with self._lock:
                self._pending.append(record)
            found.append(record)
        return found

    # ---- teardown ------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the monitor and remove the job's cgroups (possible once their processes ended)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        remove_cgroups(self.cgroups)


def _node_of(proc, job_id: str) -> int | None:
    """The node rank of one of the supervisor's children, if it is one of this job's node processes."""
    import psutil

    try:
        env = proc.environ()
    except psutil.Error:
        return None
    if env.get("TRAINJOB_JOB_ID") != job_id:
        return None
    try:
        return int(env.get("NODE_RANK", "0"))
    except ValueError:
        return None


def _pss(proc) -> int:
    import psutil

    try:
        info = proc.memory_full_info()
        return int(getattr(info, "pss", 0) or info.rss)
    except psutil.AccessDenied:
        try:
            return int(proc.memory_info().rss)
        except psutil.Error:
            return 0
    except psutil.Error:
        return 0


def setup(job_id: str, nodes: int, per_node: int, environ=os.environ) -> MemoryLimit:
    """Prepare the enforcement of ``per_node`` bytes for each of a job's ``nodes``.

    Falls back from a cgroup to the watchdog if making the cgroups fails (the reason is kept in
    ``why``), so a limit is always enforced unless ``TRAINJOB_MEMORY_ENFORCEMENT=off``.
    """
    mode, base, why = detect_mode(environ)
    if mode in (CGROUP_V1, CGROUP_V2):
        try:
            return MemoryLimit(job_id, mode, per_node, make_cgroups(mode, base, job_id, nodes, per_node), why)
        except OSError as e:
            if (environ.get(MODE_ENV) or "").lower() == "cgroup":
                raise
            mode, why = WATCHDOG, f"making a memory cgroup failed ({e})"
    return MemoryLimit(job_id, mode, per_node, [], why)


def make_cgroups(mode: str, base: str, job_id: str, nodes: int, per_node: int) -> list[str]:
    """Create ``base/trainjob/<job_id>/node-<k>`` limited to ``per_node`` bytes, swap off. Returns the folders."""
    top = os.path.join(base, "trainjob")
    job = os.path.join(top, job_id)
    made = []
    try:
        for d in (top, job):
            os.makedirs(d, exist_ok=True)
            if mode == CGROUP_V2:
                _write_if_needed(os.path.join(d, "cgroup.subtree_control"), "+memory")
        for k in range(nodes):
            d = os.path.join(job, f"node-{k}")
            os.makedirs(d, exist_ok=True)
            made.append(d)
            if mode == CGROUP_V2:
                _write(os.path.join(d, "memory.max"), str(per_node))
                _try_write(os.path.join(d, "memory.swap.max"), "0")
                got = _read(os.path.join(d, "memory.max")).strip()
            else:
                _write(os.path.join(d, "memory.limit_in_bytes"), str(per_node))
                _try_write(os.path.join(d, "memory.memsw.limit_in_bytes"), str(per_node))
                got = _read(os.path.join(d, "memory.limit_in_bytes")).strip()
            # The kernel rounds to whole pages; a cgroup that silently ignores the write does not count.
            if not got.isdigit() or abs(int(got) - per_node) > 65536:
                raise OSError(f"{d} did not take the limit {per_node} (reads {got!r})")
    except OSError:
        remove_cgroups(made, job_dir=job)
        raise
    return made


def remove_cgroups(folders: list[str], job_dir: str | None = None) -> None:
    """Remove node cgroups (and their job folder); a cgroup with processes left in it stays."""
    for d in folders:
        try:
            os.rmdir(d)
        except OSError:
            pass
    parent = job_dir or (os.path.dirname(folders[0]) if folders else None)
    if parent:
        try:
            os.rmdir(parent)
        except OSError:
            pass


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _try_write(path: str, value: str) -> None:
    try:
        _write(path, value)
    except OSError:
        pass


def _write_if_needed(path: str, value: str) -> None:
    try:
        if value.lstrip("+") in _read(path).split():
            return
    except OSError:
        pass
    _write(path, value)
