"""``trainjob envs ls|prune``: the cached package environments of ``--pkg`` / ``packages_to_install``.

The environments belong to the local backend (``trainjob.backends.local.envcache``: ``list_envs`` and
``prune_envs``); this module shows them and asks for their removal.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime, timezone
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from trainjob import contract
from trainjob.cli import common
from trainjob.cli.common import EXIT_USAGE, CliExit, Output, OutputOpt, err, out
from trainjob.core.public_records import iso, jsonable
from trainjob.cli.render import fmt_age, fmt_duration
from trainjob.client import list_package_envs, prune_package_envs
from trainjob.resources import format_bytes

app = typer.Typer(help="Cached package environments (built for --pkg / packages_to_install).", no_args_is_help=True)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def _home():
    return getattr(common.client().backend, "home", None) or contract.home()


def env_record(info: Any) -> dict[str, Any]:
    """An ``EnvInfo`` as JSON: times as ISO 8601 UTC, sizes in bytes, paths as strings."""
    d = dataclasses.asdict(info) if dataclasses.is_dataclass(info) and not isinstance(info, type) else dict(info)
    for key in ("created_at", "last_used_at"):
        if isinstance(d.get(key), (int, float)):
            d[key] = iso(datetime.fromtimestamp(d[key], tz=timezone.utc))
    return jsonable(d)


def envs_table(records: list[dict[str, Any]]) -> Table:
    t = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("KEY", "PACKAGES", "INDEX", "SIZE", "LAST USED", "IN USE", "BUILD"):
        t.add_column(col, overflow="fold", no_wrap=col in ("KEY", "SIZE"))
    for r in records:
        index = r.get("index_url") or "-"
        if r.get("extra_index_urls"):
            index += f" (+{len(r['extra_index_urls'])})"
        t.add_row(
            str(r.get("key")),
            ", ".join(r.get("requirements") or []) or "-",
            index,
            format_bytes(r.get("size_bytes")),
            fmt_age(r.get("last_used_at")),
            "yes" if r.get("in_use") else "",
            fmt_duration(r.get("build_seconds")),
        )
    return t


def parse_duration(text: str) -> float:
    """``90`` (seconds), ``30m``, ``12h``, ``7d``, ``2w`` -> seconds. Raises ``ValueError``."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"--older-than {text!r}: a duration such as 90 (seconds), 30m, 12h, 7d or 2w")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


@app.command("ls")
def ls(output: OutputOpt = Output.table) -> None:
    """List cached environments, most recently used first: packages, index, size, last use."""
    records = [env_record(e) for e in list_package_envs(_home())]
    if output is Output.json:
        common.dump(records)
    elif not records:
        err.print("no cached package environments (jobs submitted with --pkg build them)")
    else:
        out.print(envs_table(records))


@app.command("prune")
def prune(
    older_than: Annotated[
        Optional[str],
        typer.Option("--older-than", help="Only environments no job used for this long: 90 (seconds), 30m, 12h, 7d, 2w. Default: every environment no running job uses.", show_default=False),
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Remove cached environments that no running job uses (safe while jobs run)."""
    seconds = None
    if older_than is not None:
        try:
            seconds = parse_duration(older_than)
        except ValueError as e:
            raise CliExit(EXIT_USAGE, f"error: {e}") from None
    records = [env_record(e) for e in prune_package_envs(_home(), older_than=seconds)]
    if output is Output.json:
        common.dump(records)
    elif not records:
        err.print("nothing to prune")
    else:
        freed = sum(r.get("size_bytes") or 0 for r in records)
        err.print(f"removed {len(records)} environment(s), {format_bytes(freed)} freed:")
        out.print(envs_table(records))
