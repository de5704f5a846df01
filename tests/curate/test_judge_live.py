"""The LLM-judge filter against a real llama.cpp server (SmolLM2-135M) on loopback."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request

import pytest

from protege.config import TeacherConfig
from protege.curate import filters as F
from protege.records import Example

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llama_server():
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] not installed")
    from protege.models import gguf_path

    try:
        model = gguf_path("smollm2-135m-instruct")
    except Exception as err:  # the offline model package is missing
        pytest.skip(f"SmolLM2 GGUF not available: {err}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host",
                             "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url + "/models", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail("llama.cpp server exited at start-up")
                time.sleep(0.5)
        else:
            pytest.fail("llama.cpp server did not start in 120 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_judge_rates_records_and_logs_calls(llama_server, tmp_path):
    cfg = TeacherConfig(kind="openai", model="smollm2", base_url=llama_server, max_concurrency=2,
                        timeout_s=60, max_retries=1)
    items = [Example([{"role": "user", "content": q}, {"role": "assistant", "content": a}])
             for q, a in [("What is 2 + 2?", "4"), ("Name the capital of France.", "Paris is the capital of France."),
                          ("Write a haiku about rain.", "banana banana banana")]]
    drops = F.Drops()
    db = tmp_path / "calls.sqlite"
    kept = list(F.llm_judge(items, drops, cfg, threshold=3, calls_db=db))
    assert len(kept) + len(drops.records) == 3
    for ex in kept:
        j = ex.meta["judge"]
        assert j["model"] == "smollm2"
        assert j["score"] is None and j["error"] or 3 <= j["score"] <= 5
    for d in drops.records:
        assert d.meta["dropped_by"] == "llm_judge" and 1 <= d.meta["judge"]["score"] < 3
    with sqlite3.connect(db) as con:  # every judge call is in the run's call log
        tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
        assert any(con.execute(f"select count(*) from {t}").fetchone()[0] >= 3 for t in tables)
