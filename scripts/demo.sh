#!/usr/bin/env bash
# Set up everything (or reuse the cache), start the sandbox, break workloads, run pullmedic,
# show it healing them. `--keep` leaves the sandbox running.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --demo
PYTHONPATH="$PWD:$PWD/operator${PYTHONPATH:+:$PYTHONPATH}" exec .venv/bin/python -m sandbox.demo "$@"
