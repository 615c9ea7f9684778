#!/usr/bin/env bash
# The whole flow on the embedded digits set, on a CPU in minutes: train experts, distil 1 image per
# class with MTT, then retrain fresh networks on it beside random real images and the full data.
# Rerunning resumes: finished experts, iterations and evaluation runs are kept.
set -euo pipefail
source "$(dirname "$0")/_venv.sh"
PY=.venv/bin/python
start=$(date +%s)
$PY -m dd.buffer --config experiments/buffer/digits.yaml
$PY -m dd.distill --config experiments/mtt/digits_ipc1.yaml --resume
$PY -m dd.eval --config experiments/eval/digits.yaml --synset runs/mtt-digits-ipc1/synset --baseline random,full
echo "quickstart finished in $(( $(date +%s) - start )) s; table in runs/mtt-digits-ipc1/eval/results.md"
