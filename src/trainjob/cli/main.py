"""The ``trainjob`` command: a thin layer over ``TrainerClient``.

Each verb parses its flags, calls the library and prints. Errors from trainjob become a message
on stderr and an exit code (see ``trainjob.cli.common`` and docs/cli.md):
0 ok / Complete, 1 Failed or the command failed, 2 usage, invalid spec or unusable store, 3 Stopped, 4 no such job,
130 interrupted.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from trainjob.cli import common, doctor, envs, jobs, optimize, run, warm
from trainjob.cli.common import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_USAGE, CliExit, err
from trainjob.errors import BackendError, JobNotFoundError, JobStateError, JobTimeoutError, StoreError, TrainJobError, ValidationError

app = typer.Typer(
    name="trainjob",
    help="Run HuggingFace Transformers / TRL training as managed jobs, with live progress.\n\n"
    "Jobs and their state live in $TRAINJOB_HOME (default ~/.trainjob). Start with: trainjob demo",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_SUBMIT = "Submit"
_READ = "Inspect"
_CONTROL = "Control"

app.command(
    "run",
    help=run.RUN_HELP,
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
    rich_help_panel=_SUBMIT,
)(run.run)
app.command("demo", rich_help_panel=_SUBMIT)(run.demo)
app.command(
    "optimize",
    help=optimize.OPTIMIZE_HELP,
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
    rich_help_panel=_SUBMIT,
)(optimize.optimize)
app.command("studies", rich_help_panel=_READ)(optimize.studies)
app.command("trials", rich_help_panel=_READ)(optimize.trials_cmd)
app.command("ls", rich_help_panel=_READ)(jobs.ls)
app.command("runtimes", rich_help_panel=_READ)(jobs.runtimes)
app.command("status", rich_help_panel=_READ)(jobs.status)
app.command("progress", rich_help_panel=_READ)(jobs.progress)
app.command("logs", rich_help_panel=_READ)(jobs.logs)
app.command("events", rich_help_panel=_READ)(jobs.events)
app.command("metrics", rich_help_panel=_READ)(jobs.metrics)
app.command("result", rich_help_panel=_READ)(jobs.result)
app.command("wait", rich_help_panel=_CONTROL)(jobs.wait)
app.command("stop", rich_help_panel=_CONTROL)(jobs.stop)
app.command("delete", rich_help_panel=_CONTROL)(jobs.delete)
app.command("prune", rich_help_panel=_CONTROL)(jobs.prune)
app.add_typer(envs.app, name="envs", rich_help_panel=_CONTROL)
app.add_typer(warm.app, name="warm", rich_help_panel=_CONTROL)
app.command("doctor", rich_help_panel=_CONTROL)(doctor.doctor)


@app.command("dashboard", rich_help_panel=_READ)
def dashboard(
    host: Annotated[str, typer.Option("--host", help="Address to bind (default loopback; 0.0.0.0 for every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="Port to listen on (0: pick a free one).")] = 8686,
    token: Annotated[
        Optional[str],
        typer.Option("--token", envvar="TRAINJOB_DASHBOARD_TOKEN", help="The token every request needs (default: a new one per start, printed in the URL). Send it as 'Authorization: Bearer', or open the printed ?token= link once: it sets a cookie. Prefer the environment variable to keep it out of `ps`.", show_default=False),
    ] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="No token (loopback only): anyone on this machine can then read, stop and delete your jobs.")] = False,
) -> None:
    """Serve the web dashboard: job list, live loss / learning-rate / eval curves, logs, events, results.

    Reads the same store as the CLI. Every request needs a token, on loopback too (any user of
    this machine can reach 127.0.0.1): one is generated per start and printed in the URL, unless
    --token or TRAINJOB_DASHBOARD_TOKEN gives it. Stop and delete buttons are protected against
    cross-site requests. Ctrl-C ends it.
    """
    try:
        from trainjob.dashboard.server import DashboardConfig, serve
    except ImportError as e:
        raise CliExit(EXIT_FAILED, f"error: the dashboard needs starlette and uvicorn: pip install 'trainjob[dashboard]' ({e})") from None
    try:
        config = DashboardConfig(host=host, port=port, token=token or None, no_auth=no_auth)
    except ValueError as e:
        raise CliExit(EXIT_USAGE, f"error: {e}") from None
    try:
        serve(config, common.client(), announce=lambda url: (print(url, flush=True), err.print(f"trainjob dashboard on {url}  (Ctrl-C to stop)")))
    except OSError as e:
        raise CliExit(EXIT_FAILED, f"error: cannot listen on {host}:{port}: {e.strerror or e}") from None
    except KeyboardInterrupt:
        pass


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``trainjob`` console script. Exits with the documented codes."""
    command = typer.main.get_command(app)
    try:
        # Standalone: typer prints usage errors (exit 2) and --help itself and exits; our own
        # errors pass through to the handlers below.
        command.main(args=argv, prog_name="trainjob", standalone_mode=True)
    except CliExit as e:
        if e.message:
            err.print(e.message, markup=False, highlight=False, soft_wrap=True)
        sys.exit(e.code)
    except ValidationError as e:
        _fail(EXIT_USAGE, common.validation_message(e))
    except JobNotFoundError as e:
        _fail(EXIT_NOT_FOUND, f"error: {e}")
    except StoreError as e:  # corrupt, unreadable, locked too long, disk full: nothing was done
        _fail(EXIT_USAGE, f"error: {e}")
    except (JobStateError, JobTimeoutError, BackendError) as e:
        _fail(EXIT_FAILED, f"error: {e}")
    except TrainJobError as e:
        _fail(EXIT_FAILED, f"error: {type(e).__name__}: {e}")
    except KeyboardInterrupt:
        sys.exit(130)


def _fail(code: int, message: str) -> None:
    err.print(message, markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
