"""``trainjob warm [--stop] | warm ls``: the warm processes that make repeat jobs start fast.

The warm processes belong to the local backend (``trainjob.backends.local.warm.client``); this
module starts, lists and stops them, and prints.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from trainjob import contract
from trainjob.cli import common
from trainjob.cli.common import Output, OutputOpt, err, out
from trainjob.core.public_records import iso, jsonable
from trainjob.cli.render import fmt_age
from trainjob.resources import format_bytes

app = typer.Typer(help="Warm processes: ranks forked from them start without re-importing torch/transformers.", invoke_without_command=True)


def _home():
    return getattr(common.client().backend, "home", None) or contract.home()


def warm_record(info: Any) -> dict[str, Any]:
    d = dataclasses.asdict(info)
    if isinstance(d.get("started_at"), (int, float)):
        d["started_at"] = iso(datetime.fromtimestamp(d["started_at"], tz=timezone.utc))
    return jsonable(d)


@app.callback()
def warm(
    ctx: typer.Context,
    stop: Annotated[bool, typer.Option("--stop", help="Stop every warm process (each leaves once the ranks it forked have ended).")] = False,
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait until the started warm process is ready (0: return at once).")] = 60.0,
    idle_timeout: Annotated[Optional[float], typer.Option("--idle-timeout", help="Seconds without a job before it exits (default $TRAINJOB_WARM_IDLE_TIMEOUT or 600).", show_default=False)] = None,
) -> None:
    """Start the warm process of this Python environment (or --stop them all); `trainjob warm ls` lists them."""
    if ctx.invoked_subcommand is not None:
        return
    from trainjob.backends.local.warm import client

    home = _home()
    if stop:
        keys = client.stop_servers(home, wait=10.0)
        err.print(f"asked {len(keys)} warm process(es) to stop" if keys else "no warm process was running")
        return
    if idle_timeout is not None and not idle_timeout > 0:
        raise common.CliExit(common.EXIT_USAGE, f"error: --idle-timeout {idle_timeout}: a number of seconds > 0")
    key = client.start_for_current_environment(home, idle_timeout, wait=wait)
    info = next((i for i in client.list_servers(home) if i.key == key), None)
    state = info.state if info else "starting"
    err.print(f"warm process {key}: {state}" + (f" ({info.error})" if info and info.error else ""))
    if state == "refused":
        raise common.CliExit(common.EXIT_FAILED)


@app.command("ls")
def ls(output: OutputOpt = Output.table) -> None:
    """List the warm processes: state, memory (PSS: shared pages counted once), forked ranks."""
    from trainjob.backends.local.warm import client

    records = [warm_record(i) for i in client.list_servers(_home())]
    if output is Output.json:
        common.dump(records)
        return
    if not records:
        err.print("no warm process (the first job of an environment starts one; or run: trainjob warm)")
        return
    t = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("KEY", "STATE", "PID", "PSS", "RSS", "RANKS", "RANKS PSS", "FORKS", "STARTED", "IMPORTS"):
        t.add_column(col, no_wrap=True)
    for r in records:
        t.add_row(
            r["key"], r["state"], str(r.get("pid") or "-"), format_bytes(r.get("pss_bytes")), format_bytes(r.get("rss_bytes")),
            str(len(r.get("children") or [])), format_bytes(r.get("children_pss_bytes")), str(r.get("forks") if r.get("forks") is not None else "-"),
            fmt_age(r.get("started_at")), f"{r['import_seconds']:.1f}s" if r.get("import_seconds") else "-",
        )  # fmt: skip
    out.print(t)
