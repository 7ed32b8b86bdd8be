"""The root cause of a failed attempt: which rank failed first, and how.

When one rank dies the others fail after it: a peer's socket closes under a collective, torchrun
ends the sibling ranks with SIGTERM, the supervisor ends the other nodes. "The earliest error
file" is not enough to find the first failure, because a rank killed by a signal (the OOM killer,
a ``kill -9``) writes no error file at all, while the collective error it causes on a peer is
written milliseconds later. So every failure is collected from every source (the ranks' error
files, the failure summaries torchrun prints, the exit codes of the node processes) and ranked:

0. a rank's own exception;
1. a rank (or a whole node's launcher) killed by a signal other than SIGTERM/SIGINT/SIGHUP, or a
   non-zero exit with no exception recorded;
2. a rank ended by SIGTERM/SIGINT/SIGHUP (asked to end), a node that failed without details;
3. consequences: communication errors from a collective whose peer died, and anything that
   happened after the supervisor started ending the attempt's nodes.

The root cause is the lowest tier, earliest first. Pure functions: the supervisor gathers the
inputs, tests feed them real torchrun output.

A full disk is explained, not just reported (``explain_no_space``): the job's error says "no space
left on <mount point>" with the free space there, whether the rank's exception said so (ENOSPC,
or a library's "No space left on device (os error 28)"), hid it ("unexpected pos 576 vs 534" from
``torch.save``), or the rank just died with an exit code while the job's disk was full. That one
function looks at the disks (``statvfs``), when the supervisor summarizes a failed attempt.
"""

from __future__ import annotations

import errno
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from trainjob import filesystems
from trainjob.resources import format_bytes

# One entry of torchrun's failure summary ("Root Cause (first observed failure)" and "Failures").
_TORCHRUN_ENTRY = re.compile(
    r"time\s*:\s*(?P<time>\d{4}-\d\d-\d\d_\d\d:\d\d:\d\d)\s*\n"
    r"(?:\s*host\s*:[^\n]*\n)?"
    r"\s*rank\s*:\s*(?P<rank>\d+)(?:\s*\(local_rank:\s*(?P<local>\d+)\))?[^\n]*\n"
    r"\s*exitcode\s*:\s*(?P<code>-?\d+)"
)
# Errors a rank raises because another rank died under a collective (gloo, NCCL, the c10d store).
_PEER_ERROR = re.compile(
    r"Connection closed by peer|Connection reset by peer|remote worker crash|Broken pipe|"
    r"NCCL communicator was aborted|ProcessGroupNCCL.*(?:abort|watchdog)|DistNetworkError|DistBackendError|"
    r"Socket Timeout|recvValue failed|sendBytes failed|Connection refused",
    re.IGNORECASE,
)
_PEER_ERROR_TYPES = {"DistNetworkError", "DistBackendError", "DistStoreError", "ConnectionResetError", "BrokenPipeError"}
_ASKED_TO_END = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}

TIER_EXCEPTION, TIER_KILLED, TIER_ENDED, TIER_CONSEQUENCE = 0, 1, 2, 3


@dataclass(frozen=True)
class NodeOutcome:
    """How one node process of an attempt ended, as the supervisor saw it."""

    node: int
    exit_code: int
    time: float  # when the supervisor noticed the exit (wall clock)
    ranks: tuple[int, ...]  # global ranks this node runs
    log: str = ""  # the node's launcher log (torchrun's failure summary is at its end)
    ended_by_supervisor: bool = False


@dataclass
class Failure:
    """One failure of one rank (or of a node's launcher when no rank is known)."""

    rank: int | None
    node: int | None
    type: str  # the exception's class name, "Signal", "ExitCode" or "NodeLost"
    message: str
    tier: int
    time: float | None = None
    exit_code: int | None = None
    signal: str | None = None
    traceback: str = ""
    hint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        where = f"rank {self.rank}" if self.rank is not None else (f"node-{self.node}" if self.node is not None else "job")
        return f"{where}: {self.type}: {self.message}"

    def to_record(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "node": self.node,
            "type": self.type,
            "message": self.message,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "time": self.time,
            "traceback": self.traceback,
            "hint": self.hint,
            **self.extra,
        }


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def describe_exit(code: int) -> str:
    """``exited 0`` / ``exited with code 3`` / ``killed by SIGKILL``."""
    if code == 0:
        return "exited 0"
    return f"killed by {signal_name(-code)}" if code < 0 else f"exited with code {code}"


