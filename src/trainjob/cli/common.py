"""What every CLI verb shares: exit codes, the output option, the client, job-id lookup, errors.

Only the CLI prints or exits. Verbs raise :class:`CliExit` (or let trainjob's own errors pass)
and :func:`trainjob.cli.main.main` turns them into a message on stderr and an exit code.
"""

from __future__ import annotations

import enum
import os
from typing import Annotated, Any

import typer
from rich.console import Console

from trainjob.client import TrainerClient
from trainjob.errors import JobNotFoundError, Problem, ValidationError
from trainjob.types import JobStatus

# ---- exit codes (documented in docs/cli.md) --------------------------------------------------
EXIT_OK = 0  # the command worked; a followed job ended Complete
EXIT_FAILED = 1  # a followed job ended Failed, or the command could not do its work
EXIT_USAGE = 2  # bad flags or arguments, or an invalid job spec: nothing was started
EXIT_STOPPED = 3  # a followed job ended Stopped (stop requested)
EXIT_NOT_FOUND = 4  # no job with that id (or the prefix matches several)
EXIT_INTERRUPTED = 130  # Ctrl-C while following: the job keeps running

OUTCOME_EXIT = {JobStatus.COMPLETE.value: EXIT_OK, JobStatus.FAILED.value: EXIT_FAILED, JobStatus.STOPPED.value: EXIT_STOPPED}



def _console(stderr: bool) -> Console:
    # Not a terminal (a pipe, a file, CI): no colors, and wide enough that tables do not wrap.
    probe = Console(stderr=stderr)
    width = None if probe.is_terminal or os.environ.get("COLUMNS") else 200
    return Console(stderr=stderr, highlight=False, width=width)


out = _console(stderr=False)  # results: tables, JSON, ids
err = _console(stderr=True)  # messages: hints, warnings, errors


class CliExit(Exception):
    """End the command with ``code`` after printing ``message`` (if any) to stderr."""

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Output(str, enum.Enum):
    table = "table"
    json = "json"


OutputOpt = Annotated[
    Output,
    typer.Option("--output", "-o", help="'table' for people, 'json' for scripts (stable keys, see docs/cli.md).", case_sensitive=False),
]
JobIdArg = Annotated[str, typer.Argument(help="Job id (a unique prefix is enough) or a unique job name.", show_default=False)]


_client: TrainerClient | None = None


def client() -> TrainerClient:
    """The local backend over ``$TRAINJOB_HOME`` (default ``~/.trainjob``), made once per command."""
    global _client
    if _client is None:
        _client = TrainerClient()
    return _client


def resolve_job_id(ref: str) -> str:
    """Accept a full id, a unique id prefix, or a unique job name (docker-style convenience)."""
    c = client()
    try:
        return c.get_job(ref).id
    except JobNotFoundError:
        pass
    if any(ch in ref for ch in "*?["):  # never in a name (DNS-1035): no glob pattern by accident
        raise JobNotFoundError(ref)
    matches = c.list_jobs(name=ref + "*", limit=11)  # a prefix, in the store's index
    if len(matches) == 1:
        return matches[0].id
    if not matches:
        raise JobNotFoundError(ref)
    listed = ", ".join(f"{j.id} ({j.name})" for j in matches[:10])
    raise CliExit(EXIT_NOT_FOUND, f"{ref!r} matches {len(matches)} jobs: {listed}; give more of the id")


def parse_pairs(values: list[str] | None, flag: str, example: str) -> tuple[dict[str, str], list[Problem]]:
    """``["K=V", ...]`` -> dict, with a Problem for each item that has no ``=`` or no key."""
    pairs: dict[str, str] = {}
    problems: list[Problem] = []
    for v in values or []:
        key, sep, value = v.partition("=")
        if not sep or not key:
            problems.append(Problem(flag, v, f"KEY=VALUE, e.g. {flag} {example}"))
        else:
            pairs[key] = value
    return pairs, problems


def validation_message(e: ValidationError, flag_names: dict[str, str] | None = None) -> str:
    """The error's problems, each prefixed by the flag that set the field when we know it."""
    lines = [f"error: invalid {e.subject} ({len(e.problems)} problem{'s' if len(e.problems) != 1 else ''}):"]
    for p in e.problems:
        flag = _flag_for(p.field, flag_names or {})
        lines.append(f"  - {flag + ': ' if flag else ''}{p}")
    return "\n".join(lines)


def _flag_for(field: str, names: dict[str, str]) -> str | None:
    if field in names:
        return names[field]
    for prefix, flag in names.items():
        if field.startswith(prefix + "[") or field.startswith(prefix + "."):
            return flag
    return None


def status_filter(values: list[str] | None) -> set[str] | None:
    if not values:
        return None
    out: set[str] = set()
    for v in values:
        out.update(s.strip() for s in v.split(",") if s.strip())
    return out


def dump(data: Any) -> None:
    from trainjob.cli.render import print_json

    print_json(data)
