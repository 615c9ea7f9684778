#!/usr/bin/env bash
# The GPU path in one command (under 8 minutes on one GPU): the CUDA-only tests, a few iterations of every
# trajectory-matching method on generated CIFAR-shaped data (experts trained here), and the GPU benchmark rows
# (scripts/gpu_check.py), written to <out>/benchmarks-gpu.{md,json}.
#
#   scripts/gpu_check.sh                         # on a GPU: writes docs/benchmarks-gpu.{md,json}
#   scripts/gpu_check.sh --device cpu --quick --out /tmp/gpu-check   # the CI form: tiny settings, no CUDA tests
#
# PYTHON selects the interpreter (default: .venv/bin/python when present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
device=cuda quick=0 out=docs
while [ $# -gt 0 ]; do
  case $1 in
    --device) device=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --out) out=$2; shift 2 ;;
    *) echo "error: unknown option $1; use --device DEV, --quick, --out DIR" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
notes=()

if [ "$device" != cpu ]; then
  echo "== CUDA-only tests"
  $PY -m pytest -q -p no:cacheprovider -k "cuda" tests/
  notes+=(--note "cuda_tests=passed")
fi

echo "== generated CIFAR-shaped data, experts, every method"
per_class=$([ $quick = 1 ] && echo 4 || echo 100)
$PY - "$work/data" "$per_class" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

root, per_class = Path(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
for split, n in (("train", per_class), ("val", max(2, per_class // 5))):
    for c in range(10):
        folder = root / split / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
EOF
data=(--dataset imagefolder --data-path "$work/data" --image-size 32 --device "$device")
epochs=$([ $quick = 1 ] && echo 2 || echo 4)
$PY -m dd.buffer "${data[@]}" --num-experts 2 --epochs "$epochs" --batch-size 64 --buffer-dir "$work/buffers"
iterations=$([ $quick = 1 ] && echo 1 || echo 5)
for method in mtt ftd datm ast; do
  $PY -m dd.distill --method "$method" "${data[@]}" --buffer-dir "$work/buffers" --ipc 1 --iterations "$iterations" \
    --syn-steps 2 --expert-epochs 1 --min-start-epoch 0 --max-start-epoch 1 --eval-every 0 --eval-epochs 1 \
    --lr-lr 0 --val-fraction 0.2 --run-dir "$work/runs/$method"  # lr-lr 0: random data must not drive the lr below 0
  notes+=(--note "method_$method=ran $iterations iterations")
done

echo "== benchmark rows"
$PY scripts/gpu_check.py --device "$device" $([ $quick = 1 ] && echo --quick) --out "$out" "${notes[@]}"
echo "gpu_check finished in $(( $(date +%s) - start )) s"
