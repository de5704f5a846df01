"""generate.run on inputs of several formats (against the fault server with no faults)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protege import generate
from protege.config import validate_config
from protege.errors import UserError
from protege.store import RunStore
from tests.teachers.fault_server import Faults, FaultServer, ServerThread


@pytest.fixture(scope="module")
def url():
    srv = FaultServer()
    srv.reset(Faults())
    with ServerThread(srv) as st:
        yield st.url


def _cfg(tmp: Path, url: str, instructions: Path, **gen):
    return validate_config({
        "run_dir": str(tmp / "run"),
        "teacher": {"kind": "openai", "model": "m", "base_url": url},
        "generate": {"mode": "respond", "instructions": str(instructions), "num": 10, **gen}})


def _raw(cfg) -> list[dict]:
    return [json.loads(x) for x in (Path(cfg.run_dir) / "generate/raw.jsonl").read_text().splitlines()]


def test_sharegpt_log_is_marked_human_log_and_last_turn_regenerated(url, tmp_path):
    p = tmp_path / "log.json"
    p.write_text(json.dumps([{"conversations": [
        {"from": "human", "value": "Hi, can you help me plan a trip?"}, {"from": "gpt", "value": "Sure, where to?"},
        {"from": "human", "value": "Lisbon in May."}, {"from": "gpt", "value": "old answer"}]}]))
    cfg = _cfg(tmp_path, url, p)
    generate.run(cfg, RunStore(cfg.run_dir))
    (rec,) = _raw(cfg)
    assert rec["meta"]["instruction_source"] == "human-log"
    assert [m["role"] for m in rec["messages"]] == ["user", "assistant", "user", "assistant"]
    assert rec["messages"][-1]["content"] == "Answer: Lisbon in May."
    assert rec["meta"]["original_output"] == "old answer"


def test_output_add_keeps_the_original_and_duplicates_get_own_sample(url, tmp_path):
    p = tmp_path / "alpaca.json"
    row = {"instruction": "Say hello.", "input": "", "output": "Hello!"}
    p.write_text(json.dumps([row, row]))
    cfg = _cfg(tmp_path, url, p, output="add")
    generate.run(cfg, RunStore(cfg.run_dir))
    raw = _raw(cfg)
    assert len(raw) == 4  # two originals + two answers (the repeated instruction is asked twice)
    assert sorted(r["meta"].get("sample_index", -1) for r in raw) == [-1, -1, 0, 1]


def test_respond_without_instructions_is_a_user_error(tmp_path):
    # A config rule now (tests/test_config_rules.py runs it through `protege config`): refused before generate.
    with pytest.raises(UserError, match="generate.instructions"):
        validate_config({"run_dir": str(tmp_path / "run"), "teacher": {"kind": "openai", "model": "m"},
                         "generate": {"mode": "respond"}})


def test_budget_without_prices_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="price_input_per_mtok"):
        validate_config({"run_dir": str(tmp_path / "run"), "teacher": {"kind": "openai", "model": "m"},
                         "generate": {"mode": "self-instruct", "budget_usd": 1.0}})


def test_torn_last_line_after_a_crash_is_cut_and_redone(url, tmp_path):
    p = tmp_path / "i.txt"
    p.write_text("one two three\nfour five six\n")
    cfg = _cfg(tmp_path, url, p)
    generate.run(cfg, RunStore(cfg.run_dir))
    raw_file = Path(cfg.run_dir) / "generate/raw.jsonl"
    text = raw_file.read_text()
    raw_file.write_text(text[: len(text) - 30])  # as if killed mid-write
    s = generate.run(cfg, RunStore(cfg.run_dir))
    assert s["ledger"]["calls"] == 0 and s["ledger"]["cache_hits"] == 1
    assert len(_raw(cfg)) == 2
