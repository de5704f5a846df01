"""The whole eval stage without a model: answers from files, a scripted judge (both orders, grades), IFEval on
written answers, scores.json, the headline, and the manifest."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from protege import evaluate, judge
from protege.config import load_config
from protege.evaluate import ifeval
from protege.store import RunStore
from tests.evaluate.test_pairwise import scripted

FIX = Path(__file__).parent / "fixtures"


def _judge_longer_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    pairwise_judge = scripted(lambda a, b: "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie")

    def complete_all(cfg: Any, reqs: list[Any], calls_db: Any = None, gcfg: Any = None, on_result: Any = None):
        if "[Answer A]" in reqs[0].messages[-1]["content"]:
            return pairwise_judge(cfg, reqs, calls_db, gcfg, on_result)
        out = []
        for r in reqs:  # single-answer grading: 9 for answers over 5 words, else 3
            answer = re.search(r"\[Answer\]\n(.*?)\n\nReply", r.messages[-1]["content"], re.S).group(1)
            out.append(type("R", (), {"ok": True, "completion": type("C", (), {
                "text": f"Reason: scripted.\nRating: {9 if len(answer.split()) > 5 else 3}"})()})())
        return out

    monkeypatch.setattr(judge, "complete_all", complete_all)


def test_stage_with_answer_files_and_scripted_judge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = json.loads((FIX / "model_outputs.json").read_text())
    # our candidate answers at length; the reference (tiny_reference_model) is shorter on every prompt
    (tmp_path / "verbose_model.json").write_text(json.dumps(
        [{"instruction": r["instruction"], "output": r["output"] + " " + "More words to make it long. " * 3}
         for r in rows]))
    ifeval_rows = [json.loads(x) for x in (FIX / "ifeval_input_data.jsonl").read_text().splitlines()]
    answers = ["The lamp turns all night. Ships see it from far away.",  # no comma: follows
               "It Rains.",  # not all lowercase: fails
               '"Mango"']  # quoted: follows
    (tmp_path / "ifeval_answers.jsonl").write_text("".join(
        json.dumps({"instruction": r["prompt"], "output": a}) + "\n" for r, a in zip(ifeval_rows, answers)))
    (tmp_path / "p.yaml").write_text(
        "run_dir: run\n"
        f"eval:\n  sets: [{FIX / 'model_outputs.json'}, {FIX / 'ifeval_input_data.jsonl'}]\n"
        "  candidates: [verbose_model.json, ifeval_answers.jsonl]\n"
        "  judge: {kind: openai, model: judge-x, base_url: 'http://127.0.0.1:9/v1'}\n"
        "  grade: true\n  bootstrap: 500\n")
    _judge_longer_wins(monkeypatch)
    cfg = load_config(tmp_path / "p.yaml")
    store = RunStore(cfg.run_dir)
    scores = evaluate.run(cfg, store, say=lambda m: None)

    assert json.loads(store.scores.read_text()) == scores
    alpaca, ife = scores["sets"]
    assert (alpaca["format"], alpaca["n"], set(alpaca["candidates"])) == \
        ("alpaca_eval", 3, {"verbose_model", "tiny_reference_model"})
    (pair,) = alpaca["pairwise"]
    assert (pair["a"], pair["b"], pair["n"], pair["win"], pair["inconsistent"]) == \
        ("verbose_model", "tiny_reference_model", 3, 1.0, 0.0)
    assert pair["mean_words_a"] > pair["mean_words_b"]
    assert any("longer answer won 3 of 3" in w for w in pair["warnings"])
    assert alpaca["candidates"]["verbose_model"]["reference"] == "tiny_reference_model"
    assert 0 < alpaca["candidates"]["verbose_model"]["rougeL_vs_reference"] < 1
    assert alpaca["candidates"]["verbose_model"]["grade_mean"] == 9
    assert scores["headline"].startswith("verbose_model wins or ties 100% [100%-100%] against tiny_reference_model "
                                         "on 3 prompts of model_outputs")
    assert scores["cost"] == {}  # no model candidate, nothing to time
    assert ife["pairwise"] == []  # IFEval sets are scored, not judged
    if ifeval.available() is None:
        got = ife["ifeval"]["ifeval_answers"]
        assert (got["n_prompts"], got["prompt_strict"]) == (3, pytest.approx(2 / 3))
        assert "IFEval strict ifeval_answers 67%" in scores["headline"]
    lines = [json.loads(x) for x in store.judgements.read_text().splitlines()]
    assert sum("winner" in x for x in lines) == 3 and sum("grade" in x for x in lines) == 2 * 3 + 3  # refs too
    manifest = json.loads(store.manifest_file.read_text())
    assert manifest["stages"]["eval"]["status"] == "ok" and "eval/scores.json" in manifest["artifacts"]
