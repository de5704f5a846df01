#!/usr/bin/env bash
# Alpaca in miniature, end to end: prepare the data, fine-tune, evaluate, report.
#   ./run.sh DATA_DIR      (DATA_DIR holds alpagasus_random_9k.json, e.g. ../../../shared/data/alpaca)
set -euo pipefail
cd "$(dirname "$0")"
DATA=${1:?usage: ./run.sh DATA_DIR (the folder holding alpagasus_random_9k.json)}
python prepare.py "$DATA" --train "${TRAIN:-600}" --eval "${EVAL:-50}"
start=$SECONDS
protege run -c protege.yaml          # train (skipped when unchanged since the last run)
echo "train wall time: $((SECONDS - start)) s"
protege eval -c protege.yaml
protege report -c protege.yaml
echo "total wall time: $((SECONDS - start)) s; report: runs/alpaca-small/report.html"
