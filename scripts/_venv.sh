# Sourced by quickstart.sh and test.sh: create .venv if missing and install dd with the given extras.
# torch is installed first at a pinned version (DD_TORCH_SPEC overrides it), because a bare
# "torch" requirement would otherwise pull the newest CUDA build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${DD_TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  echo "installing $TORCH_SPEC"
  # shellcheck disable=SC2086
  .venv/bin/python -m pip install -q $TORCH_SPEC
fi
.venv/bin/python -m pip install -q -e ".[${DD_EXTRAS:-}]" 2>&1 | grep -v -E "^WARNING: Location" || true
.venv/bin/python -c "import dd" || { echo "error: dd failed to install into .venv" >&2; exit 1; }
