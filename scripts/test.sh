#!/usr/bin/env bash
# Set up everything and run the whole test suite (unit, integration and end-to-end against
# the real sandbox), plus the type and lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check operator sandbox tests bench
.venv/bin/mypy
.venv/bin/pytest "$@"
