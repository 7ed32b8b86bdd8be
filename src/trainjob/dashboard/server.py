"""The dashboard's web server: static pages plus a JSON API over ``TrainerClient``.

Pages (``static/``, plain HTML + vanilla JS, no build step, nothing from a CDN):
``/`` the job list, ``/jobs/{id}`` one job with live curves, logs, events and result.

JSON API (the records of :mod:`trainjob.core.public_records`, the same as ``trainjob ... -o json``):

==========================================  =====================================================
``GET  /api/jobs[?status=&label=&name=]``   ``{"jobs": [job, ...], "total": N, "counts": {...}}``
                                            each with its ``progress``; every job, oldest first,
                                            or a page: ``limit=``, ``offset=``, ``newest=1``
                                            (``total``: jobs the filters select; ``counts``: per
                                            status, filters aside)
``GET  /api/jobs/{id}``                     one job record (with ``progress``)
``GET  /api/jobs/{id}/progress``            the progress JSON, or ``null``
``GET  /api/jobs/{id}/metrics?after=N``     ``{"entries": [...], "next": M}``: entries from the
                                            N-th on (at most ``limit``, default 10,000); poll
                                            again with ``after=M``
``GET  /api/jobs/{id}/series``              the history as chart series of at most ``points``
                                            (default 2,000) points each, extremes kept, for
                                            positions ``start`` to ``stop`` (a zoom):
                                            ``{"series": {key: [[step, value, attempt, pos]]},
                                            "restarts", "start", "stop", "count", "downsampled"}``
``GET  /api/jobs/{id}/events?after=N``      ``{"events": [...], "next": M}``
``GET  /api/jobs/{id}/logs?step=&cursor=C``  ``{"lines": [...], "cursor": C2, "skipped_bytes": N,
                                            "more": bool, "steps": [...]}``: the log's tail first
                                            (``skipped_bytes`` of earlier output left out), then
                                            what follows ``cursor=C2``; ``step``: ``node-K``,
                                            ``rank-R`` or ``supervisor`` (``rank=R``/``node=K`` too)
``GET  /api/jobs/{id}/result``              the result record
``GET  /api/session``                       ``{"csrf": ...}`` for the page's actions
``POST /api/jobs/{id}/stop``                graceful stop (needs ``X-Trainjob-Csrf``)
``POST /api/jobs/{id}/delete``              delete the job and its files (needs ``X-Trainjob-Csrf``)
==========================================  =====================================================

Every request needs the dashboard's token (``DashboardConfig``; see ``security``) unless it was
started with ``no_auth``. Errors answer ``{"error": message}`` with 400 (bad parameter), 401 (no
or wrong token), 403, 404 (no such job) or 409.
Handlers are synchronous (the store is SQLite); Starlette runs them in its thread pool.
"""

from __future__ import annotations

import re
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from trainjob.core.public_records import event_record, job_record, jsonable, result_record
from trainjob.client import TrainerClient
from trainjob.dashboard.security import MIN_TOKEN_LENGTH, Guard, is_loopback
from trainjob.errors import JobNotFoundError, JobStateError, ValidationError
from trainjob.types import JobStatus

STATIC = Path(__file__).parent / "static"
METRICS_PAGE, METRICS_PAGE_MAX = 10_000, 100_000  # entries per /metrics answer: default, most
SERIES_POINTS, SERIES_POINTS_MAX = 2_000, 20_000  # points per series of a /series answer: default, most
DEFAULT_PORT = 8686  # not Ray's dashboard (8265), not Jupyter (8888)
_JOB_ID = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")  # a job's name (its id): DNS-1035, as trainjob.options.Name


