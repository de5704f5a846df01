"""`curate.dedup_mode: minhash`: MinHash LSH proposes pairs, the exact ROUGE-L rule decides."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from protege.curate import filters as F
from protege.curate.minhash import (MinHashDeduper, candidate_probability, jaccard_floor, minhash_dedup,
                                    near_duplicates)
from protege.records import Example, read_examples
from protege.rouge import dedup
from tests.conftest import run_cli

SEEDS = Path(__file__).resolve().parents[2] / "src" / "protege" / "templates" / "seeds.jsonl"
_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def ref_rouge(a: str, b: str) -> float:
    """Google's rouge-score, the reference the exact filter matches."""
    return _SCORER.score(a, b)["rougeL"].fmeasure


def variants(texts: list[str], n: int, seed: int = 3) -> list[str]:
    """Seeded near-duplicates: a word dropped, inserted or swapped, or an exact copy."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.choice(texts).split()
        op = rng.randrange(4)
        if op == 0 and len(words) > 1:
            del words[rng.randrange(len(words))]
        elif op == 1:
            words.insert(rng.randrange(len(words) + 1), rng.choice(["very", "the", "please", "new"]))
        elif op == 2 and len(words) > 1:
            k = rng.randrange(len(words) - 1)
            words[k], words[k + 1] = words[k + 1], words[k]
        out.append(" ".join(words))
    return out


def seed_texts() -> list[str]:
    texts = [e.prompt for e in read_examples(SEEDS)]
    mixed = texts + variants(texts, 2 * len(texts))
    random.Random(0).shuffle(mixed)
    return mixed


def check_rule(texts: list[str], kept: list[int], dropped: list, threshold: float = 0.7) -> None:
    """Every drop is justified by rouge-score against a text kept earlier; kept texts are in order."""
    kept_set = set(kept)
    assert kept == sorted(kept)
    for i, m in dropped:
        assert m.index in kept_set and m.index < i
        assert m.text == texts[m.index]
        assert m.score == pytest.approx(ref_rouge(texts[i], texts[m.index]), abs=1e-12)
        assert m.score > threshold
    assert sorted(kept + [i for i, _ in dropped]) == list(range(len(texts)))


def test_every_drop_obeys_the_rouge_rule_and_most_duplicates_are_found():
    texts = seed_texts()
    kept, dropped, pairs = minhash_dedup(texts)
    check_rule(texts, kept, dropped)
    exact = {i for i, _ in dedup(texts, 0.7).dropped}
    found = {i for i, _ in dropped}
    assert exact and pairs > 0
    recall = len(found & exact) / len(exact)
    print(f"\nseeds + variants: {len(texts)} texts, exact drops {len(exact)}, minhash drops {len(found)}, "
          f"recall {recall:.4f}, pairs scored {pairs}")
    assert recall >= 0.95


def test_recall_against_the_exact_filter_on_real_alpaca(shared_data):
    """Recall on a small real sample (3,000 Alpaca instructions + 3,000 seeded variants)."""
    seen: dict[str, None] = {}
    for rec in json.loads((shared_data / "alpaca" / "alpagasus_random_9k.json").read_text()):
        seen.setdefault(rec["instruction"])
    base = list(seen)[:3000]
    texts = base + variants(base, 3000, seed=11)
    random.Random(5).shuffle(texts)
    exact = dedup(texts, 0.7)
    kept, dropped, pairs = minhash_dedup(texts)
    check_rule(texts, kept, dropped)
    want = {i for i, _ in exact.dropped}
    found = {i for i, _ in dropped}
    recall = len(found & want) / len(want)
    print(f"\nAlpaca sample: {len(texts)} texts, exact keeps {len(exact.kept)}, minhash keeps {len(kept)}; "
          f"recall {recall:.4f} ({len(found & want)}/{len(want)}), minhash-only drops {len(found - want)}, "
          f"pairs scored {pairs}")
    assert recall >= 0.98


def test_what_lsh_does_not_propose_is_kept():
    """The stated limit: a pair above the ROUGE threshold that LSH never proposes stays. With 2 bands of
    64 rows a pair must agree on 64 minima at once; a one-word change in 8 words rarely does."""
    a = "describe the life cycle of a monarch butterfly"
    b = "describe the life cycle of a butterfly"
    assert ref_rouge(a, b) > 0.7
    strict = MinHashDeduper(0.7, num_perm=128, bands=2)
    assert strict.add(a) is None and strict.add(b) is None  # missed: both kept
    default = MinHashDeduper(0.7)
    assert default.add(a) is None
    m = default.add(b)
    assert m is not None and m.text == a and m.score == pytest.approx(ref_rouge(a, b))


def test_candidate_odds_at_the_jaccard_floor():
    # F > 0.7 implies multiset Jaccard > 0.7/1.3; 32 bands of 4 rows propose such a pair 94% of the time.
    assert jaccard_floor(0.7) == pytest.approx(0.5385, abs=1e-4)
    assert 0.93 < candidate_probability(jaccard_floor(0.7)) < 0.95
    assert candidate_probability(0.9) > 0.999999


def test_identical_tokens_repeats_and_threshold_one():
    d = MinHashDeduper(0.7)
    assert d.add("Name three rivers.") is None
    m = d.add("NAME, three rivers!")  # same tokens
    assert m is not None and m.score == 1.0 and m.index == 0
    assert d.add("") is None and d.add("???") is None  # no tokens: ROUGE 0, kept, never indexed
    assert len(d) == 1
    # Repeated tokens count as a multiset: "a a a b" vs "a b" have ROUGE 2*2/6 = 0.667 < 0.7.
    assert d.add("go go go now") is None and d.add("go now") is None
    everything = MinHashDeduper(1.0)  # nothing is strictly above 1.0
    assert all(everything.add(t) is None for t in ["same text", "same text", "same  TEXT"])


def test_filter_streams_and_records_drops_like_the_exact_filter():
    texts = seed_texts()[:60]
    exs = [Example([{"role": "user", "content": t}, {"role": "assistant", "content": "ok"}], {"n": i})
           for i, t in enumerate(texts)]
    drops = F.Drops()
    out = near_duplicates(iter(exs), drops, threshold=0.7, references=[texts[0]])
    first = next(out)  # streaming: a record comes out before the input is consumed
    kept = [first, *out]
    assert [e.meta["n"] for e in kept] == sorted(e.meta["n"] for e in kept)
    assert 0 not in {e.meta["n"] for e in kept}  # identical to the reference
    assert len(kept) + len(drops.records) == len(exs)
    for d in drops.records:
        assert d.meta["dropped_by"] == "near_duplicate" and "MinHash" in d.meta["drop_reason"]
        assert d.meta["rougeL"] > 0.7
        assert d.meta["rougeL"] == pytest.approx(ref_rouge(d.prompt, d.meta["near_duplicate_of"]), abs=1e-6)


def test_decisions_do_not_depend_on_the_python_hash_seed(tmp_path):
    """Signatures use SHA-1 of the tokens, never Python's salted hash(): same decisions in every process."""
    code = ("import json, sys; from protege.curate.minhash import minhash_dedup; "
            "texts = json.load(open(sys.argv[1])); print(json.dumps(minhash_dedup(texts)[0]))")
    src = tmp_path / "texts.json"
    src.write_text(json.dumps(seed_texts()))
    outs = [subprocess.run([sys.executable, "-c", code, str(src)], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout for seed in ("1", "2")]
    assert outs[0] == outs[1] and json.loads(outs[0])


def test_protege_curate_with_minhash_through_the_cli(tmp_path):
    texts = seed_texts()
    src = tmp_path / "raw.jsonl"
    with src.open("w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"instruction": t, "input": "", "output": f"Answer number {i} in words."}) + "\n")
    (tmp_path / "protege.yaml").write_text("run_dir: run\ncurate:\n  dedup_mode: minhash\n")
    r = run_cli("curate", "-c", str(tmp_path / "protege.yaml"), "--input", str(src), "--no-stats", timeout=300)
    assert r.returncode == 0, r.stderr
    data = tmp_path / "run" / "data"
    kept = [json.loads(line) for n in ("train", "val", "test") for line in (data / f"{n}.jsonl").open()]
    dropped = [json.loads(line) for line in (data / "dropped.jsonl").open()]
    near = [d for d in dropped if d["meta"]["dropped_by"] == "near_duplicate"]
    assert near and all("MinHash" in d["meta"]["drop_reason"] for d in near)
    assert len(kept) + len(dropped) == len(texts)
    # The exact filter on the same texts drops the same or nearly the same records.
    exact_kept = len(dedup(texts, 0.7).kept)
    assert abs(len(kept) - exact_kept) <= max(2, exact_kept // 50)
    assert "MinHash LSH" in (data / "card.md").read_text()
