"""`protege dedup` end to end: the kept file equals what rouge-score's pairwise loop keeps."""

from __future__ import annotations

import json
import random
from pathlib import Path

from rouge_score import rouge_scorer

from tests.conftest import run_cli


def reference_keep(texts: list[str], threshold: float) -> list[int]:
    """The Alpaca loop: score each candidate against every kept text with rouge-score."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    kept: list[int] = []
    for i, t in enumerate(texts):
        if all(scorer.score(texts[j], t)["rougeL"].fmeasure <= threshold for j in kept):
            kept.append(i)
    return kept


def planted(records: list[dict], rng: random.Random, n: int) -> list[dict]:
    """Near-duplicates of real instructions: a word dropped, inserted or swapped."""
    out = []
    for rec in rng.sample(records, n):
        words = rec["instruction"].split()
        op = rng.choice(["drop", "insert", "swap"])
        if op == "drop" and len(words) > 3:
            del words[rng.randrange(len(words))]
        elif op == "swap" and len(words) > 2:
            k = rng.randrange(len(words) - 1)
            words[k], words[k + 1] = words[k + 1], words[k]
        else:
            words.insert(rng.randrange(len(words) + 1), rng.choice(["please", "briefly", "now"]))
        out.append({**rec, "instruction": " ".join(words)})
    return out


def test_dedup_cli_keeps_exactly_what_the_reference_keeps(tmp_path: Path, shared_data: Path) -> None:
    real = json.loads((shared_data / "alpaca" / "alpagasus_random_9k.json").read_text())[:300]
    rng = random.Random(7)
    mixed = real + planted(real, rng, 150)
    rng.shuffle(mixed)
    src, dst = tmp_path / "in.json", tmp_path / "out.json"
    src.write_text(json.dumps(mixed))
    proc = run_cli("dedup", str(src), str(dst), "--threshold", "0.7", "--field", "instruction")
    assert proc.returncode == 0, proc.stderr
    expected = [mixed[i] for i in reference_keep([r["instruction"] for r in mixed], 0.7)]
    assert json.loads(dst.read_text()) == expected
    assert len(expected) < len(mixed)  # the planted near-duplicates were really dropped
    dropped = [json.loads(line) for line in (tmp_path / "out.dropped.jsonl").read_text().splitlines()]
    assert len(dropped) == len(mixed) - len(expected)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for d in dropped[:20]:
        m = d["meta"]
        assert m["drop_reason"] == "rouge-l" and m["score"] > 0.7
        assert m["matched_text"] == mixed[m["matched_index"]]["instruction"]
        exp = scorer.score(m["matched_text"], mixed[m["index"]]["instruction"])["rougeL"].fmeasure
        assert m["score"] == exp


def test_dedup_cli_bad_threshold_exit_2(tmp_path: Path) -> None:
    src = tmp_path / "in.json"
    src.write_text(json.dumps([{"instruction": "a b c", "input": "", "output": "x"}]))
    proc = run_cli("dedup", str(src), str(tmp_path / "o.json"), "--threshold", "1.5")
    assert proc.returncode == 2 and "threshold" in proc.stderr and "Traceback" not in proc.stderr
