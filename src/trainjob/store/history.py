"""A job's metrics history, stored in chunks, read by position, downsampled for charts.

Entries (what the job's Trainers logged, each a dict with ``step``, ``time``, ``attempt``) are
kept in ``metric_chunks`` rows of ``CHUNK`` entries each, as one JSON array: reading 100,000
entries decodes 391 arrays instead of 100,000 objects, and the store spends one index entry per
chunk. A job's entries have positions 0, 1, 2...; the chunk holding position ``p`` starts at
``p - p % CHUNK``, so a read "from position ``after`` on" (a poller's cursor) finds its first
chunk by the primary index at once, and a poll with nothing new reads one short row.

A full chunk also carries a ``summary``: for every numeric series, the lowest and the highest
point of each ``SUB`` consecutive entries, with the attempts seen. A view of a long history
(``series``) is then drawn from summaries: at most about ``points`` points per series, keeping
every extreme, however many entries are stored (``trainjob.series`` draws the view).

Functions here take an open connection and run inside the caller's transaction (``Store``).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from trainjob.series import DEFAULT_POINTS, NOT_SERIES, SeriesView, is_number
from trainjob.store import fastjson

CHUNK = 256  # entries per chunk row
SUB = 64  # entries per min/max pair in a chunk's summary

# ``summary`` comes before ``data`` on purpose: SQLite reads a row's columns in order, and a
# summary read must not walk the overflow pages of the (tens of kB) data column.
CREATE_TABLE = """
CREATE TABLE metric_chunks (
    job_id  TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,   -- position of its first entry in the job's history (a multiple of CHUNK)
    n       INTEGER NOT NULL,   -- entries in it; CHUNK once full (only a job's last chunk is shorter)
    summary TEXT,               -- JSON, once full: {"s": {series: [[seq, step, value, attempt], ...]}, "a": [[seq, step, attempt], ...]}
    data    TEXT NOT NULL       -- JSON array of the entries, each with its "attempt"
)"""
CREATE_INDEX = "CREATE UNIQUE INDEX metric_chunks_job ON metric_chunks(job_id, seq)"


# ---- writing ------------------------------------------------------------------------------------
def append(conn: sqlite3.Connection, job_id: str, entries: list[dict[str, Any]]) -> None:
    """Add ``entries`` (each already carrying its ``attempt``) after the job's last one.

    Fills the job's last chunk first (rewriting that one row), then adds full chunks; a chunk
    that becomes full gets its summary. Run inside a transaction.
    """
    if not entries:
        return
    texts = [json.dumps(e, default=str) for e in entries]
    last = conn.execute("SELECT seq, n, data FROM metric_chunks WHERE job_id = ? ORDER BY seq DESC LIMIT 1", (job_id,)).fetchone()
    done, pos = 0, 0
    if last is not None:
        seq, n, data = last[0], last[1], last[2]
        pos = seq + n
        if n < CHUNK:
            done = min(CHUNK - n, len(texts))
            data = data[:-1] + ("," if n else "") + ",".join(texts[:done]) + "]"
            summary = _dump_summary(summarize(json.loads(data), seq)) if n + done == CHUNK else None
            conn.execute("UPDATE metric_chunks SET n = ?, summary = ?, data = ? WHERE job_id = ? AND seq = ?", (n + done, summary, data, job_id, seq))
            pos += done
    rows = []
    for i in range(done, len(texts), CHUNK):
        part = texts[i : i + CHUNK]
        summary = _dump_summary(summarize(entries[i : i + CHUNK], pos)) if len(part) == CHUNK else None
        rows.append((job_id, pos, len(part), summary, "[" + ",".join(part) + "]"))
        pos += len(part)
    if rows:
        conn.executemany("INSERT INTO metric_chunks (job_id, seq, n, summary, data) VALUES (?, ?, ?, ?, ?)", rows)


def summarize(entries: list[dict[str, Any]], seq: int) -> dict[str, Any]:
    """The summary of the chunk starting at position ``seq``: each series' lowest and highest
    point per ``SUB`` entries (``[seq, step, value, attempt]``), and where the attempt changes."""
    series: dict[str, list[list[Any]]] = {}
    attempts: list[list[Any]] = []
    for start in range(0, len(entries), SUB):
        lows: dict[str, list[Any]] = {}
        highs: dict[str, list[Any]] = {}
        for i in range(start, min(start + SUB, len(entries))):
            e = entries[i]
            step, att = e.get("step"), e.get("attempt", 0)
            if not attempts or attempts[-1][2] != att:
                attempts.append([seq + i, step, att])
            if not is_number(step):
                continue
            for k, v in e.items():
                if k in NOT_SERIES or not is_number(v):
                    continue
                lo = lows.get(k)
                if lo is None:
                    lows[k] = highs[k] = [seq + i, step, v, att]
                elif v < lo[2]:
                    lows[k] = [seq + i, step, v, att]
                elif v > highs[k][2]:
                    highs[k] = [seq + i, step, v, att]
        for k, lo in lows.items():
            hi = highs[k]
            pts = series.setdefault(k, [])
            pts.extend([lo] if lo is hi else sorted((lo, hi)))
    return {"s": series, "a": attempts}


def _dump_summary(summary: dict[str, Any]) -> str:
    return json.dumps(summary, separators=(",", ":"))


# ---- reading ------------------------------------------------------------------------------------
def count(conn: sqlite3.Connection, job_id: str) -> int:
    """How many entries the job has (one index lookup)."""
    row = conn.execute("SELECT seq + n FROM metric_chunks WHERE job_id = ? ORDER BY seq DESC LIMIT 1", (job_id,)).fetchone()
    return row[0] if row else 0


def read(conn: sqlite3.Connection, job_id: str, start: int = 0, stop: int | None = None) -> list[dict[str, Any]]:
    """The entries at positions ``start`` to ``stop`` (exclusive; None: to the end), in order."""
    start = max(0, start)
    if stop is not None and stop <= start:
        return []
    first = start - start % CHUNK
    # "seq + n > start": a poller's read with nothing new finds no row (decodes nothing)
    if stop is None:
        rows = conn.execute("SELECT seq, data FROM metric_chunks WHERE job_id = ? AND seq >= ? AND seq + n > ? ORDER BY seq", (job_id, first, start))
    else:
        rows = conn.execute(
            "SELECT seq, data FROM metric_chunks WHERE job_id = ? AND seq >= ? AND seq < ? AND seq + n > ? ORDER BY seq", (job_id, first, stop, start)
        )
    out: list[dict[str, Any]] = []
    for seq, data in rows:
        entries = fastjson.loads(data)
        lo = max(0, start - seq)
        hi = len(entries) if stop is None else min(len(entries), stop - seq)
        out.extend(entries if lo == 0 and hi == len(entries) else entries[lo:hi])
    return out


def series(conn: sqlite3.Connection, job_id: str, start: int = 0, stop: int | None = None, points: int = DEFAULT_POINTS) -> dict[str, Any]:
    """A chart's view of positions ``start`` to ``stop``: every series with at most about ``points`` points.

    Returns ``{"series": {key: [[step, value, attempt, seq], ...]}, "restarts": [{"step", "attempt",
    "seq"}], "start", "stop", "count" (entries stored), "downsampled"}``. Up to ``points`` entries
    every point is there; beyond, the range is cut into ``points // 2`` buckets and each series
    keeps its lowest and highest point of each bucket (so spikes and the overall minimum and
    maximum always show). Long ranges are drawn from the chunks' summaries, so the cost grows
    with ``points``, not with the entries stored.
    """
    total = count(conn, job_id)
    start = min(max(0, start), total)
    stop = total if stop is None else min(max(start, stop), total)
    n = stop - start
    view = SeriesView(start, max(1, points // 2), n, exact=n <= points)
    if n > view.buckets * SUB:
        view.width = -(-view.width // SUB) * SUB  # whole summary slices per bucket
        view.base = start - start % SUB
        raw_chunks = []
        first = start - start % CHUNK
        for seq, m, summary in conn.execute(
            "SELECT seq, n, summary FROM metric_chunks WHERE job_id = ? AND seq >= ? AND seq < ? ORDER BY seq", (job_id, first, stop)
        ):
            if summary is not None and seq >= start and seq + m <= stop:
                view.add_summary(fastjson.loads(summary))
            else:
                raw_chunks.append(seq)
        for seq in raw_chunks:  # the range's partial edges and the job's last, open chunk
            view.add_entries(read(conn, job_id, max(seq, start), min(seq + CHUNK, stop)), max(seq, start))
    else:
        view.add_entries(read(conn, job_id, start, stop), start)
    return {**view.result(), "start": start, "stop": stop, "count": total}
