"""Quality filters: each a stream function that records why it dropped what it dropped."""

from __future__ import annotations

import json
import random

import pytest

from protege.config import CurateConfig
from protege.curate import filters as F
from protege.errors import UserError
from protege.records import Example, read_examples


def ex(prompt: str, reply: str | None = "A fine answer.", **meta) -> Example:
    msgs = [{"role": "user", "content": prompt}]
    if reply is not None:
        msgs.append({"role": "assistant", "content": reply})
    return Example(msgs, dict(meta))


def run(f, items, **kw):
    drops = F.Drops()
    kept = list(f(items, drops, **kw))
    return kept, drops


def test_empty_or_truncated_drops_with_reasons_and_keeps_order():
    items = [ex("Name a colour.", "Blue."), ex("   ", "x"), ex("Say hi.", None), ex("Say hi.", "  \n"),
             ex("Write an essay.", "Once upon", finish_reason="length"),
             ex("Chat.", "fine", teacher={"model": "m", "finish_reason": "length"}),
             ex("Count to 3.", "1 2 3", finish_reason="stop")]
    kept, drops = run(F.empty_or_truncated, items)
    assert [k.output for k in kept] == ["Blue.", "1 2 3"]
    reasons = [d.meta["drop_reason"] for d in drops.records]
    assert reasons[:3] == ["empty instruction", "no assistant reply", "empty reply"]
    assert all("finish_reason=length" in r for r in reasons[3:])
    assert drops.counts == {"empty": 3, "truncated": 2}
    assert "drop_reason" not in items[1].meta  # inputs are not edited


@pytest.mark.parametrize("reply", [
    "As an AI language model, I cannot have opinions on politics.",
    "I'm sorry, but I cannot help with that request.",
    "I cannot fulfill this request because it is harmful.",
    "Sorry, I can't browse the web. However ...",
    "The answer depends. Note that my knowledge cutoff is 2021.",
    "I apologise, but as an AI I do not have access to that.",
])
def test_refusals_and_boilerplate_are_dropped(reply):
    kept, drops = run(F.refusals, [ex("Q?", reply)])
    assert kept == [] and drops.counts["refusal"] == 1
    assert drops.records[0].meta["drop_reason"].startswith("refusal or AI boilerplate")


@pytest.mark.parametrize("reply", [
    "Dear Ms Lee,\nI'm sorry for the delay in shipping your order; it left today.",
    "The model answered: I cannot explain it better than the textbook does.",
    "Photosynthesis turns light into chemical energy.",
])
def test_legitimate_replies_are_not_taken_for_refusals(reply):
    kept, _ = run(F.refusals, [ex("Write it.", reply)])
    assert len(kept) == 1


def test_length_bounds():
    items = [ex("a", ""), ex("b", "one"), ex("c", "one two three"), ex("d", " ".join(["w"] * 11))]
    kept, drops = run(F.length_bounds, items, min_words=1, max_words=10)
    assert [k.prompt for k in kept] == ["b", "c"]
    assert "fewer than min_output_words=1" in drops.records[0].meta["drop_reason"]
    assert "more than max_output_words=10" in drops.records[1].meta["drop_reason"]


def test_blocklist_matches_whole_words_in_the_instruction_only():
    items = [ex("Draw a cat."), ex("Describe the image below."), ex("Explain imagery in poems."),
             ex("Summarise this text.", "It mentions an image."), ex("Plan a trip, then go to bed.")]
    kept, drops = run(F.blocklist, items)
    assert [k.prompt for k in kept] == ["Explain imagery in poems.", "Summarise this text."]
    assert [d.meta["drop_reason"] for d in drops.records] == [
        "instruction mentions blocklisted 'draw'", "instruction mentions blocklisted 'image'",
        "instruction mentions blocklisted 'go to'"]
    kept, _ = run(F.blocklist, items, words=["cat"])
    assert len(kept) == 4