@dataclass(frozen=True)
class DashboardConfig:
    """Where the dashboard listens and who may use it. Raises ``ValueError`` saying what to change.

    Every request needs the token, on loopback too (any user of a shared machine can reach
    127.0.0.1), as Jupyter does: ``token=None`` generates a fresh one for this start, which the
    printed URL carries. ``no_auth=True`` turns the token off; it is allowed on loopback only.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = field(default=None, repr=False)
    poll_ms: int = 1500  # how often the job page polls (the list page: every 2 s)
    csrf_token: str | None = field(default=None, repr=False)
    no_auth: bool = False

    def __post_init__(self) -> None:
        if not self.host or not self.host.strip():
            raise ValueError("--host must be an address such as 127.0.0.1")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port {self.port} is out of range; use 1-65535, or 0 for any free port")
        if self.no_auth:
            if self.token is not None:
                raise ValueError("--no-auth and --token (or TRAINJOB_DASHBOARD_TOKEN) contradict each other: give one of them")
            if not is_loopback(self.host):
                raise ValueError(
                    f"--no-auth is refused on --host {self.host}, which is not a loopback address: anyone who can reach it could "
                    "read and stop your jobs. Drop --no-auth (a token is generated and printed), or bind to 127.0.0.1"
                )
            return
        if self.token is None:
            object.__setattr__(self, "token", secrets.token_urlsafe(24))
        elif len(self.token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"the token must have at least {MIN_TOKEN_LENGTH} characters (got {len(self.token)})")


def create_app(client: TrainerClient, config: DashboardConfig | None = None) -> Callable:
    """The ASGI application (guarded): pages, static files and the JSON API over ``client``."""
    config = config or DashboardConfig()
    api = _Api(client)
    from trainjob.dashboard.optimizations import OptimizationApi
    from trainjob.optimizer import OptimizerClient

    opt = OptimizationApi(OptimizerClient(client.backend_config))  # docs/hpo.md: a page per optimization
    routes = [
        Route("/", _page("index.html")),
        Route("/jobs/{job_id}", _page("job.html")),
        Route("/optimizations", _page("optimization.html")),
        Route("/optimizations/{name}", _page("optimization.html")),
        Route("/api/optimizations", opt.list),
        Route("/api/optimizations/{name}", opt.get),
        Route("/api/session", lambda request: JSONResponse({"csrf": guard.csrf_token, "poll_ms": config.poll_ms})),
        Route("/api/jobs", api.jobs),
        Route("/api/jobs/{job_id}", api.job),
        Route("/api/jobs/{job_id}/progress", api.progress),
        Route("/api/jobs/{job_id}/metrics", api.metrics),
        Route("/api/jobs/{job_id}/series", api.series),
        Route("/api/jobs/{job_id}/events", api.events),
        Route("/api/jobs/{job_id}/logs", api.logs),
        Route("/api/jobs/{job_id}/result", api.result),
        Route("/api/jobs/{job_id}/stop", api.stop, methods=["POST"]),
        Route("/api/jobs/{job_id}/delete", api.delete, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_allowed})
    guard = Guard(app, token=config.token, bind_host=config.host, csrf_token=config.csrf_token)
    return guard


def serve(config: DashboardConfig, client: TrainerClient, announce: Callable[[str], Any] | None = None) -> None:
    """Listen on ``config.host:config.port`` until interrupted; ``announce(url)`` once listening.

    The socket is bound here (not by uvicorn) so ``port=0`` works and the printed URL carries the
    real port. Raises ``OSError`` when the address cannot be bound.
    """
    import uvicorn

    sock = _bind(config.host, config.port)
    port = sock.getsockname()[1]
    app = create_app(client, config)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, proxy_headers=False, server_header=False, lifespan="off")
    )
    if announce:
        announce(dashboard_url(config.host, port, config.token))
    server.run(sockets=[sock])


def dashboard_url(host: str, port: int, token: str | None = None) -> str:
    shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)  # listening before the URL is announced: early clients wait, not fail
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


# ---- pages -----------------------------------------------------------------------------------
def _page(name: str) -> Callable[[Request], Response]:
    def page(request: Request) -> Response:
        job_id = request.path_params.get("job_id")
        if job_id is not None and not _JOB_ID.match(job_id):
            return JSONResponse({"error": f"{job_id!r} is not a job name"}, status_code=404)
        return FileResponse(STATIC / name, media_type="text/html", headers={"cache-control": "no-store"})

    return page


async def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": f"nothing at {request.url.path}"}, status_code=404)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": f"{request.method} is not allowed on {request.url.path}"}, status_code=405)


# ---- JSON API --------------------------------------------------------------------------------
def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(jsonable(data), status_code=status)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _int_param(request: Request, name: str, default: int | None = None, minimum: int = 0) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError([_problem(name, raw, f"an integer >= {minimum}")], "request") from None
    if value < minimum:
        raise ValidationError([_problem(name, raw, f"an integer >= {minimum}")], "request")
    return value


def _problem(name: str, value: Any, expected: str):
    from trainjob.errors import Problem

    return Problem(name, value, expected)


def _handler(fn: Callable[..., Response]) -> Callable[[Any, Request], Response]:
    """Map trainjob errors to HTTP answers; check the job id's shape before touching the store."""

    def wrapped(self: Any, request: Request) -> Response:
        job_id = request.path_params.get("job_id")
        if job_id is not None and not _JOB_ID.match(job_id):
            return _error(404, f"{job_id!r} is not a job name")
        try:
            return fn(self, request)
        except JobNotFoundError as e:
            return _error(404, str(e))
        except ValidationError as e:
            return _error(400, str(e))
        except JobStateError as e:
            return _error(409, str(e))

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


