"""Killed runs resume without loss: kill -9 mid-generation and mid-curate, SIGINT and SIGTERM.

Generation: the fault server (separate thread, real HTTP) answers slowly enough for the kill to
land mid-run; the rerun must end with every record exactly once and must not ask the teacher
again for any answer already received (the response cache in calls.sqlite). Curate: a rerun
after a kill must give byte-identical outputs to an uninterrupted run.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.reliability.conftest import (cli_env, jsonl, kill9, start_cli, tree_hash, wait_for,
                                        write_config)
from tests.teachers.fault_server import Faults

N = 40


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _answered_keys(run: Path) -> set[str]:
    with sqlite3.connect(run / "calls.sqlite") as db:
        return {k for (k,) in db.execute("SELECT key FROM responses")}


def _ok_call_keys_since(run: Path, since: float) -> list[str]:
    with sqlite3.connect(run / "calls.sqlite") as db:
        return [k for (k,) in db.execute("SELECT key FROM calls WHERE status = 'ok' AND ts >= ?", (since,))]


def _all_calls_since(run: Path, since: float) -> int:
    with sqlite3.connect(run / "calls.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM calls WHERE ts >= ?", (since,)).fetchone()[0]


@pytest.mark.parametrize("kill_after", [1, 15, 30])
def test_kill9_mid_generation_then_rerun_loses_and_repeats_nothing(tmp_path, fault_server, kill_after):
    srv, url = fault_server
    srv.reset(Faults(latency_s=0.05, p500=0.1, seed=kill_after))
    cfg = write_config(tmp_path, url, n=N, teacher={"max_concurrency": 4, "max_retries": 6})
    raw = tmp_path / "run" / "generate" / "raw.jsonl"
    proc = start_cli("generate", "-c", str(cfg), cwd=tmp_path)
    assert wait_for(lambda: _lines(raw) >= kill_after or proc.poll() is not None, timeout=120)
    kill9(proc)
    run = tmp_path / "run"
    before = _answered_keys(run)
    assert before, "nothing was answered before the kill"
    srv.reset(Faults(latency_s=0.0, seed=kill_after))
    t_rerun = time.time()
    again = run_cli("generate", "-c", str(cfg), cwd=tmp_path, env=cli_env(), timeout=180)
    assert again.returncode == 0, again.stderr
    recs = jsonl(raw)
    ids = [r["meta"]["gen_id"] for r in recs]
    assert len(ids) == N and len(set(ids)) == N  # no record lost, none duplicated
    # Zero repeated teacher calls for answers already received before the kill:
    asked_again = set(_ok_call_keys_since(run, t_rerun)) & before
    assert not asked_again
    # ... and every call the rerun made is in the call log (the server counts the same number).
    assert _all_calls_since(run, t_rerun) == srv.stats_dict()["requests"]
    assert srv.stats_dict()["requests"] == N - len({r["meta"]["request_key"] for r in recs} & before)


def _corpus(path: Path, n: int = 3000) -> Path:
    rng = random.Random(0)
    words = "alpha beta gamma delta river stone light paper music orbit garden winter copper".split()
    with path.open("w") as f:
        for i in range(n):
            instr = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) + f" number {i % 900}?"
            out = " ".join(rng.choice(words) for _ in range(rng.randint(2, 40)))
            f.write(json.dumps({"instruction": instr, "input": "", "output": out}) + "\n")
    return path


def _curate_outputs(run: Path) -> dict[str, str]:
    h = tree_hash(run / "data")
    return {k: v for k, v in h.items() if k.endswith(".jsonl")}


def test_kill9_mid_curate_then_rerun_gives_identical_outputs(tmp_path):
    src = _corpus(tmp_path / "corpus.jsonl")
    cfgs = {}
    for name in ("ref", "killed"):
        d = tmp_path / name
        d.mkdir()
        (d / "protege.yaml").write_text("run_dir: run\n")
        cfgs[name] = d / "protege.yaml"
    args = ("--input", str(src), "--no-stats")
    ref = run_cli("curate", "-c", str(cfgs["ref"]), *args, timeout=300)
    assert ref.returncode == 0, ref.stderr
    expected = _curate_outputs(tmp_path / "ref" / "run")
    assert {"train.jsonl", "val.jsonl", "test.jsonl", "dropped.jsonl"} <= set(expected)
    run = tmp_path / "killed" / "run"
    moments = [lambda: (run / "config.yaml").exists(), lambda: (run / "data").exists(),
               lambda: (run / "data" / "train.jsonl").exists()]
    for moment in moments:  # kill at different moments, rerun each time
        proc = start_cli("curate", "-c", str(cfgs["killed"]), *args)
        wait_for(lambda: moment() or proc.poll() is not None, timeout=120, step=0.005)
        kill9(proc)
    again = run_cli("curate", "-c", str(cfgs["killed"]), *args, timeout=300)
    assert again.returncode == 0, again.stderr
    assert _curate_outputs(run) == expected
    assert not [p for p in run.rglob("*.tmp")]  # no torn temporary files left behind


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_sigint_sigterm_stop_generation_cleanly_with_a_resume_line(tmp_path, fault_server, sig, code, word):
    srv, url = fault_server
    # 30% of the requests hang for 40 s (under the 60 s timeout): the signal must cancel them, not wait.
    srv.reset(Faults(latency_s=0.05, p_hang=0.3, hang_s=40, seed=int(sig)))
    cfg = write_config(tmp_path, url, n=N, teacher={"max_concurrency": 2, "timeout_s": 60})
    raw = tmp_path / "run" / "generate" / "raw.jsonl"
    proc = start_cli("generate", "-c", str(cfg), cwd=tmp_path)
    hanging = lambda: srv.stats_dict()["by_fault"].get("hang", 0) >= 1  # noqa: E731
    assert wait_for(lambda: (_lines(raw) >= 1 and hanging()) or proc.poll() is not None, timeout=120)
    assert proc.poll() is None
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)  # in-flight requests are cancelled, not awaited
    stopped_in = time.monotonic() - t0
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert f"{word}; everything written so far is kept. Resume with: protege generate -c {cfg}" in err
    assert stopped_in < 20  # in-flight requests hang for 40 s: they were cancelled, not awaited
    kept = jsonl(raw)
    assert kept and len({r["meta"]["gen_id"] for r in kept}) == len(kept)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["generate"]["status"] == "interrupted"
    srv.reset(Faults())
    again = run_cli("generate", "-c", str(cfg), cwd=tmp_path, env=cli_env(), timeout=180)
    assert again.returncode == 0, again.stderr
    assert len({r["meta"]["gen_id"] for r in jsonl(raw)}) == N == len(jsonl(raw))
