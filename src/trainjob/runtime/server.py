"""Rank 0's HTTP endpoint: the progress JSON at ``GET /metrics`` (what a Kubeflow/RHAI controller
polls) and the same figures in the Prometheus text format at ``GET /metrics/prometheus``.

Binds to loopback unless ``TRAINJOB_METRICS_HOST`` says otherwise. If ``metrics_port`` is taken
(several local jobs at once) a free port is picked; the port in use is written to
``endpoint.json`` in the run folder, where the supervisor records it. If the endpoint cannot be
bound at all (the address is not this machine's, no port is free), training goes on without it:
a ``MetricsEndpointFailed`` event is recorded and a warning printed to the rank's log.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from trainjob import contract

_server: ThreadingHTTPServer | None = None
_failed = False  # binding failed once in this process: not tried again for every Trainer
_source: Callable[[], dict[str, Any] | None] = lambda: None
_lock = threading.Lock()


def ensure_started(source: Callable[[], dict[str, Any] | None]) -> int | None:
    """Start the server once per process (or point it at a new Trainer's progress). Returns the port.

    Never raises: a server that cannot bind is reported (event + warning) and None returned, so
    training goes on; progress still reaches trainjob through the sink.
    """
    global _server, _source, _failed
    with _lock:
        _source = source
        if _server is not None:
            return _server.server_address[1]
        if _failed:
            return None
        host = os.environ.get(contract.METRICS_HOST, "127.0.0.1")
        try:
            port = int(os.environ.get(contract.METRICS_PORT, "0") or 0)
        except ValueError:
            port = 0
        try:
            _server = _bind(host, port)
        except (OSError, OverflowError, UnicodeError) as e:
            _failed = True
            _report_failure(host, port, e)
            return None
        _server.daemon_threads = True
        threading.Thread(target=_server.serve_forever, name="trainjob-metrics", daemon=True).start()
        actual = _server.server_address[1]
        run_dir = os.environ.get(contract.RUN_DIR)
        if run_dir:
            try:
                contract.write_json_atomic(Path(run_dir) / contract.ENDPOINT_FILE, {"host": host, "port": actual, "requested": port, "pid": os.getpid()})
            except OSError:
                pass
        return actual


def _bind(host: str, port: int) -> ThreadingHTTPServer:
    """A server on ``host:port``, else on ``host`` and any free port; IPv6 hosts too."""

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    try:
        return Server((host, port), _Handler)
    except OSError:
        if not port:
            raise
        return Server((host, 0), _Handler)  # taken: any free port


def _report_failure(host: str, port: int, error: BaseException) -> None:
    """The endpoint could not start: a warning in the rank's log and a job event, nothing more."""
    import sys
    import time

    from trainjob.runtime import sinks

    why = f"{type(error).__name__}: {error}"
    message = f"rank 0's /metrics endpoint could not bind {host}:{port or 'any port'} ({why}); training goes on without it"
    print(f"[trainjob] warning: {message}", file=sys.stderr, flush=True)
    try:
        sinks.current().event(
            {
                "time": time.time(),
                "reason": "MetricsEndpointFailed",
                "message": message,
                "data": {"host": host, "port": port, "error": why},
                "attempt": int(os.environ.get(contract.ATTEMPT, "0") or 0),
            }
        )
    except Exception as e:  # noqa: BLE001 - reporting must not end the training either
        print(f"[trainjob] warning: could not record that event: {e}", file=sys.stderr, flush=True)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0].rstrip("/")
        progress = _source()
        if path == "/metrics":
            self._send(200, "application/json", json.dumps(progress if progress is not None else {}).encode())
        elif path == "/metrics/prometheus":
            self._send(200, "text/plain; version=0.0.4; charset=utf-8", prometheus_text(progress))
        elif path in ("", "/healthz"):
            self._send(200, "text/plain", b"ok\n")
        else:
            self._send(404, "text/plain", b"not found: try /metrics or /metrics/prometheus\n")

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:  # keep rank logs for the user's output
        pass


def prometheus_text(progress: dict[str, Any] | None) -> bytes:
    """The progress as Prometheus gauges (``trainjob_progress_percentage``, ``trainjob_train_loss``...)."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    job = os.environ.get(contract.JOB_ID, "")
    p = progress or {}
    scalars = {
        "progress_percentage": ("progressPercentage", "Percent of training steps done"),
        "current_step": ("currentStep", "Optimizer steps done"),
        "total_steps": ("totalSteps", "Optimizer steps planned"),
        "current_epoch": ("currentEpoch", "Epochs done"),
        "total_epochs": ("totalEpochs", "Epochs planned"),
        "estimated_remaining_seconds": ("estimatedRemainingSeconds", "Estimated seconds left"),
    }
    for name, (key, doc) in scalars.items():
        if p.get(key) is not None:
            Gauge(f"trainjob_{name}", doc, ["job_id"], registry=registry).labels(job).set(p[key])
    for group, prefix in (("trainMetrics", "train"), ("evalMetrics", "eval")):
        metrics = {k: v for k, v in (p.get(group) or {}).items() if isinstance(v, (int, float))}
        if metrics:
            g = Gauge(f"trainjob_{prefix}_metric", f"Latest {group} values", ["job_id", "name"], registry=registry)
            for k, v in metrics.items():
                g.labels(job, k).set(v)
    return generate_latest(registry)
