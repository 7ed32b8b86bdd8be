"""``trainjob envs ls|prune``: the cached package environments of ``--pkg`` / ``packages_to_install``.

The environments themselves belong to the local backend (``trainjob.backends.local.envs``); this
module only calls its ``list_envs`` and ``prune_envs`` and shows what they return (dataclasses,
dicts or plain values). Arguments are passed by name when the function accepts them, so the
command keeps working as those functions grow options.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Annotated, Any, Callable

import typer

from trainjob import contract
from trainjob.cli import common
from trainjob.cli.common import EXIT_FAILED, CliExit, Output, OutputOpt, err, out
from trainjob.cli.records import jsonable
from trainjob.cli.render import envs_table

app = typer.Typer(help="Cached package environments (built for --pkg / packages_to_install).", no_args_is_help=True)


def _function(name: str) -> Callable[..., Any]:
    from trainjob.backends.local import envs

    fn = getattr(envs, name, None)
    if fn is None:
        raise CliExit(EXIT_FAILED, f"error: this trainjob has no cached package environments (trainjob.backends.local.envs.{name} is missing)")
    return fn


def _call(fn: Callable[..., Any], **available: Any) -> Any:
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return fn(**{k: v for k, v in available.items() if takes_any or k in params})


def _record(item: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return jsonable(dataclasses.asdict(item))
    if isinstance(item, dict):
        return jsonable(item)
    return {"env": jsonable(item)}


def _home():
    return common.client().backend.home if hasattr(common.client().backend, "home") else contract.home()


@app.command("ls")
def ls(output: OutputOpt = Output.table) -> None:
    """List cached environments: their packages, size and when they were last used."""
    records = [_record(e) for e in _call(_function("list_envs"), home=_home()) or []]
    if output is Output.json:
        common.dump(records)
    elif not records:
        err.print("no cached package environments")
    else:
        out.print(envs_table(records))


@app.command("prune")
def prune(
    all_: Annotated[bool, typer.Option("--all", help="Remove every environment not used by a running job, not only stale ones.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would be removed.")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Remove cached environments that no running job uses."""
    removed = _call(_function("prune_envs"), home=_home(), all=all_, dry_run=dry_run)
    records = [_record(e) for e in (removed if isinstance(removed, (list, tuple)) else [] if removed is None else [removed])]
    if output is Output.json:
        common.dump(records)
    elif not records:
        err.print("nothing to prune")
    else:
        err.print(("would remove" if dry_run else "removed") + f" {len(records)} environment(s):")
        out.print(envs_table(records))
