"""The real `protege` command: help, init, data convert/validate, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from protege import records
from protege.config import load_config
from tests.conftest import run_cli


def test_help_lists_commands_with_purpose() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for cmd in ("init", "data", "models", "config"):
        assert cmd in proc.stdout


def test_init_scaffolds_a_valid_project_and_never_overwrites(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    proc = run_cli("init", str(proj))
    assert proc.returncode == 0, proc.stderr
    cfg = load_config(proj / "protege.yaml")
    seeds = records.read_examples(proj / "seeds.jsonl")
    assert cfg.seeds == str((proj / "seeds.jsonl").resolve())
    assert len(seeds) >= 30
    assert sum(1 for s in seeds if s.input) >= 5 and sum(1 for s in seeds if not s.input) >= 5
    (proj / "seeds.jsonl").write_text("mine\n")
    proc = run_cli("init", str(proj))
    assert proc.returncode == 2 and "already exist" in proc.stderr and "Traceback" not in proc.stderr
    assert (proj / "seeds.jsonl").read_text() == "mine\n"


def test_convert_seed_tasks_to_openai(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "out.jsonl"
    proc = run_cli("data", "convert", str(shared_data / "alpaca" / "seed_tasks.jsonl"), str(out), "--to", "openai")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 175
    assert all(r["messages"][0]["role"] == "user" and r["messages"][-1]["role"] == "assistant" for r in rows)


def test_convert_sharegpt_keeps_every_turn(tmp_path: Path, shared_data: Path) -> None:
    src = shared_data / "sharegpt" / "dummy_conversation.json"
    out = tmp_path / "x.jsonl"
    proc = run_cli("data", "convert", str(src), str(out), "--to", "openai")
    assert proc.returncode == 0, proc.stderr
    raw = json.loads(src.read_text())
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [[m["content"] for m in r["messages"]] for r in rows] == \
        [[t["value"] for t in c["conversations"]] for c in raw]


def test_convert_refuses_to_overwrite(tmp_path: Path) -> None:
    src = tmp_path / "a.json"
    src.write_text(json.dumps([{"instruction": "i", "input": "", "output": "o"}]))
    dst = tmp_path / "b.jsonl"
    dst.write_text("precious\n")
    proc = run_cli("data", "convert", str(src), str(dst), "--to", "openai")
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert dst.read_text() == "precious\n"


def test_validate_reports_each_bad_line_and_exits_2(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"instruction": "ok", "input": "", "output": "fine"}\n'
                 '{"instruction": "no output", "input": ""}\n'
                 'garbage\n')
    proc = run_cli("data", "validate", str(p))
    assert proc.returncode == 2
    assert "line 2" in proc.stdout and "line 3" in proc.stdout and "line 1" not in proc.stdout
    assert "Traceback" not in proc.stderr


def test_validate_good_file(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"instruction": "ok", "input": "", "output": "fine"}\n')
    proc = run_cli("data", "validate", str(p))
    assert proc.returncode == 0 and "all 1 records are valid" in proc.stdout


def test_missing_input_file_is_exit_2(tmp_path: Path) -> None:
    proc = run_cli("data", "convert", str(tmp_path / "nope.json"), str(tmp_path / "o.jsonl"), "--to", "openai")
    assert proc.returncode == 2 and "not found" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_flag_value_is_exit_2(tmp_path: Path) -> None:
    src = tmp_path / "a.json"
    src.write_text(json.dumps([{"instruction": "i", "input": "", "output": "o"}]))
    proc = run_cli("data", "convert", str(src), str(tmp_path / "o.x"), "--to", "yaml")
    assert proc.returncode == 2 and "yaml" in proc.stderr
