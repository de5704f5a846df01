"""The fast ROUGE-L filter decides exactly as the plain rouge-score loop (the reference).

The reference lives here, not in the product: every candidate scored against every kept text
with Google's rouge-score, dropped when the F-measure is strictly above the threshold.
"""

from __future__ import annotations

import json
import random
from fractions import Fraction
from pathlib import Path

import pytest

from protege import rouge
from protege.rouge import (
    Match,
    RougeDeduper,
    dedup,
    exact_dedup,
    normalize,
    rougeL_f,
    tokenize,
)

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer", reason="rouge-score is the reference")
SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "alpaca"
ALPACA = ["alpagasus_random_9k.json", "alpagasus_claude_t45.json",
          "alpagasus_helpfulness_t45.json", "cherry_alpaca_5_percent.json"]


def ref_score(kept: str, cand: str) -> float:
    return SCORER.score(cand, kept)["rougeL"].fmeasure


def reference(texts, threshold=0.7, references=()):
    """The plain loop: (kept indices, {dropped index: (best item, best score)}).

    Items are references first, then kept texts, in order of addition; the best match is the
    highest score above the threshold, the earliest item on ties.
    """
    tok = SCORER._tokenizer.tokenize
    items = [tok(r) for r in references]
    kept, dropped = [], {}
    for i, text in enumerate(texts):
        cand = tok(text)
        best = None
        for j, other in enumerate(items):
            f = rouge_scorer._score_lcs(cand, other).fmeasure
            if f > threshold and (best is None or f > best[1]):
                best = (j, f)
        if best is None:
            kept.append(i)
            items.append(cand)
        else:
            dropped[i] = best
    return kept, dropped


def fast_reference_decisions(texts, threshold=0.7):
    """The same loop stopping at the first score above the threshold: decisions only."""
    tok = SCORER._tokenizer.tokenize
    kept_tokens, kept = [], []
    for i, text in enumerate(texts):
        cand = tok(text)
        if not any(rouge_scorer._score_lcs(cand, k).fmeasure > threshold for k in kept_tokens):
            kept.append(i)
            kept_tokens.append(cand)
    return kept


def assert_same(texts, threshold=0.7, references=()):
    """dedup() and RougeDeduper.add() both agree with the reference, matches included."""
    kept, dropped = reference(texts, threshold, references)
    res = dedup(texts, threshold, references)
    assert res.kept == kept
    assert [i for i, _ in res.dropped] == sorted(dropped)
    item_text = list(references) + [texts[i] for i in kept]
    item_origin = [(i, True) for i in range(len(references))] + [(i, False) for i in kept]
    for i, m in res.dropped:
        j, f = dropped[i]
        assert (m.index, m.reference) == item_origin[j]
        assert m.score == f == ref_score(item_text[j], texts[i])
        assert m.text == item_text[j]
    d = RougeDeduper(threshold)
    for r in references:
        d.add_reference(r)
    stream = [d.add(t) for t in texts]
    assert [i for i, m in enumerate(stream) if m is None] == kept
    for i, m in enumerate(stream):
        if m is not None:
            assert (m.index, m.score) == dropped[i]
    return res


# ---------------------------------------------------------------- tokenizer and score

WEIRD = [
    "", "   ", "?!...", "Hello, World!", "café crème brûlée", "naïve façade", "İstanbul",
    "straße STRASSE", "Ǆemal", "\u212a kelvin", "ﬁne ﬂow", "１２３ full-width", "x²+y³", "①②",
    "tab\tnew\nline", "under_score and-dash", "MiXeD 42abc abc42", "日本語のテキスト", "ÀÉÎÕÜ",
    "a.b.c", "U.S.A.", "don't won't", "e-mail: a@b.com", "\u0130\u0131", "ǅ ǈ ǋ", "ΣΑΣ σας",
]


def test_tokenize_is_rouge_scores_default_tokenizer():
    rng = random.Random(7)
    alphabet = "aZ09 _-.,'?\u00e9\u0130\u212a\u01c4\ufb01\uff11\u00b2\u03a3\u4e00\n\t\ud800\x00\x7f"
    fuzz = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(30))) for _ in range(3000)]
    for text in WEIRD + fuzz:
        assert tokenize(text) == SCORER._tokenizer.tokenize(text), text
    assert tokenize("café") == ["caf"]  # non-ASCII letters vanish, as in rouge-score


def test_rougeL_f_is_rouge_scores_fmeasure():
    rng = random.Random(3)
    for _ in range(2000):
        a = [rng.choice("abcdef") for _ in range(rng.randrange(12))]
        b = [rng.choice("abcdef") for _ in range(rng.randrange(12))]
        want = rouge_scorer._score_lcs(a, b).fmeasure
        assert rougeL_f(a, b) == want == rougeL_f(b, a)
        assert ref_score(" ".join(a), " ".join(b)) == want