def test_language_heuristic_catches_other_languages_and_keeps_unclear_text():
    items = [
        ex("Explain what a binary search is and when it is useful.", "It halves the range at each step."),
        ex("Explain what a binary search is.", "La recherche dichotomique divise la liste en deux et "
           "compare avec le milieu pour trouver une valeur dans un tableau trié."),
        ex("Explain what a binary search is.", "二分查找每次将搜索范围减半。"),
        ex("Erkläre, was eine binäre Suche ist und wie sie mit einer sortierten Liste funktioniert.", "..."),
        ex("Translate into French: the cat is on the table.", "Le chat est sur la table."),
        ex("List four chords.", "A, G, C, E."),
        ex("Solve for x.", "x = 4, y = 7"),
    ]
    kept, drops = run(F.language, items, target="en")
    assert [k.prompt for k in kept] == [items[0].prompt, items[4].prompt, items[5].prompt, items[6].prompt]
    reasons = [d.meta["drop_reason"] for d in drops.records]
    assert reasons == ["reply looks like 'fr', not 'en' (heuristic)", "reply looks like 'zh', not 'en' (heuristic)",
                       "instruction looks like 'de', not 'en' (heuristic)"]
    with pytest.raises(UserError):
        list(F.language([], F.Drops(), target="tlh"))


def test_language_filter_on_real_alpaca_keeps_nearly_everything(shared_data):
    # Alpaca is English: a heuristic that drops more than a handful of it would be harmful.
    items = read_examples(shared_data / "alpaca" / "alpagasus_claude_t45.json")
    kept, drops = run(F.language, items, target="en")
    assert len(drops.records) <= len(items) // 500, [d.meta["drop_reason"] for d in drops.records][:10]


def test_exact_duplicates_after_normalisation():
    items = [ex("Name a colour.", "Blue."), ex("name a   COLOUR", "blue"), ex("Name a colour.", "Red.")]
    kept, drops = run(F.exact_duplicates, items)
    assert [k.output for k in kept] == ["Blue.", "Red."]
    assert drops.records[0].meta["duplicate_of"] == 0


def test_near_duplicates_on_real_instructions_record_match_and_score(shared_data):
    rng = random.Random(7)
    records = json.loads((shared_data / "alpaca" / "code_alpaca_2k.json").read_text())[:300]
    originals = [ex(r["instruction"], r["output"]) for r in records]
    planted = []
    for r in rng.sample(records, 30):
        words = r["instruction"].split()
        if len(words) < 8:
            continue
        del words[rng.randrange(len(words))]  # one word dropped: ROUGE-L well above 0.7
        planted.append((r["instruction"], ex(" ".join(words), "dup")))
    items = originals + [p for _, p in planted]
    kept, drops = run(F.near_duplicates, items, threshold=0.7, field="instruction")
    dropped_planted = [d for d in drops.records if d.output == "dup"]
    assert len(dropped_planted) == len(planted) > 10
    for (orig, _), d in zip(planted, dropped_planted):
        assert d.meta["dropped_by"] == "near_duplicate"
        assert d.meta["rougeL"] > 0.7
        # the matched kept text is the original or an earlier near-identical one
        from protege.rouge import rougeL_f, tokenize

        assert rougeL_f(tokenize(d.meta["near_duplicate_of"]), tokenize(d.prompt)) == pytest.approx(d.meta["rougeL"])
    assert len(kept) + len(drops.records) == len(items)


def test_build_filters_follows_the_config():
    drops = F.Drops()
    names = [n for n, _ in F.build_filters(CurateConfig(), drops)]
    assert names == ["empty/truncated", "refusal", "length", "blocklist", "exact_duplicate"]
    cfg = CurateConfig(drop_refusals=False, blocklist=[], language="en")
    assert [n for n, _ in F.build_filters(cfg, drops)] == ["empty/truncated", "length", "language", "exact_duplicate"]
    chain = F.build_filters(CurateConfig(max_output_words=3), drops)
    items = [ex("Draw a dog."), ex("Say hi.", "hi"), ex("Say hi.", "hi"), ex("Talk.", "one two three four")]
    assert [k.output for k in F.apply(items, chain)] == ["hi"]
    assert drops.counts == {"blocklist": 1, "exact_duplicate": 1, "length": 1}


