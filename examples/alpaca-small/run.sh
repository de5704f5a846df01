#!/usr/bin/env bash
# Alpaca in miniature, end to end: prepare the data, fine-tune, evaluate, report.
#   ./run.sh DATA_DIR [IFEVAL_FILE]
# DATA_DIR holds alpagasus_random_9k.json (e.g. ../../../shared/data/alpaca); IFEVAL_FILE, optional, is IFEval's
# input_data.jsonl (its first 100 prompts are scored with lm-eval's checker). TRAIN / EVAL change the sizes.
set -euo pipefail
cd "$(dirname "$0")"
DATA=${1:?usage: ./run.sh DATA_DIR [IFEVAL_FILE] (DATA_DIR holds alpagasus_random_9k.json)}
IFEVAL=${2:-}
python prepare.py "$DATA" --train "${TRAIN:-200}" --eval "${EVAL:-24}" ${IFEVAL:+--ifeval "$IFEVAL"}
SETS="[work/alpaca_eval_heldout.json]"
[ -n "$IFEVAL" ] && SETS="[work/alpaca_eval_heldout.json, work/ifeval.jsonl]"
start=$SECONDS
protege run -c protege.yaml          # train (skipped when unchanged since the last run)
echo "train wall time: $((SECONDS - start)) s"
protege eval -c protege.yaml --set "eval.sets=$SETS"
protege report -c protege.yaml
echo "total wall time: $((SECONDS - start)) s; report: runs/alpaca-small/report.html"
