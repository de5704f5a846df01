"""The engine and the generate stage against our fault-injecting OpenAI-compatible server.

The server (fault_server.py) is real HTTP on loopback, spoken to by the real openai SDK; it
injects 429s with Retry-After, 500s, hangs past the timeout, truncated and garbage bodies on a
deterministic schedule, and counts what it served.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from protege import generate
from protege.config import validate_config
from protege.errors import UserError
from protege.store import RunStore
from tests.teachers.fault_server import Faults, FaultServer, ServerThread

KEY_VALUE = "sk-PLANTED-do-not-leak-7f3a9c1e5b"
N = 24


@pytest.fixture(scope="module")
def server():
    srv = FaultServer()
    with ServerThread(srv) as st:
        yield srv, st.url


def _instructions(tmp: Path, n: int = N) -> Path:
    p = tmp / "instructions.txt"
    p.write_text("\n".join(f"Task {i}: explain the number {i * 7} in one short sentence." for i in range(n)) + "\n")
    return p


def _cfg(tmp: Path, url: str, **gen):
    data = {
        "run_dir": str(tmp / "run"),
        "teacher": {"kind": "openai", "model": "fault-model", "base_url": url, "api_key_env": "PROTEGE_TEST_KEY",
                    "max_concurrency": 8, "timeout_s": 1.0, "max_retries": 8,
                    "price_input_per_mtok": 1.0, "price_output_per_mtok": 2.0},
        "generate": {"mode": "respond", "instructions": str(_instructions(tmp)), "num": N,
                     "sampling": {"max_tokens": 16}, **gen},
    }
    return validate_config(data)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _calls(run: Path) -> list[tuple]:
    with sqlite3.connect(run / "calls.sqlite") as db:
        return db.execute("SELECT key, status, http_status, error FROM calls").fetchall()


def test_429_and_500_injected_run_still_ends_with_all_records(server, tmp_path, monkeypatch):
    srv, url = server
    monkeypatch.setenv("PROTEGE_TEST_KEY", KEY_VALUE)
    srv.reset(Faults(p429=0.25, p500=0.10, retry_after_s=0.3, seed=3))
    cfg = _cfg(tmp_path, url)
    summary = generate.run(cfg, RunStore(cfg.run_dir))
    st = srv.stats_dict()
    raw = _jsonl(Path(cfg.run_dir) / "generate" / "raw.jsonl")
    assert len(raw) == N and summary["records"] == N
    assert len({r["meta"]["gen_id"] for r in raw}) == N  # none twice
    assert st["by_status"].get("429", 0) > 0 and st["by_status"].get("500", 0) > 0  # faults really happened
    assert st["retry_after_violations"] == 0  # every retry waited what the server asked for
    assert st["duplicate_answers"] == 0  # no answered request was sent again
    assert st["auth_headers"] == [f"Bearer {KEY_VALUE}"]  # the key was used...
    calls = _calls(Path(cfg.run_dir))
    assert len(calls) == st["requests"]  # every attempt, failures included, is in the call log
    assert sum(c[1] == "error" for c in calls) == st["by_status"]["429"] + st["by_status"]["500"]
    for rec in raw:  # provenance
        m = rec["meta"]
        assert m["teacher"]["model_version"] == "fault-model-2024-01"
        assert m["teacher"]["endpoint"].startswith("127.0.0.1:")
        assert m["sampling"]["max_tokens"] == 16 and m["tokens"]["completion"] > 0 and m["cost_usd"] > 0
        assert rec["messages"][-1]["role"] == "assistant"
    led = summary["ledger"]
    assert led["cost_usd"] == pytest.approx(sum(r["meta"]["cost_usd"] for r in raw))
    # ...and never written anywhere in the run directory.
    for f in Path(cfg.run_dir).rglob("*"):
        if f.is_file():
            assert KEY_VALUE.encode() not in f.read_bytes(), f
            assert b"PLANTED" not in f.read_bytes(), f


def test_hangs_truncated_and_garbage_bodies_every_record_accounted_once(server, tmp_path, monkeypatch):
    srv, url = server
    monkeypatch.setenv("PROTEGE_TEST_KEY", KEY_VALUE)
    srv.reset(Faults(p_hang=0.1, p_truncated=0.15, p_garbage=0.15, p_length=0.15, hang_s=3.0, seed=11))
    cfg = _cfg(tmp_path, url, drop_truncated=True)
    cfg.teacher.max_retries = 2
    summary = generate.run(cfg, RunStore(cfg.run_dir))
    run = Path(cfg.run_dir) / "generate"
    raw, dropped, failed = _jsonl(run / "raw.jsonl"), _jsonl(run / "dropped.jsonl"), _jsonl(run / "failed.jsonl")
    ids = [r["meta"]["gen_id"] for r in raw + dropped] + [f["gen_id"] for f in failed]
    assert len(ids) == N and len(set(ids)) == N  # every record kept, dropped or failed; none twice
    assert dropped and all(d["meta"]["drop_reason"].startswith("truncated") for d in dropped)
    st = srv.stats_dict()
    assert st["by_fault"].get("hang", 0) and st["by_fault"].get("truncated", 0) and st["by_fault"].get("garbage", 0)
    errors = [c[3] for c in _calls(Path(cfg.run_dir)) if c[1] == "error"]
    assert any("timed out" in e for e in errors) and any("unreadable" in e or "invalid" in e for e in errors)
    assert summary["failed_outstanding"] == len(failed)
    for f in failed:
        assert f["attempts"] == 3 and f["error"]


def test_failures_are_retried_on_rerun_and_failed_list_shrinks(server, tmp_path, monkeypatch):
    srv, url = server
    monkeypatch.setenv("PROTEGE_TEST_KEY", KEY_VALUE)
    srv.reset(Faults(p500=0.6, seed=5))
    cfg = _cfg(tmp_path, url)
    cfg.teacher.max_retries = 0
    first = generate.run(cfg, RunStore(cfg.run_dir))
    assert 0 < first["failed_outstanding"] < N and first["records"] + first["failed_outstanding"] == N
    srv.reset(Faults(seed=5))  # the server recovers
    second = generate.run(cfg, RunStore(cfg.run_dir))
    assert second["ledger"]["calls"] == first["failed_outstanding"]  # only the failed ones are asked again
    assert second["records"] == N and second["failed_outstanding"] == 0
    assert _jsonl(Path(cfg.run_dir) / "generate" / "failed.jsonl") == []


def test_max_requests_cap_stops_cleanly_and_rerun_completes(server, tmp_path, monkeypatch):
    srv, url = server
    monkeypatch.setenv("PROTEGE_TEST_KEY", KEY_VALUE)
    srv.reset(Faults(seed=1))
    cfg = _cfg(tmp_path, url, max_requests=10)
    first = generate.run(cfg, RunStore(cfg.run_dir))
    assert srv.stats_dict()["requests"] == 10 and first["records"] == 10
    assert "max_requests" in first["stop_reason"]
    cfg.generate.max_requests = None
    second = generate.run(cfg, RunStore(cfg.run_dir))
    assert second["records"] == N and srv.stats_dict()["requests"] == N


def test_budget_cap_is_never_exceeded(server, tmp_path, monkeypatch):
    srv, url = server
    monkeypatch.setenv("PROTEGE_TEST_KEY", KEY_VALUE)
    srv.reset(Faults(seed=1))
    cfg = _cfg(tmp_path, url, budget_usd=0.0005)
    s = generate.run(cfg, RunStore(cfg.run_dir))
    assert "budget_usd" in s["stop_reason"] and 0 < s["records"] < N
    assert s["ledger"]["cost_usd"] <= 0.0005


def test_auth_error_stops_the_run_with_a_user_error_and_no_key(server, tmp_path, monkeypatch):
    srv, url = server
    monkeypatch.setenv("PROTEGE_TEST_KEY", KEY_VALUE)
    srv.reset(Faults(status_always=401))
    cfg = _cfg(tmp_path, url)
    with pytest.raises(UserError) as err:
        generate.run(cfg, RunStore(cfg.run_dir))
    assert "401" in str(err.value) and KEY_VALUE not in str(err.value)
    assert srv.stats_dict()["requests"] <= cfg.teacher.max_concurrency  # stopped issuing at once


def test_missing_key_variable_is_a_user_error_naming_it(server, tmp_path, monkeypatch):
    _, url = server
    monkeypatch.delenv("PROTEGE_TEST_KEY", raising=False)
    cfg = _cfg(tmp_path, url)
    with pytest.raises(UserError, match="PROTEGE_TEST_KEY"):
        generate.run(cfg, RunStore(cfg.run_dir))


def test_dry_run_calls_nothing_and_estimates(server, tmp_path, capsys):
    srv, url = server
    srv.reset(Faults())
    cfg = _cfg(tmp_path, url)
    plan = generate.run(cfg, RunStore(cfg.run_dir), dry_run=True)
    assert srv.stats_dict()["requests"] == 0 and not (Path(cfg.run_dir) / "generate").exists()
    assert plan["requests"] == N and plan["completion_tokens"] == N * 16
    assert plan["cost_usd"] == pytest.approx((plan["prompt_tokens"] * 1.0 + N * 16 * 2.0) / 1e6)
    assert "requests" in capsys.readouterr().out


def test_completions_api_and_explain_mode(server, tmp_path, monkeypatch):
    srv, url = server
    monkeypatch.setenv("PROTEGE_TEST_KEY", KEY_VALUE)
    srv.reset(Faults())
    cfg = _cfg(tmp_path, url, mode="explain", num=6)
    cfg.teacher.api = "completions"
    generate.run(cfg, RunStore(cfg.run_dir))
    raw = _jsonl(Path(cfg.run_dir) / "generate" / "raw.jsonl")
    assert len(raw) == 6
    for rec in raw:
        assert rec["messages"][0]["role"] == "system"
        assert rec["messages"][0]["content"] == rec["meta"]["system_prompt"]
        assert rec["meta"]["template"]["name"] == "explain_system_prompts"
        assert rec["meta"]["mode"] == "explain"
    assert len({r["meta"]["system_prompt"] for r in raw}) > 1  # drawn from the pool


def test_self_chat_and_self_instruct_run_against_the_fake(server, tmp_path, monkeypatch):
    srv, url = server
    monkeypatch.setenv("PROTEGE_TEST_KEY", KEY_VALUE)
    srv.reset(Faults())
    cfg = _cfg(tmp_path, url, mode="self-chat", num=3, turns=2)
    generate.run(cfg, RunStore(cfg.run_dir))
    raw = _jsonl(Path(cfg.run_dir) / "generate" / "raw.jsonl")
    assert len(raw) == 3
    assert [m["role"] for m in raw[0]["messages"]] == ["user", "assistant", "user", "assistant"]
    assert all(r["meta"]["turns"] == 2 and r["meta"]["tokens"]["prompt"] > 0 for r in raw)
    assert srv.stats_dict()["requests"] == 3 * 3