def boundary_cases(threshold=Fraction(7, 10), limit=40):
    """(a, b, lcs, rouge-score's float F) for every pair whose exact F equals the threshold."""
    from rouge_score import scoring

    return [(a, b, lcs, scoring.fmeasure(lcs / b, lcs / a))
            for a in range(1, limit) for b in range(1, limit) for lcs in range(1, min(a, b) + 1)
            if Fraction(2 * lcs, a + b) == threshold]


def pair_with_lcs(a, b, lcs):
    """A kept text of b tokens and a candidate of a tokens whose LCS is exactly lcs."""
    shared = [f"s{i}" for i in range(lcs)]
    kept = " ".join(shared + [f"k{i}" for i in range(b - lcs)])
    cand = " ".join(shared + [f"c{i}" for i in range(a - lcs)])
    return kept, cand


def test_exact_boundary_is_kept_and_float_rounding_decides_like_rouge_score():
    cases = boundary_cases()
    assert any(f == 0.7 for *_, f in cases) and any(f != 0.7 for *_, f in cases)
    for a, b, lcs, f in cases:
        kept, cand = pair_with_lcs(a, b, lcs)
        assert ref_score(kept, cand) == f
        res = dedup([kept, cand], threshold=0.7)
        # strictly greater drops: F == 0.7 keeps; rounding above 0.7 drops, as the reference
        assert res.kept == ([0] if f > 0.7 else [0, 1]), (a, b, lcs, f)
        assert_same([kept, cand])
    a, b, lcs, f = next(c for c in cases if c[3] == 0.7)
    kept, cand = pair_with_lcs(a, b, lcs)
    assert dedup([kept, cand]).kept == [0, 1]
    assert dedup([kept, cand], threshold=0.69).kept == [0]


# ---------------------------------------------------------------- hand-written edge cases

def test_empty_and_punctuation_only_texts_are_always_kept():
    texts = ["", "?!", "...", "", "Hello world", "hello, WORLD!", "", "!!!"]
    res = assert_same(texts)
    assert res.kept == [0, 1, 2, 3, 4, 6, 7]
    assert res.dropped[0][0] == 5 and res.dropped[0][1].score == 1.0
    assert assert_same(texts, threshold=0.0).kept == [0, 1, 2, 3, 4, 6, 7]


def test_non_ascii_is_tokenized_like_rouge_score():
    texts = ["Café au lait", "caf au lait", "Résumé writing tips", "r sum writing tips", "日本", "中文"]
    assert assert_same(texts).kept == [0, 2, 4, 5]  # non-ASCII letters vanish, as in rouge-score


def test_thresholds_zero_and_one():
    texts = ["the cat sat", "a dog ran", "the end", "dog", "cat sat the", "zebra", "the cat sat"]
    res0 = assert_same(texts, threshold=0.0)
    assert res0.kept == [0, 1, 5]  # any shared token is F > 0
    res1 = assert_same(texts, threshold=1.0)
    assert res1.kept == list(range(len(texts)))  # F > 1 never happens, even for duplicates
    with pytest.raises(ValueError):
        RougeDeduper(1.5)
    with pytest.raises(ValueError):
        dedup(texts, threshold=float("nan"))


def test_references_block_candidates_and_are_not_outputs():
    seeds = ["Write a poem about the sea.", "List three colors."]
    texts = ["Write a poem about the sea!", "List three colours.", "Write a short poem about sea",
             "Translate this sentence into French."]
    res = assert_same(texts, references=seeds)
    assert res.kept == [1, 3]
    i, m = res.dropped[0]
    assert (i, m.index, m.reference, m.text, m.score) == (0, 0, True, seeds[0], 1.0)
    d = RougeDeduper()
    assert d.add_reference(seeds[0]) == 0
    assert d.add_reference(seeds[0]) == 1  # references are never filtered
    assert d.check(texts[0]) == Match(0, seeds[0], 1.0, reference=True)  # earliest of a tie
    assert d.add(texts[3]) is None and len(d) == 3
    assert d.check("translate this sentence into french") == Match(2, texts[3], 1.0)


def test_match_reports_the_best_kept_item_and_rouge_scores_score():
    kept = ["a b c d e f g h i j", "a b c d e f g h x y", "a b c d e f g h i z"]
    cand = "a b c d e f g h i j k"
    d = RougeDeduper(0.0)
    for k in kept:
        d.add_reference(k)
    m = d.check(cand)
    scores = [ref_score(k, cand) for k in kept]
    assert m.index == scores.index(max(scores)) == 0 and m.score == scores[0]
    d2 = RougeDeduper(0.7)
    for k in kept[1:]:
        d2.add_reference(k)
    m2 = d2.check(cand)
    assert m2.index == 1 and m2.score == ref_score(kept[2], cand)  # the better of the two