class _Api:
    def __init__(self, client: TrainerClient) -> None:
        self.client = client

    def _record(self, job_id: str) -> dict[str, Any]:
        return job_record(self.client.get_job(job_id), self.client.get_job_progress(job_id))

    @_handler
    def jobs(self, request: Request) -> Response:
        """A page of jobs, filtered in the store; a listing costs what it shows, not what is stored."""
        statuses = [s for s in request.query_params.getlist("status") for s in s.split(",") if s]
        labels = dict(pair.partition("=")[::2] for pair in request.query_params.getlist("label") if "=" in pair)  # ?label=team=nlp
        filters = {"status": statuses or None, "labels": labels or None, "name": request.query_params.get("name") or None}
        limit, offset = _int_param(request, "limit"), _int_param(request, "offset", 0) or 0
        newest = request.query_params.get("newest") in ("1", "true")
        jobs = self.client.list_jobs(**filters, limit=limit, offset=offset, newest_first=newest)
        total = len(jobs) + offset if limit is None else self.client.count_jobs(**filters)
        counts = {s.value: n for s in JobStatus if (n := self.client.count_jobs(status=s))}
        return _json({"jobs": [job_record(j, self.client.get_job_progress(j.id)) for j in jobs], "total": total, "counts": counts})

    @_handler
    def job(self, request: Request) -> Response:
        return _json(self._record(request.path_params["job_id"]))

    @_handler
    def progress(self, request: Request) -> Response:
        return _json(self.client.get_job_progress(request.path_params["job_id"]))

    @_handler
    def metrics(self, request: Request) -> Response:
        """What was logged from position ``after`` on: a poll with nothing new reads one short row."""
        after = _int_param(request, "after", 0) or 0
        limit = min(_int_param(request, "limit", METRICS_PAGE) or METRICS_PAGE, METRICS_PAGE_MAX)
        entries = self.client.get_job_metrics(request.path_params["job_id"], after=after, limit=limit)
        return _json({"entries": entries, "next": after + len(entries)})

    @_handler
    def series(self, request: Request) -> Response:
        points = min(_int_param(request, "points", SERIES_POINTS, minimum=2) or SERIES_POINTS, SERIES_POINTS_MAX)
        start, stop = _int_param(request, "start", 0) or 0, _int_param(request, "stop")
        return _json(self.client.get_job_metrics_series(request.path_params["job_id"], start=start, stop=stop, points=points))

    @_handler
    def events(self, request: Request) -> Response:
        after = _int_param(request, "after", 0) or 0
        events = self.client.get_job_events(request.path_params["job_id"])
        return _json({"events": [event_record(e) for e in events[after:]], "next": len(events)})

    @_handler
    def logs(self, request: Request) -> Response:
        """The log's tail (no ``cursor``), then what follows each returned ``cursor``: byte ranges,
        never the whole log, so polling a 2 GB log is as cheap as polling a small one."""
        job_id = request.path_params["job_id"]
        job = self.client.get_job(job_id)
        rank, node = _int_param(request, "rank"), _int_param(request, "node")
        step = request.query_params.get("step") or (f"rank-{rank}" if rank is not None else f"node-{node or 0}")
        chunk = self.client.read_job_logs(job_id, step=step, cursor=request.query_params.get("cursor") or None)
        steps = [f"node-{i}" for i in range(job.num_nodes)]
        if job.num_nodes * job.procs_per_node > 1:
            steps += [f"rank-{r}" for r in range(job.num_nodes * job.procs_per_node)]
        steps.append("supervisor")
        return _json(
            {"step": chunk.step, "lines": chunk.lines, "cursor": chunk.cursor, "skipped_bytes": chunk.skipped_bytes, "more": chunk.more, "steps": steps}
        )

    @_handler
    def result(self, request: Request) -> Response:
        return _json(result_record(self.client.get_job_result(request.path_params["job_id"])))

    @_handler
    def stop(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        self.client.stop_job(job_id)
        return _json({"ok": True, "job": self._record(job_id)})

    @_handler
    def delete(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        self.client.delete_job(job_id)
        return _json({"ok": True, "deleted": job_id})