def is_peer_error(exc_type: str, message: str) -> bool:
    """True for errors a rank raises because a peer died under a collective, not for its own bugs."""
    return exc_type in _PEER_ERROR_TYPES or bool(_PEER_ERROR.search(message or ""))


def parse_torchrun_failures(log: str) -> list[dict[str, Any]]:
    """The failed ranks torchrun lists at the end of a node log: rank, local_rank, exit_code, time."""
    out: dict[int, dict[str, Any]] = {}
    for m in _TORCHRUN_ENTRY.finditer(log):
        rank = int(m.group("rank"))
        try:
            # torchrun prints local time with one-second resolution: take the middle of that second.
            at = time.mktime(time.strptime(m.group("time"), "%Y-%m-%d_%H:%M:%S")) + 0.5
        except ValueError:
            at = None
        out[rank] = {"rank": rank, "local_rank": int(m.group("local")) if m.group("local") else None, "exit_code": int(m.group("code")), "time": at}
    return [out[r] for r in sorted(out)]


def collect_failures(
    errors: list[dict[str, Any]],
    nodes: list[NodeOutcome],
    world_size: int,
    ending_since: float | None = None,
    rank_log_tail: Callable[[int], str] = lambda rank: "",
) -> list[Failure]:
    """Every failure of an attempt, from the ranks' error files and the nodes' exits.

    ``errors``: the ``errors/rank-N.json`` records; ``ending_since``: when the supervisor started
    ending nodes itself (failures after it are consequences); ``rank_log_tail(rank)``: the last
    lines of a rank's log, for failures that left no traceback.
    """
    failures: list[Failure] = []
    by_rank: dict[int, Failure] = {}
    node_of = {r: n.node for n in nodes for r in n.ranks}
    for e in errors:
        rank = e.get("rank")
        etype, msg = str(e.get("type") or "Error"), str(e.get("message") or "")
        tier = TIER_CONSEQUENCE if is_peer_error(etype, msg) else TIER_EXCEPTION
        at = e.get("time")
        if ending_since is not None and at is not None and at > ending_since:
            tier = TIER_CONSEQUENCE
        node = node_of.get(rank) if rank is not None else e.get("node")
        extra = {k: e[k] for k in ("errno", "filename") if e.get(k) is not None}
        f = Failure(rank, node, etype, msg, tier, time=at, traceback=e.get("traceback") or "", hint=e.get("hint"), extra=extra)
        failures.append(f)
        if rank is not None:
            by_rank[rank] = f
    for n in nodes:
        if n.exit_code == 0:
            continue
        if world_size == 1:
            entries = [{"rank": 0, "exit_code": n.exit_code, "time": n.time}]
        else:
            entries = parse_torchrun_failures(n.log)
        found = False
        for entry in entries:
            rank, code = entry["rank"], entry["exit_code"]
            found = True
            if rank in by_rank:  # its own exception says more; keep the exit code with it
                by_rank[rank].exit_code = code
                continue
            f = _exit_failure(rank, n.node, code, entry.get("time") or n.time, n.ended_by_supervisor)
            f.traceback = rank_log_tail(rank)
            failures.append(f)
            by_rank[rank] = f
        if not found and not any(r in by_rank and by_rank[r].tier < TIER_CONSEQUENCE for r in n.ranks):
            # No summary (the launcher itself was killed, or it failed before starting ranks), and
            # its ranks have nothing of their own to say: at most a peer error, which a killed
            # launcher causes (its ranks die with it and the others lose their peer).
            f = _exit_failure(None, n.node, n.exit_code, n.time, n.ended_by_supervisor)
            f.type = "NodeLost" if n.exit_code < 0 else f.type
            f.message = f"node-{n.node}'s launcher {describe_exit(n.exit_code)}"
            f.traceback = "\n".join(n.log.splitlines()[-30:])
            if f.tier == TIER_KILLED and n.exit_code > 0:
                f.tier = TIER_ENDED  # a launcher error without a rank to blame
            failures.append(f)
    if ending_since is not None:
        for f in failures:
            if f.time is not None and f.time > ending_since + 1.0:  # torchrun times are +-0.5 s
                f.tier = max(f.tier, TIER_CONSEQUENCE)
    return failures


