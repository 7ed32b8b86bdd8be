"""The rows of the ``jobs`` table as Python values: ``JobRow`` (a whole row), ``ListingRow`` (a listing's).

How columns are encoded (JSON columns, statuses) and decoded, and how a listing's rows are built
fast: the SQL that reads and writes them is ``sqlite.Store``'s.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Iterable

from trainjob.store import fastjson
from trainjob.types import JobStatus

_JSON_COLUMNS = ("spec", "error", "result", "progress", "steps", "resources", "extra", "labels", "annotations")
TERMINAL_VALUES = tuple(s.value for s in JobStatus if s.is_terminal)
# What a listing reads: no error, result, resources or progress, and the spec only as text (the
# caller parses it if it is asked for).
BRIEF_COLUMNS = (
    "id, name, backend, status, created_at, started_at, finished_at, attempt, num_nodes, procs_per_node, message, "
    "supervisor_pid, supervisor_start, supervisor_host, steps, queue_position, extra, labels, annotations, "
    "NULL AS spec, spec AS spec_text"
)
_BRIEF_JSON = ("steps", "extra", "labels", "annotations")
_STATUS_OF = {s.value: s for s in JobStatus}
LISTING_ONLY = ("spec_text",)  # JobRow fields that are no columns


@dataclass
class JobRow:
    """One row of ``jobs`` with its JSON columns decoded."""

    id: str
    name: str
    backend: str
    status: JobStatus
    created_at: float
    num_nodes: int
    procs_per_node: int
    spec: dict[str, Any] | None  # None in a listing's row: see spec_text
    started_at: float | None = None
    finished_at: float | None = None
    attempt: int = 0
    message: str | None = None
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    progress_at: float | None = None
    supervisor_pid: int | None = None
    supervisor_start: float | None = None
    supervisor_host: str | None = None  # where the supervisor runs: only that host can tell if it died
    steps: list[dict[str, Any]] | None = None
    resources: dict[str, Any] | None = None
    queue_position: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] | None = None  # options=[Labels(...)]
    annotations: dict[str, str] | None = None  # options=[Annotations(...)]
    # A listing's row (``Store.list_jobs(brief=True)``): ``spec`` is None, its JSON text is here
    # (parsed only if someone asks).
    spec_text: str | None = field(default=None, repr=False)


def job_filter(statuses: Iterable[JobStatus] | None, labels: dict[str, str] | None, name: str | None) -> tuple[str, list[Any]]:
    clauses, args = [], []
    if statuses is not None:
        st = [JobStatus.parse(s).value for s in statuses]
        clauses.append(f"status IN ({', '.join('?' for _ in st)})")
        args += st
    for key, value in (labels or {}).items():
        clauses.append("json_extract(labels, ?) = ?")
        args += ['$."' + str(key).replace("\\", "\\\\").replace('"', '\\"') + '"', str(value)]
    if name is not None:
        clauses.append("name GLOB ?" if any(ch in name for ch in "*?[") else "name = ?")
        args.append(name)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def encode(fields: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in fields.items():
        if k in _JSON_COLUMNS:
            v = None if v is None else json.dumps(v, default=str)
        elif isinstance(v, JobStatus):
            v = v.value
        out[k] = v
    return out


def brief_rows(c: sqlite3.Connection, q: str, args: list[Any]) -> list["ListingRow"]:
    """A listing's rows, built for speed (10,000 in a few ms): plain tuples wrapped as they come,
    each JSON column parsed when first read, and each distinct text (steps, labels... repeat
    across jobs) parsed once per listing."""
    cur = c.cursor()
    cur.row_factory = None
    rows = cur.execute(q, args).fetchall()
    parsed: dict[str | None, Any] = {None: None}
    new = object.__new__
    out = []
    for values in rows:
        row = new(ListingRow)
        row._values, row._parsed = values, parsed
        out.append(row)
    return out


class ListingRow:
    """A ``JobRow`` as a listing reads it: the columns of ``BRIEF_COLUMNS`` (the rest None), its
    JSON columns parsed on first read and the spec kept as text (``spec_text``). Read it, don't
    change it: parsed values are shared between the rows of one listing."""

    __slots__ = ("_values", "_parsed")
    _values: tuple[Any, ...]
    _parsed: dict[str | None, Any]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_listing_row, (self._values,))

    def __repr__(self) -> str:
        return f"ListingRow(id={self.id!r}, status={self.status.value!r})"


def _listing_row(values: tuple[Any, ...]) -> ListingRow:
    row = object.__new__(ListingRow)
    row._values, row._parsed = tuple(values), {None: None}
    return row


def _plain(i: int) -> property:
    return property(lambda row: row._values[i])


def _json(i: int) -> property:
    def get(row: ListingRow) -> Any:
        text = row._values[i]
        parsed = row._parsed
        if text not in parsed:
            parsed[text] = fastjson.loads(text)
        return parsed[text]

    return property(get)


_BRIEF_NAMES = [c.strip().rpartition(" AS ")[2] for c in BRIEF_COLUMNS.split(",")]
for _i, _name in enumerate(_BRIEF_NAMES):
    if _name == "status":
        setattr(ListingRow, _name, property(lambda row, i=_i: _STATUS_OF[row._values[i]]))
    elif _name == "extra":
        setattr(ListingRow, _name, property(lambda row, get=_json(_i).fget: get(row) or {}))
    elif _name in _BRIEF_JSON:
        setattr(ListingRow, _name, _json(_i))
    else:
        setattr(ListingRow, _name, _plain(_i))
for _name in {f.name for f in dataclasses.fields(JobRow)} - set(_BRIEF_NAMES):
    setattr(ListingRow, _name, None)  # columns a listing does not read


def decode(r: sqlite3.Row) -> JobRow:
    d = dict(r)
    for k in _JSON_COLUMNS:
        if d.get(k) is not None:
            d[k] = fastjson.loads(d[k])
    d["extra"] = d.get("extra") or {}
    d["status"] = JobStatus(d["status"])
    return JobRow(**d)
