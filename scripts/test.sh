#!/usr/bin/env bash
# Create .venv if needed, install dd with its test extras, run the test suite: every test but the slow ones
# (what CI runs); `--fast` runs the unit tier only (no e2e test: no stage runs end to end), and
# `bash scripts/test.sh -m slow` runs the long end-to-end ones. Exits non-zero when a test fails.
set -euo pipefail
DD_EXTRAS=test source "$(dirname "$0")/_venv.sh"
.venv/bin/python -m ruff check dd tests scripts
if [ "${1:-}" = "--fast" ]; then
    shift
    exec .venv/bin/python -m pytest -q -m "not slow and not e2e" "$@"
fi
exec .venv/bin/python -m pytest -q "$@"
