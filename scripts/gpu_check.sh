#!/usr/bin/env bash
# The GPU check in one command, from a bare checkout: the lent machine's own python, no dd installed (the
# repository root goes on PYTHONPATH), wheels the caller carries in wheels/ (kornia, kornia_rs) installed into a
# temporary folder first. The stages and rows are scripts/gpu_check.py's; they are written to
# <out>/benchmarks-gpu.{md,json} as each stage ends.
#
#   scripts/gpu_check.sh                                       # on a GPU: docs/benchmarks-gpu.{md,json}
#   scripts/gpu_check.sh --device cpu --quick --out /tmp/g     # the CI form: tiny settings, no CUDA tests
#   scripts/gpu_check.sh --stages fashion --fashion-data DIR   # the second stage: paper-setting Fashion-MNIST rows
#
# PYTHON selects the interpreter (default: .venv/bin/python when present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
while [ $# -gt 0 ]; do
  case $1 in
    --device|--out|--stages|--fashion-data|--fashion-rows|--work) args+=("$1" "$2"); shift 2 ;;
    --quick|--tf32) args+=("$1"); shift ;;
    *) echo "error: unknown option $1; use --device DEV, --quick, --out DIR, --stages LIST, --tf32," \
         "--fashion-data DIR, --fashion-rows ROWS, --work DIR" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G "wheels/*.whl" >/dev/null && ! $PY -c "import kornia" 2>/dev/null; then
  site=$(mktemp -d)
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$site" wheels/*.whl
  export PYTHONPATH="$PYTHONPATH:$site"
fi
$PY -c "import kornia" 2>/dev/null || echo "note: kornia is missing: the KRR-ST teacher and ZCA rows will say so"
start=$(date +%s)
status=0
$PY scripts/gpu_check.py "${args[@]}" || status=$?
echo "gpu_check finished in $(( $(date +%s) - start )) s"
exit $status
