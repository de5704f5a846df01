"""A flaky teacher completes with every request accounted for; an API key never lands on disk."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.conftest import run_cli
from tests.reliability.conftest import KEY_VALUE, cli_env, jsonl, write_config
from tests.teachers.fault_server import Faults

N = 40


def test_flaky_teacher_completes_and_accounts_for_every_request(tmp_path, fault_server):
    """30% 429 with Retry-After, 10% 500, 5% hangs past the timeout, 5% garbage or truncated
    bodies (2.5% each): the run ends (exit 0), the breaker does not trip on a teacher that is
    flaky but alive, and each request is kept, dropped with a reason, or failed with a reason."""
    srv, url = fault_server
    srv.reset(Faults(p429=0.30, p500=0.10, p_hang=0.05, p_garbage=0.025, p_truncated=0.025,
                     retry_after_s=0.2, hang_s=3.0, seed=7))
    cfg = write_config(tmp_path, url, n=N, teacher={"max_concurrency": 8, "timeout_s": 1, "max_retries": 4})
    proc = run_cli("generate", "-c", str(cfg), cwd=tmp_path, env=cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "circuit breaker" not in proc.stderr
    gen = tmp_path / "run" / "generate"
    raw, dropped, failed = jsonl(gen / "raw.jsonl"), jsonl(gen / "dropped.jsonl"), jsonl(gen / "failed.jsonl")
    ids = [r["meta"]["gen_id"] for r in raw + dropped] + [f["gen_id"] for f in failed]
    assert len(ids) == N and len(set(ids)) == N  # every request exactly once
    assert all(d["meta"].get("drop_reason") for d in dropped)
    assert all(f["error"] and f["attempts"] >= 1 for f in failed)
    st = srv.stats_dict()
    for fault in ("429", "500", "hang"):
        assert st["by_fault"].get(fault, 0) > 0, st["by_fault"]  # each fault really happened
    assert st["by_fault"].get("garbage", 0) + st["by_fault"].get("truncated", 0) > 0
    assert st["retry_after_violations"] == 0
    with sqlite3.connect(tmp_path / "run" / "calls.sqlite") as db:
        logged = db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    assert logged == st["requests"]  # every attempt is in the call log


def test_api_key_is_never_written_to_the_run_dir_logs_or_caches(tmp_path, fault_server):
    srv, url = fault_server
    srv.reset(Faults(p500=0.2, p429=0.2, retry_after_s=0.1, seed=1))
    cache = tmp_path / "cache"
    env = cli_env(PROTEGE_CACHE=str(cache))
    cfg = write_config(tmp_path, url, n=30)
    outputs = []
    for args in (("generate", "-c", str(cfg)), ("curate", "-c", str(cfg), "--no-stats"),
                 ("config", "-c", str(cfg))):
        proc = run_cli(*args, cwd=tmp_path, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout + proc.stderr)
    assert srv.stats_dict()["auth_headers"] == [f"Bearer {KEY_VALUE}"]  # the key was really sent
    srv.reset(Faults(status_always=401))  # an error reply that echoes a (masked) key
    bad = run_cli("generate", "-c", str(cfg), "--set", "generate.num=31", cwd=tmp_path, env=env, timeout=120)
    assert bad.returncode == 2
    outputs.append(bad.stdout + bad.stderr)
    scanned = 0
    for root in (tmp_path,):
        for f in Path(root).rglob("*"):
            if f.is_file():
                data = f.read_bytes()
                assert KEY_VALUE.encode() not in data, f
                assert b"RELIABILITY-planted" not in data, f
                scanned += 1
    assert scanned >= 8  # config, manifest, calls.sqlite (+ WAL), raw, splits, card ...
    for text in outputs:
        assert KEY_VALUE not in text and "RELIABILITY-planted" not in text
