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
  .venv/bin/python -m pip install -q $TORCH_SPEC 2> >(grep -v "^WARNING: Location" >&2)
fi
spec="."
[ -n "${DD_EXTRAS:-}" ] && spec=".[${DD_EXTRAS}]"
# pip's exit status is kept; only its noise about absent local index folders is filtered out.
.venv/bin/python -m pip install -q -e "$spec" 2> >(grep -v "^WARNING: Location" >&2)
.venv/bin/python -c "import dd" || { echo "error: dd failed to install into .venv" >&2; exit 1; }
