#!/usr/bin/env bash
# Set up a fresh machine: Python venv with the operator and dev tools, and the sandbox's
# pinned Go builds (cached in ~/.cache/pullmedic; a warm cache makes this a no-op).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v go >/dev/null || { echo "Go >= 1.26 is required (https://go.dev/doc/install)" >&2; exit 1; }
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then "$py" -m venv .venv; fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[dev]'
t0=$(date +%s)
bash sandbox/build.sh
echo "[setup] sandbox binaries ready ($(( $(date +%s) - t0 )) s)"
