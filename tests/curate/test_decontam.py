"""Decontamination by n-gram overlap with eval prompts, on planted overlaps."""

from __future__ import annotations

import json
import random

import pytest

from protege.curate.decontam import decontaminate, load_eval_ngrams
from protege.curate.filters import Drops
from protege.rouge import tokenize
from protege.errors import UserError
from protege.records import Example, read_examples

EVAL = ("Describe the water cycle and explain how evaporation, condensation and precipitation "
        "work together to move water around the planet.")  # 20 tokens


def ex(prompt: str) -> Example:
    return Example([{"role": "user", "content": prompt}, {"role": "assistant", "content": "ok"}], {})


@pytest.fixture
def eval_file(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps([{"instruction": EVAL, "input": "", "output": "..."},
                                {"instruction": "What is the boiling point of water at sea level?",
                                 "input": "", "output": "100 C"}]))
    return path


def test_planted_13_gram_is_dropped_12_gram_is_kept(eval_file):
    index = load_eval_ngrams([eval_file], n=13)
    words = EVAL.split()
    thirteen = "Please: " + " ".join(words[2:15]).upper() + " -- thanks!"  # case/punctuation differ
    twelve = "Write a poem. " + " ".join(words[2:14]) + " in the style of Keats"
    verbatim_short = "Quiz: what is the boiling point of water at sea level? Answer briefly."
    clean = "Explain how a bicycle gear system works."
    items = [ex(thirteen), ex(twelve), ex(verbatim_short), ex(clean)]
    drops = Drops()
    kept = list(decontaminate(items, drops, index))
    assert [k.prompt for k in kept] == [twelve, clean]
    first = drops.records[0].meta
    assert first["dropped_by"] == "decontam"
    assert first["contamination"]["ngram"] == " ".join(tokenize(" ".join(words[2:15])))
    assert first["contamination"]["eval_item"] == "eval.json#1"
    # The short eval prompt (10 tokens >= 13 // 2) counts as one whole n-gram.
    assert drops.records[1].meta["contamination"]["eval_item"] == "eval.json#2"


def test_flag_mode_keeps_and_marks(eval_file):
    index = load_eval_ngrams([eval_file], n=13)
    drops = Drops()
    kept = list(decontaminate([ex("x " + EVAL), ex("clean prompt")], drops, index, action="flag"))
    assert len(kept) == 2 and drops.records == []
    assert "contamination" in kept[0].meta and "contamination" not in kept[1].meta


def test_missing_eval_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="eval file not found"):
        load_eval_ngrams([tmp_path / "nope.jsonl"])


def reference_contaminated(train: list[str], evals: list[str], n: int) -> set[int]:
    """Brute force: a training prompt is contaminated if it contains, as a token run, any
    n-gram of an eval prompt (or a whole eval prompt of n//2..n-1 tokens)."""
    grams = set()
    for e in evals:
        t = tokenize(e)
        if len(t) >= n:
            grams |= {" ".join(t[i:i + n]) for i in range(len(t) - n + 1)}
        elif len(t) >= n // 2:
            grams.add(" ".join(t))
    out = set()
    for k, p in enumerate(train):
        s = " " + " ".join(tokenize(p)) + " "
        if any(f" {g} " in s for g in grams):
            out.add(k)
    return out


def test_real_alpaca_with_planted_overlaps_matches_brute_force(shared_data, tmp_path):
    rng = random.Random(3)
    records = read_examples(shared_data / "alpaca" / "alpagasus_helpfulness_t45.json")
    evals, train = records[:40], records[40:640]
    eval_path = tmp_path / "eval.jsonl"
    eval_path.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in evals))
    train_prompts = [t.prompt for t in train]
    planted = []
    for e in rng.sample(evals, 15):  # eval prompts embedded in longer training prompts
        planted.append(len(train_prompts))
        train_prompts.append(f"Consider this. {e.prompt} Then answer in one line.")
    index = load_eval_ngrams([eval_path], n=13)
    drops = Drops()
    kept = list(decontaminate([ex(p) for p in train_prompts], drops, index))
    dropped = {train_prompts.index(d.prompt) for d in drops.records}
    expected = reference_contaminated(train_prompts, [e.prompt for e in evals], 13)
    assert set(planted) <= expected  # the planted ones are found by the reference too
    assert dropped == expected
    assert len(kept) == len(train_prompts) - len(expected)
