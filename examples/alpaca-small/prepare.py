"""Split real Alpaca records (text-davinci-003's outputs) into this example's training file and a held-out
eval set in AlpacaEval's `model_outputs.json` format, whose outputs become the text-davinci-003 candidate.

    python prepare.py DATA_DIR [--train 200] [--eval 24] [--seed 0] [--ifeval input_data.jsonl [--ifeval-n 100]]

DATA_DIR holds `alpagasus_random_9k.json` (a random 9k subset of Stanford Alpaca's 52k, e.g. ../shared/data/alpaca
in the protege workspace). With --ifeval, the first --ifeval-n prompts of IFEval's `input_data.jsonl` (Google's
instruction_following_eval data) go to work/ifeval.jsonl, for the out-of-domain check. Nothing is copied into the
repository: every file goes to ./work/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--train", type=int, default=200)
    ap.add_argument("--eval", type=int, default=24)
    ap.add_argument("--ifeval", type=Path, help="IFEval input_data.jsonl (optional)")
    ap.add_argument("--ifeval-n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    src = a.data_dir / "alpagasus_random_9k.json"
    if not src.is_file():
        raise SystemExit(f"error: {src} not found: pass the folder that holds alpagasus_random_9k.json")
    rows = [r for r in json.loads(src.read_text(encoding="utf-8")) if r.get("instruction") and r.get("output")]
    random.Random(a.seed).shuffle(rows)
    if a.train + a.eval > len(rows):
        raise SystemExit(f"error: {len(rows)} records, asked for {a.train} + {a.eval}")
    work = HERE / "work"
    work.mkdir(exist_ok=True)
    train, held = rows[: a.train], rows[a.train: a.train + a.eval]
    (work / "train.json").write_text(json.dumps(train, ensure_ascii=False, indent=1), encoding="utf-8")
    outputs = [{"instruction": r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else ""),
                "output": r["output"], "generator": "text-davinci-003", "dataset": "alpaca-heldout"} for r in held]
    (work / "alpaca_eval_heldout.json").write_text(json.dumps(outputs, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"wrote {work / 'train.json'} ({len(train)} records) and {work / 'alpaca_eval_heldout.json'} ({len(held)})")
    if a.ifeval is not None:
        if not a.ifeval.is_file():
            raise SystemExit(f"error: {a.ifeval} not found: pass IFEval's input_data.jsonl")
        lines = [ln for ln in a.ifeval.read_text(encoding="utf-8").splitlines() if ln.strip()][: a.ifeval_n]
        (work / "ifeval.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {work / 'ifeval.jsonl'} (the first {len(lines)} IFEval prompts)")


if __name__ == "__main__":
    main()
