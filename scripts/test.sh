#!/usr/bin/env bash
# Create .venv if needed, install dd with its test extras, run the test suite (fast tests only;
# `bash scripts/test.sh -m slow` runs the long end-to-end ones). Exits non-zero when a test fails.
set -euo pipefail
DD_EXTRAS=test source "$(dirname "$0")/_venv.sh"
.venv/bin/python -m ruff check dd tests scripts
exec .venv/bin/python -m pytest -q "$@"
