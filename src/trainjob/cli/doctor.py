"""``trainjob doctor``: check the local home folder, its disk, the store and leftover processes.

The checks live in the library (``trainjob.client.check_local_home``); this verb prints them. It
runs where every other verb stops at "the store is corrupt": it needs no working store.
"""

from __future__ import annotations

from rich.table import Table

from trainjob.cli import common
from trainjob.cli.common import EXIT_FAILED, EXIT_OK, CliExit, Output, OutputOpt, out
from trainjob.client import check_local_home

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def doctor(output: OutputOpt = Output.table) -> None:
    """Check trainjob's home ($TRAINJOB_HOME): folder, local disk, free space, store integrity and lock, leftover processes.

    Prints one line per check and what to do about each problem. Exit code 0 when nothing
    failed (warnings allowed), 1 otherwise. Reads only: it changes nothing.
    """
    findings = check_local_home()
    records = [f.to_json() for f in findings]
    if output is Output.json:
        common.dump(records)
    else:
        out.print(findings_table(records))
    if any(r["level"] == "fail" for r in records):
        raise CliExit(EXIT_FAILED)
    raise CliExit(EXIT_OK)


def findings_table(records: list[dict]) -> Table:
    t = Table(box=None, header_style="bold", pad_edge=False, show_header=True)
    t.add_column("CHECK", no_wrap=True)
    t.add_column("", no_wrap=True)
    t.add_column("DETAIL", overflow="fold")
    for r in records:
        level = r["level"]
        detail = r["detail"] + (f"\n  -> {r['fix']}" if r.get("fix") and level != "ok" else "")
        t.add_row(r["check"], f"[{_STYLE[level]}]{level.upper()}[/]", detail)
    return t
