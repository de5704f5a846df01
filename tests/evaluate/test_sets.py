"""Eval sets: every public format detected from its fields (our own fixture files), and unknown shapes refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protege import records
from protege.config import load_config
from protege.errors import UserError
from protege.evaluate.candidates import generator_candidates
from protege.evaluate.sets import FORMATS, detect, load_file, load_sets
from protege.store import RunStore
from tests.conftest import run_cli

FIX = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("name,fmt,n,multi", [
    ("model_outputs.json", "alpaca_eval", 3, 0),
    ("user_oriented_instructions.jsonl", "self_instruct_user", 4, 0),
    ("mt_bench_question.jsonl", "mt_bench", 2, 2),
    ("vicuna_bench_question.jsonl", "mt_bench", 2, 0),
    ("vicuna_old_question.jsonl", "vicuna", 2, 0),
    ("ifeval_input_data.jsonl", "ifeval", 3, 0),
    ("instructions.json", "instructions", 3, 0),
])
def test_public_formats_detected(name: str, fmt: str, n: int, multi: int) -> None:
    s = load_file(FIX / name)
    assert (s.format, len(s.items), sum(it.multi_turn for it in s.items)) == (fmt, n, multi)
    assert all(it.turns and all(t.strip() for t in it.turns) for it in s.items)
    assert len({it.id for it in s.items}) == n  # ids are unique within a set


def test_alpaca_eval_outputs_become_a_reference_candidate() -> None:
    s = load_file(FIX / "model_outputs.json")
    rows = json.loads((FIX / "model_outputs.json").read_text())
    assert list(s.references) == ["tiny_reference_model"]
    assert s.references["tiny_reference_model"] == [r["output"] for r in rows]
    assert [it.turns[0] for it in s.items] == [r["instruction"] for r in rows]
    cands = generator_candidates(s)
    assert [(c.name, c.role, c.is_model) for c in cands] == [("tiny_reference_model", "reference", False)]


def test_self_instruct_items_are_instruction_plus_input_with_expert_answer() -> None:
    s = load_file(FIX / "user_oriented_instructions.jsonl")
    first = s.items[0]
    assert first.turns[0].startswith("Turn the sentence into a short to-do item.\n\nI really need")
    assert first.reference == ["Call the plumber about the kitchen sink (tomorrow)."]
    assert [it.id for it in s.items][-2:] == ["fixture_task_2#0", "fixture_task_2#1"]  # one item per instance


def test_mt_bench_keeps_turns_and_reference() -> None:
    s = load_file(FIX / "mt_bench_question.jsonl")
    assert s.items[0].turns[1] == "Now rewrite it in a more formal tone." and s.items[0].reference is None
    assert s.items[1].reference == ["4 boxes (3 boxes hold only 18).", "24 eggs."]


def test_ifeval_rows_are_kept_for_the_scorer() -> None:
    s = load_file(FIX / "ifeval_input_data.jsonl")
    assert s.items[0].row["instruction_id_list"] == ["punctuation:no_comma"] and s.items[0].id == "1"


def test_record_formats_protege_reads(tmp_path: Path) -> None:
    ex = [records.Example([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."},
                           {"role": "assistant", "content": "Hi."}]),
          records.Example([{"role": "user", "content": "Count to two."}, {"role": "assistant", "content": "1, 2"},
                           {"role": "user", "content": "Now to three."}, {"role": "assistant", "content": "1, 2, 3"}])]
    for fmt, suffix in (("openai", ".jsonl"), ("sharegpt", ".json"), ("parquet", ".parquet")):
        p = tmp_path / f"set_{fmt}{suffix}"
        records.write_examples(p, ex, fmt)
        s = load_file(p)
        assert s.items[0].system == "Be brief." and s.items[0].reference == ["Hi."]
        assert s.items[1].turns == ["Count to two.", "Now to three."], fmt  # multi-turn conversations stay so
    (tmp_path / "alpaca.json").write_text(json.dumps([{"instruction": "Add.", "input": "2 and 3", "output": "5"}]))
    s = load_file(tmp_path / "alpaca.json")
    assert (s.format, s.items[0].turns, s.items[0].reference) == ("alpaca", ["Add.\n\n2 and 3"], ["5"])
    (tmp_path / "seed.jsonl").write_text(json.dumps({"id": "s1", "instruction": "Negate.", "instances":
                                                     [{"input": "yes", "output": "no"}]}) + "\n")
    assert load_file(tmp_path / "seed.jsonl").format == "seed"
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "One?"}\n{"prompt": "Two?"}\n')
    assert [it.turns for it in load_file(tmp_path / "prompts.jsonl").items] == [["One?"], ["Two?"]]
    (tmp_path / "lines.txt").write_text("First task\n\nSecond task\n")
    assert [it.turns[0] for it in load_file(tmp_path / "lines.txt").items] == ["First task", "Second task"]


def test_unknown_shape_names_fields_and_formats() -> None:
    with pytest.raises(UserError) as err:
        load_file(FIX / "unknown_shape.jsonl")
    text = str(err.value)
    assert "'query'" in text and "'label'" in text
    assert all(name in text for name in FORMATS)  # every accepted format is listed
    assert detect(42) is None and detect({"messages": []}) == "openai"


def test_bad_files(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UserError, match="no records"):
        load_file(tmp_path / "empty.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "ok"}\n{not json\n')
    with pytest.raises(UserError, match="line 2"):
        load_file(tmp_path / "broken.jsonl")
    (tmp_path / "mixed.jsonl").write_text('{"question_id": 1, "turns": ["a"]}\n{"question_id": 2, "turns": []}\n')
    with pytest.raises(UserError, match="record 2.*turns"):
        load_file(tmp_path / "mixed.jsonl")
    with pytest.raises(UserError, match="not found"):
        load_file(tmp_path / "nope.jsonl")


def test_load_sets_test_split_plus_files_and_max_prompts(tmp_path: Path) -> None:
    cfgp = tmp_path / "p.yaml"
    cfgp.write_text(f"run_dir: run\neval: {{sets: [{FIX / 'mt_bench_question.jsonl'}], max_prompts: 1}}\n")
    cfg = load_config(cfgp)
    store = RunStore(cfg.run_dir)
    sets = load_sets(cfg, store)
    assert [s.name for s in sets] == ["mt_bench_question"] and len(sets[0].items) == 1
    records.write_examples(store.split("test"), [records.Example([{"role": "user", "content": f"Q{i}"},
                                                                  {"role": "assistant", "content": f"A{i}"}])
                                                 for i in range(3)], "openai")
    sets = load_sets(cfg, store)
    assert [(s.name, s.source, len(s.items)) for s in sets] == [("test", "run:data/test.jsonl", 1),
                                                               ("mt_bench_question", "mt_bench_question.jsonl", 1)]
    cfg2 = load_config(tmp_path / "p.yaml", ["eval.sets=[]", "eval.test_split=false"])
    with pytest.raises(UserError, match="nothing to evaluate"):
        load_sets(cfg2, store)


def test_cli_unknown_shape_exits_2(tmp_path: Path) -> None:
    cfgp = tmp_path / "p.yaml"
    cfgp.write_text(f"run_dir: run\neval: {{sets: [{FIX / 'unknown_shape.jsonl'}], candidates: [reference]}}\n")
    proc = run_cli("eval", "-c", str(cfgp))
    assert proc.returncode == 2, proc.stderr
    assert "unknown eval set shape" in proc.stderr and "mt_bench" in proc.stderr and "Traceback" not in proc.stderr
