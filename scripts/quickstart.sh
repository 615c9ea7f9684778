#!/usr/bin/env bash
# The whole flow on the embedded digits set, on a CPU in minutes: train experts, distil 1 image per
# class with MTT, retrain fresh networks on it beside random real images and the full data, then write
# the run's report (curves, image history, tables).
# Rerunning resumes: finished experts, iterations and evaluation runs are kept.
set -euo pipefail
DD_EXTRAS=report source "$(dirname "$0")/_venv.sh"
PY=.venv/bin/python
start=$(date +%s)
$PY -m dd.buffer --config experiments/buffer/digits.yaml
$PY -m dd.distill --config experiments/mtt/digits_ipc1.yaml --resume
$PY -m dd.eval --config experiments/eval/digits.yaml --synset runs/mtt-digits-ipc1/synset --baseline random
# The full data (1,437 images, 6 batches an epoch) costs ~50x a 10-image set per run: 2 seeds here.
$PY -m dd.eval --config experiments/eval/digits.yaml --synset runs/mtt-digits-ipc1/synset --baseline full --runs 2
# The report covers the run and the expert store it matched (recorded in the set's metadata).
store=$($PY -c "import json; print(json.load(open('runs/mtt-digits-ipc1/synset/synset.json'))['buffer'])")
$PY -m dd.report runs/mtt-digits-ipc1 "$store" --out runs/mtt-digits-ipc1/report
echo "quickstart finished in $(( $(date +%s) - start )) s; table in runs/mtt-digits-ipc1/eval/results.md," \
     "report in runs/mtt-digits-ipc1/report/report.html"