def _exit_failure(rank: int | None, node: int, code: int, at: float | None, ended: bool) -> Failure:
    if code < 0:
        sig = -code
        name = signal_name(sig)
        tier = TIER_ENDED if sig in {s.value for s in _ASKED_TO_END} else TIER_KILLED
        message = f"killed by {name}" + (" (out of memory, or killed from outside)" if sig == signal.SIGKILL else "")
        f = Failure(rank, node, "Signal", message, tier, time=at, exit_code=code, signal=name)
    else:
        f = Failure(rank, node, "ExitCode", f"exited with code {code} without raising an exception", TIER_KILLED, time=at, exit_code=code)
    if ended:
        f.tier = TIER_CONSEQUENCE
    return f


def root_cause(failures: list[Failure]) -> Failure | None:
    """The first failure that is not a consequence of another: lowest tier, then earliest."""
    if not failures:
        return None
    return min(failures, key=lambda f: (f.tier, f.time if f.time is not None else float("inf")))


def summarize(failures: list[Failure], attempt: int, disk_paths: Iterable[str | Path | None] = ()) -> dict[str, Any]:
    """The job's error record: the root cause, plus one line for every other failure it caused.

    ``disk_paths``: the folders the job writes to (its job folder, its ``output_dir``); a failure
    caused by a full disk among them is explained (see ``explain_no_space``).
    """
    cause = root_cause(failures)
    if cause is None:
        record = {"rank": None, "node": None, "type": "Unknown", "message": "the attempt failed without an error record", "attempt": attempt, "traceback": ""}
        return explain_no_space(record, disk_paths)
    record = cause.to_record()
    record["attempt"] = attempt
    others = [f.describe() for f in sorted(failures, key=lambda f: (f.time or 0.0)) if f is not cause]
    if others:
        record["other_failures"] = others
    return explain_no_space(record, disk_paths)


_NO_REASON_TYPES = {"ExitCode", "Signal", "NodeLost", "Unknown"}


def explain_no_space(record: dict[str, Any], disk_paths: Iterable[str | Path | None] = ()) -> dict[str, Any]:
    """The error record, rewritten to say "no space left on <mount point>" when a full disk caused it.

    A full disk is the cause when the error says so (errno ENOSPC/EDQUOT, or the words libraries
    use), or when the error does not say why (a write that "failed", an exit code, a signal such
    as SIGBUS from a full tmpfs) and one of the job's disks is nearly full
    (``filesystems.NEARLY_FULL_BYTES``). The original message is kept after the explanation, the
    disk is in ``record["disk_full"]`` and the hint says what to do. Other records are returned as
    they are.
    """
    text = f"{record.get('message') or ''}\n{record.get('traceback') or ''}"
    said = record.get("errno") in (errno.ENOSPC, errno.EDQUOT) or filesystems.says_no_space(text)
    unexplained = record.get("type") in _NO_REASON_TYPES or filesystems.says_write_failed(text)
    if not said and not unexplained:
        return record
    paths = [record.get("filename"), *disk_paths]
    usage = filesystems.fullest(paths)
    if usage is None or not (said or usage.nearly_full):
        return record  # nothing says it, and no disk of the job is full: not a full disk
    out = dict(record)
    original = record.get("message") or ""
    if usage.nearly_full:
        out["message"] = f"no space left on {usage.path} ({format_bytes(usage.free)} free of {format_bytes(usage.total)}): {original}".rstrip(": ")
    else:  # the error says so, but the job's own disks have room now: it wrote somewhere else (or space came back)
        out["message"] = f"no space left on a disk the job wrote to (the job's folders on {usage.path} have {format_bytes(usage.free)} free now): {original}"
    out["disk_full"] = {"path": usage.path, "free_bytes": usage.free, "total_bytes": usage.total}
    out["hint"] = f"free space on {usage.path}, or write output_dir and checkpoints to a larger disk; `trainjob doctor` shows free disk"
    return out