def test_random_small_vocabulary_all_thresholds():
    """Many near matches and exact boundaries: decisions, matched items and scores."""
    rng = random.Random(11)
    texts = [" ".join(rng.choice("abcdefgh") for _ in range(rng.randrange(14))) for _ in range(200)]
    refs = texts[:5]
    for t in (0.0, 0.3, 0.5, 0.7, 0.75, 1.0):
        assert_same(texts[5:], threshold=t)
        assert_same(texts[5:], threshold=t, references=refs)


def test_stream_reranks_and_wide_codes_keep_decisions(monkeypatch):
    """Past 64 items the stream re-ranks tokens; past the code-point space it stores ints."""
    rng = random.Random(5)
    vocab = [f"w{i}" for i in range(120)]
    texts = [" ".join(rng.choice(vocab[: rng.choice((10, 120))]) for _ in range(rng.randrange(2, 12)))
             for _ in range(400)]
    kept = fast_reference_decisions(texts)
    d = RougeDeduper()
    assert [i for i, t in enumerate(texts) if d.add(t) is None] == kept
    monkeypatch.setattr(rouge, "_MAX_CODE", 60)
    d = RougeDeduper()
    assert [i for i, t in enumerate(texts) if d.add(t) is None] == kept
    assert d._wide
    res = dedup(texts)
    assert res.kept == kept
    primed = RougeDeduper()
    primed._prime([tokenize(t) for t in texts])
    assert primed._wide  # the batch path above ran on ints too


def test_normalize_and_exact_dedup():
    assert normalize("  Hello,   World!! ") == "hello, world"
    assert normalize("«Straße»") == "strasse"
    assert normalize("...") == ""
    texts = ["Hello world.", "hello   WORLD", "Hello, world", "(hello world)", "other"]
    res = exact_dedup(texts, references=["HELLO WORLD!"])
    assert res.kept == [2, 4]
    assert [(i, m.index, m.reference, m.score) for i, m in res.dropped] == [
        (0, 0, True, 1.0), (1, 0, True, 1.0), (3, 0, True, 1.0)]
    assert exact_dedup(texts).kept == [0, 2, 4]


def test_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, protege.rouge; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------- real data

def near_duplicates(texts, rng):
    """Edited copies: drop, insert or swap words, change case/punctuation, or copy exactly."""
    out = []
    for text in texts:
        words = text.split()
        op = rng.randrange(5)
        if op == 0 and len(words) > 1:
            del words[rng.randrange(len(words))]
        elif op == 1:
            words.insert(rng.randrange(len(words) + 1), rng.choice(["very", "the", "please", "new"]))
        elif op == 2 and len(words) > 1:
            k = rng.randrange(len(words) - 1)
            words[k], words[k + 1] = words[k + 1], words[k]
        elif op == 3:
            words = [w.upper() if rng.random() < 0.5 else w.strip(".,?!") + "," for w in words]
        out.append(" ".join(words))
    return out


@pytest.fixture(scope="module")
def alpaca_instructions():
    if not (DATA / ALPACA[0]).exists() or not (DATA / "seed_tasks.jsonl").exists():
        pytest.skip(f"reference data not found at {DATA} (only in the dev/CI workspace)")
    seen: dict[str, None] = {}
    for name in ALPACA:
        for rec in json.loads((DATA / name).read_text()):
            seen.setdefault(rec["instruction"])
    seeds = [json.loads(line)["instruction"] for line in (DATA / "seed_tasks.jsonl").read_text().splitlines()]
    return list(seen), seeds


def test_real_instructions_with_planted_near_duplicates(alpaca_instructions):
    instructions, seeds = alpaca_instructions
    assert len(seeds) == 175
    rng = random.Random(2024)
    base = instructions[:800]
    texts = base + near_duplicates([rng.choice(base) for _ in range(1200)], rng)
    rng.shuffle(texts)  # 2,000 items, ~0.6M reference pairs: ~15-25 s
    kept = fast_reference_decisions(texts)
    res = dedup(texts)
    assert res.kept == kept
    assert len(res.dropped) > 1000
    for i, m in res.dropped[:200]:
        assert m.score > 0.7 and m.score == ref_score(texts[m.index], texts[i])
    d = RougeDeduper()
    assert [i for i, t in enumerate(texts) if d.add(t) is None] == kept


def test_real_instructions_against_seed_references(alpaca_instructions):
    instructions, seeds = alpaca_instructions
    rng = random.Random(9)
    texts = instructions[:200] + near_duplicates(seeds[:100], rng)
    rng.shuffle(texts)
    res = assert_same(texts, references=seeds)
    assert sum(m.reference for _, m in res.dropped) > 40
