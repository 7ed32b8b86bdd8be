#!/usr/bin/env bash
# Install everything the test suite needs (into .venv) and run it.
# Works on a fresh machine with Python 3.11 and pip; system packages for the browser and network
# namespace tests are installed with apt-get when run as root (they are skipped, with a reason, otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch is pinned exactly (torch==2.13.0 in pyproject): a range would pull CUDA wheels from the registry.
.venv/bin/python -m pip install -q -e '.[dev]'

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  missing=""
  command -v chromium >/dev/null 2>&1 || missing="$missing chromium fonts-dejavu-core"
  command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
  if [ -n "$missing" ]; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null \
      || echo "warning: could not install$missing; the tests that need them will be skipped"
  fi
fi

export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
# Two worker processes (pytest-xdist), each taking whole test files: most tests wait on real jobs'
# processes, so two at a time about halve the wall time on a 2-core machine. TRAINJOB_TEST_WORKERS=0
# runs everything in this one process.
exec .venv/bin/python -m pytest -n "${TRAINJOB_TEST_WORKERS:-2}" --dist loadfile "$@"
