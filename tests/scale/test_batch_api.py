"""`generate.batch_api: true` against a local fake of the OpenAI Files + Batch endpoints (batch_server.py)."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
import yaml

from protege import generate
from protege.config import load_config, validate_config
from protege.errors import UserError
from protege.store import RunStore
from tests.conftest import run_cli
from tests.scale.batch_server import BatchFaults, BatchServer
from tests.teachers.fault_server import ServerThread

N = 9


def _config(tmp: Path, url: str, n: int = N, **gen) -> Path:
    (tmp / "instructions.txt").write_text("\n".join(f"Give one fact about the number {i}." for i in range(n)) + "\n")
    data = {"run_dir": "run",
            "teacher": {"kind": "openai", "model": "fake-batch-model", "base_url": url, "max_retries": 3,
                        "price_input_per_mtok": 2.0, "price_output_per_mtok": 8.0},
            "generate": {"mode": "respond", "instructions": "instructions.txt", "num": n, "batch_api": True,
                         "batch_poll_s": 0.05, "sampling": {"temperature": 0.0, "max_tokens": 16}, **gen}}
    path = tmp / "protege.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _raw(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "generate" / "raw.jsonl").read_text().splitlines()]


def _calls(run: Path) -> list[tuple[str, str, float | None]]:
    with sqlite3.connect(run / "calls.sqlite") as db:
        return db.execute("SELECT key, status, cost_usd FROM calls ORDER BY id").fetchall()


def _check_records(run: Path, n: int = N) -> list[dict]:
    recs = _raw(run)
    prompts = [r["messages"][0]["content"] for r in recs]
    assert len(recs) == n and len(set(prompts)) == n  # every record, none twice
    for r in recs:
        assert r["messages"][-1]["content"] == "Answer: " + r["messages"][0]["content"][:60]
        m = r["meta"]
        assert m["teacher"]["kind"] == "openai" and m["teacher"]["model"] == "fake-batch-model"
        assert m["tokens"]["prompt"] == 10 and m["request_key"]
    return recs


def test_batch_run_uploads_once_merges_into_the_cache_and_reruns_free(tmp_path):
    srv = BatchServer()
    with ServerThread(srv) as s:
        cfg = load_config(_config(tmp_path, s.url))
        run = Path(cfg.run_dir)
        summary = generate.run(cfg, RunStore(run))
        recs = _check_records(run)
        assert (srv.stats["uploads"], srv.stats["creates"], srv.stats["chat"]) == (1, 1, 0)
        assert summary["ledger"]["calls"] == 0 and summary["ledger"]["cache_hits"] == N  # written from the cache
        assert all(r["meta"]["teacher"]["model_version"] == "fake-batch-model-2024" for r in recs)
        calls = _calls(run)
        assert len(calls) == N and {c[1] for c in calls} == {"ok"}
        # Priced at half the online price: 10 prompt tokens at $2/M + completion tokens at $8/M, halved.
        cost = {key: c for key, _, c in calls}
        for r in recs:
            want = 0.5 * (10 * 2.0 + r["meta"]["tokens"]["completion"] * 8.0) / 1e6
            assert cost[r["meta"]["request_key"]] == pytest.approx(want) and r["meta"]["cost_usd"] == pytest.approx(want)
        state = json.loads((run / "generate" / "batch_api.json").read_text())
        assert len(state["jobs"]) == 1 and state["jobs"][0]["merged"] and state["jobs"][0]["answered"] == N
        lines = (run / "generate" / state["jobs"][0]["file"]).read_text().splitlines()
        first = json.loads(lines[0])
        assert first["method"] == "POST" and first["url"] == "/v1/chat/completions" and len(first["custom_id"]) == 64
        assert first["body"]["model"] == "fake-batch-model" and first["body"]["max_tokens"] == 16
        before = dict(srv.stats)
        generate.run(load_config(_config(tmp_path, s.url)), RunStore(run))
        assert dict(srv.stats) == before  # nothing uploaded, created, polled or asked again
        assert len(_raw(run)) == N


def test_error_lines_and_an_expired_batch_fall_back_to_the_online_api(tmp_path):
    srv = BatchServer(BatchFaults(fail_every=4, expire_after=7, flaky_polls=2))
    with ServerThread(srv) as s:
        cfg = load_config(_config(tmp_path, s.url))
        generate.run(cfg, RunStore(cfg.run_dir))
    run = Path(cfg.run_dir)
    _check_records(run)
    # 7 ran (line 3 of them failed with a 500), 2 expired: 6 answered by the batch, 3 asked online.
    assert srv.stats["chat"] == 3 and srv.stats["uploads"] == 1 and srv.stats["creates"] == 1
    statuses = [c[1] for c in _calls(run)]
    assert statuses.count("error") == 3 and statuses.count("ok") == N
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["generate"]["batch_api"]["answered"] == 6
    assert manifest["stages"]["generate"]["batch_api"]["errors"] == 3


def test_a_batch_that_fails_validation_stops_with_exit_2_then_resumes_with_the_same_upload(tmp_path):
    srv = BatchServer(BatchFaults(invalid=True))
    with ServerThread(srv) as s:
        cfg_path = _config(tmp_path, s.url)
        r = run_cli("generate", "-c", str(cfg_path), cwd=tmp_path, timeout=120)
        assert r.returncode == 2 and "failed validation" in r.stderr and "does not exist" in r.stderr
        assert "Traceback" not in r.stderr
        srv.faults = BatchFaults()
        r = run_cli("generate", "-c", str(cfg_path), cwd=tmp_path, timeout=120)
        assert r.returncode == 0, r.stderr
    _check_records(tmp_path / "run")
    assert srv.stats["uploads"] == 1 and srv.stats["creates"] == 2 and srv.stats["chat"] == 0


def test_an_upload_made_by_a_killed_process_is_found_not_repeated(tmp_path):
    """Killed inside the upload call: the file reached the provider but its id never reached the state.
    The rerun finds it by name (the name holds the content hash) and uploads nothing."""
    srv = BatchServer()
    with ServerThread(srv) as s:
        cfg = load_config(_config(tmp_path, s.url))
        from protege.generate import batch_api
        from protege.generate.context import sampling_params
        from protege.generate.modes import Respond

        mode = Respond(cfg)
        requests = mode.planned_requests(set(), [], sampling_params(cfg))[1]
        job = batch_api._write_input(RunStore(cfg.run_dir), batch_api._chunks(requests, cfg.teacher.model)[0],
                                     cfg.teacher.model)
        data = (Path(cfg.run_dir) / "generate" / job["file"]).read_bytes()
        client = openai.OpenAI(api_key="x", base_url=s.url)
        client.files.create(file=(Path(job["file"]).name, io.BytesIO(data)), purpose="batch")
        assert srv.stats["uploads"] == 1
        generate.run(cfg, RunStore(cfg.run_dir))
    _check_records(Path(cfg.run_dir))
    assert srv.stats["uploads"] == 1 and srv.stats["creates"] == 1


@pytest.mark.slow
def test_kill_between_upload_and_download_then_rerun_resumes_the_same_batch(tmp_path):
    srv = BatchServer(BatchFaults(polls_in_progress=10_000))  # stays in_progress until the test lets it finish
    with ServerThread(srv) as s:
        cfg_path = _config(tmp_path, s.url, batch_poll_s=0.1)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "protege.cli", "generate", "-c", str(cfg_path)], cwd=tmp_path,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        deadline = time.time() + 120
        while srv.stats["polls"] < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        run = tmp_path / "run"
        state = json.loads((run / "generate" / "batch_api.json").read_text())
        job = state["jobs"][0]
        assert job["batch_id"] and job["input_file_id"] and not job["merged"]
        assert not (run / "generate" / "raw.jsonl").exists() or not _raw(run)
        assert srv.stats["downloads"] == 0  # killed before the download
        srv.faults.polls_in_progress = 0  # the provider finishes the batch meanwhile
        r = run_cli("generate", "-c", str(cfg_path), cwd=tmp_path, timeout=120)
        assert r.returncode == 0, r.stderr
    _check_records(run)
    # The same batch: no second upload, no second batch, no online call.
    assert (srv.stats["uploads"], srv.stats["creates"], srv.stats["chat"]) == (1, 1, 0)
    assert json.loads((run / "generate" / "batch_api.json").read_text())["jobs"][0]["batch_id"] == job["batch_id"]


def test_config_refuses_batch_api_where_it_cannot_work():
    base = {"run_dir": "r", "teacher": {"kind": "openai", "model": "m"}}
    for gen, teacher, words in (
            ({"mode": "self-instruct"}, {}, "mode self-instruct"),
            ({"mode": "respond", "instructions": "x.txt"}, {"kind": "llamacpp", "model": "smollm2-135m-instruct"},
             "kind openai"),
            ({"mode": "respond", "instructions": "x.txt"}, {"base_url": ["http://a:1/v1", "http://b:1/v1"]},
             "one base_url")):
        with pytest.raises(UserError) as e:
            validate_config({**base, "teacher": {**base["teacher"], **teacher},
                             "generate": {**gen, "batch_api": True}})
        assert "batch_api" in str(e.value) and words in str(e.value)
