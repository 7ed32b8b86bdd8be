#!/usr/bin/env bash
# Install trainjob with the training stack (into .venv) and run a real demo job on the local backend:
# a tiny GPT-2 built from its config, trained for 200 steps with transformers.Trainer, with live
# progress, then its result.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -e '.[train]'
export HF_HUB_OFFLINE=1
exec .venv/bin/trainjob demo "$@"
