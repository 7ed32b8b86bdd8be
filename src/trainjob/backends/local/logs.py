"""A local job's logs: which files make up a log "step", streamed or read by byte range.

A step is ``node-K`` (the node's launcher log and its ranks' logs, attempt after attempt),
``rank-R`` (one rank, every attempt) or ``supervisor``. Nothing here reads a whole file at once:
streaming reads blocks, and ``read_chunk`` reads the tail (first call) or what follows a cursor,
so a poller (the dashboard) costs the same on a 2 GB log as on a small one.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Callable, Iterator

from trainjob.backends.local.jobdir import JobDir
from trainjob.backends.records import parse_log_step
from trainjob.errors import Problem, ValidationError
from trainjob.types import LogChunk

FOLLOW_INTERVAL = 0.2  # seconds between reads with follow=True
BLOCK = 1 << 20  # bytes read at a time while streaming
TAIL_BYTES = 64 * 1024  # per file, on a first read_chunk
CHUNK_BYTES = 256 * 1024  # per file, on a later read_chunk
_CURSOR = re.compile(r"^\d{1,19}(\.\d{1,19})*$")

LogFiles = Callable[[], list[tuple[Path, str]]]  # -> [(file, line prefix)], in reading order


INITIALIZER_STEPS = ("model-initializer", "dataset-initializer")  # trainjob.initializers' steps


def step_files(step: str, num_nodes: int, procs_per_node: int, jobdir: JobDir) -> LogFiles:
    """The files of log ``step`` (re-listed on each call: a restart adds an attempt's files at the end).

    Raises ``ValidationError`` for a step the job does not have, naming the ones it has.
    """
    kind, k = parse_log_step(step, num_nodes, num_nodes * procs_per_node, ("supervisor", *INITIALIZER_STEPS))
    if kind == "supervisor":
        return lambda: [(jobdir.supervisor_log, "")]
    if kind in INITIALIZER_STEPS:  # empty for a job without that initializer
        return lambda: [(jobdir.logs_dir / f"{kind}.log", "")]

    def files() -> list[tuple[Path, str]]:
        out = []
        attempts = sorted(jobdir.logs_dir.glob("attempt-*"), key=lambda p: int(p.name.split("-")[1]))
        for adir in attempts:
            if kind == "rank":
                out.append((adir / f"rank-{k}.log", ""))
                continue
            out.append((adir / f"node-{k}.log", ""))
            for r in range(k * procs_per_node, (k + 1) * procs_per_node):
                out.append((adir / f"rank-{r}.log", f"[rank {r}] " if procs_per_node > 1 else ""))
        return out

    return files


def stream_lines(files: LogFiles, finished: Callable[[], bool], follow: bool) -> Iterator[str]:
    """Every line of the files in turn; with ``follow``, new lines as they come until ``finished()``.

    An unfinished last line is held back until it ends (or the job does).
    """
    offsets: dict[Path, int] = {}
    while True:
        done = finished() if follow else True  # read the state before the files: no lost tail
        for path, prefix in files():
            try:
                f = open(path, "rb")
            except FileNotFoundError:
                continue
            with f:
                f.seek(offsets.get(path, 0))
                pending = b""
                while True:
                    block = f.read(BLOCK)
                    if not block:
                        break
                    data = pending + block
                    end = data.rfind(b"\n") + 1
                    pending = data[end:]
                    offsets[path] = offsets.get(path, 0) + end
                    for line in data[:end].decode(errors="replace").splitlines():
                        yield prefix + line
                if pending and done:
                    offsets[path] = offsets.get(path, 0) + len(pending)
                    yield prefix + pending.decode(errors="replace")
        if done:
            return
        time.sleep(FOLLOW_INTERVAL)


def read_chunk(step: str, files: list[tuple[Path, str]], cursor: str | None, done: bool) -> LogChunk:
    """The tail of each file (``cursor`` None), or up to ``CHUNK_BYTES`` of each after ``cursor``.

    The cursor is the byte offset reached in each file, in ``files`` order, joined by ``.``;
    files that appear later (a restart's) start at 0. Lines of one file stay together, files
    follow each other in order, as ``stream_lines`` yields them.
    """
    offsets = parse_cursor(cursor)
    lines: list[str] = []
    reached: list[int] = []
    skipped = 0
    more = False
    for i, (path, prefix) in enumerate(files):
        start = offsets[i] if i < len(offsets) else (None if cursor is None else 0)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            reached.append(start or 0)
            continue
        with f:
            size = os.fstat(f.fileno()).st_size
            if start is None:
                begin = max(0, size - TAIL_BYTES)
                f.seek(begin)
                data = f.read(size - begin)
                if begin > 0:  # start at a line boundary
                    cut = data.find(b"\n") + 1 or len(data)
                    data, begin = data[cut:], begin + cut
                skipped += begin
                full = False
            else:
                begin = min(start, size)
                f.seek(begin)
                data = f.read(min(CHUNK_BYTES, size - begin))
                full = size - begin > CHUNK_BYTES
                more = more or full
        end = data.rfind(b"\n") + 1
        if (done and not full) or (end == 0 and len(data) >= CHUNK_BYTES):
            end = len(data)  # the job ended (its last line is whole), or one line longer than a chunk
        reached.append(begin + end)
        lines.extend(prefix + line for line in data[:end].decode(errors="replace").splitlines())
    return LogChunk(step=step, lines=lines, cursor=".".join(map(str, reached)), skipped_bytes=skipped, more=more)


def parse_cursor(cursor: str | None) -> list[int]:
    """``"120.0.4096"`` -> ``[120, 0, 4096]``; raises ``ValidationError`` for anything else."""
    if cursor is None:
        return []
    if not isinstance(cursor, str) or not _CURSOR.match(cursor):
        raise ValidationError([Problem("cursor", cursor, "the cursor a previous read returned: byte offsets joined by '.', e.g. '2048.0.512'")], "read_job_logs()")
    return [int(x) for x in cursor.split(".")]
