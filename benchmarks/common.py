"""Helpers shared by the benchmark scripts: timing subprocess baselines, medians, tables."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

PY = sys.executable
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false", "GLOO_SOCKET_IFNAME": "lo"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_command(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and exit code of a command run in a fresh temporary folder."""
    with tempfile.TemporaryDirectory() as cwd:
        t0 = time.perf_counter()
        rc = subprocess.run(argv, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        return time.perf_counter() - t0, rc


def interleave(runs: int, cases: dict[str, Callable[[], float]], rotate: bool = False) -> dict[str, list[float]]:
    """Run every case once per round, rounds repeated ``runs`` times, so drift hits all cases alike.

    ``rotate``: round ``r`` starts with case ``r`` (mod the number of cases), so no case always
    follows the same one (what a case leaves running, or its cache, does not bill one case alone).
    """
    out: dict[str, list[float]] = {k: [] for k in cases}
    names = list(cases)
    for r in range(runs):
        k = r % len(names) if rotate else 0
        for name in names[k:] + names[:k]:
            fn = cases[name]
            value = fn()
            out[name].append(value)
            print(f"  round {r + 1}/{runs} {name}: {value:.3f}", flush=True)
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))
    return xs[k]


def table(rows: list[tuple], headers: tuple) -> str:
    cols = list(zip(headers, *rows))
    widths = [max(len(str(c)) for c in col) for col in cols]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in rows)])
