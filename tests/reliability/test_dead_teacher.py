"""A dead or misconfigured teacher fails fast: exit 2 within a bound, the URL named, nothing lost.

The bound: each command must return within `BOUND_S` (a subprocess timeout, generous for a loaded
CI machine; measured runs take 1-4 s). Without the fixes these cases hung forever or looped on
failures (issue 10), so the timeout is what fails.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.reliability.conftest import KEY_VALUE, cli_env, jsonl, tree_hash, write_config
from tests.teachers.fault_server import Faults, free_port

BOUND_S = 90


def _no_traceback(proc) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr


def _generate(cfg: Path, **env):
    return run_cli("generate", "-c", str(cfg), cwd=cfg.parent, env=cli_env(**env), timeout=BOUND_S)


def test_closed_port_exits_2_naming_the_url_and_writes_nothing(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    cfg = write_config(tmp_path, url)
    proc = _generate(cfg)
    assert proc.returncode == 2, proc.stderr
    _no_traceback(proc)
    assert url in proc.stderr and "refused" in proc.stderr
    assert not (tmp_path / "run").exists()  # checked before anything was written


@pytest.mark.parametrize("url", ["htp://127.0.0.1:8000/v1", "127.0.0.1:8000/v1", "http://[::1/v1",
                                 "http://127.0.0.1:99999/v1", "http://exa mple.com/v1"])
def test_malformed_url_is_a_config_error(tmp_path, url):
    cfg = write_config(tmp_path, url)
    proc = _generate(cfg)
    assert proc.returncode == 2, proc.stderr
    _no_traceback(proc)
    assert "teacher.base_url" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_dns_failure_exits_2(tmp_path):
    cfg = write_config(tmp_path, "http://no-such-host.invalid/v1")
    proc = _generate(cfg)
    assert proc.returncode == 2, proc.stderr
    _no_traceback(proc)
    assert "no-such-host.invalid" in proc.stderr and "resolve" in proc.stderr


def test_tls_to_a_plain_http_server_exits_2(tmp_path, fault_server):
    _, url = fault_server
    cfg = write_config(tmp_path, url.replace("http://", "https://"))
    proc = _generate(cfg)
    assert proc.returncode == 2, proc.stderr
    _no_traceback(proc)
    assert "TLS" in proc.stderr


@pytest.mark.parametrize("status,words", [(401, "api_key_env"), (403, "api_key_env"), (404, "teacher.model")])
def test_auth_and_not_found_exit_2_without_calls_or_key(tmp_path, fault_server, status, words):
    srv, url = fault_server
    srv.reset(Faults(status_always=status))
    cfg = write_config(tmp_path, url)
    proc = _generate(cfg)
    assert proc.returncode == 2, proc.stderr
    _no_traceback(proc)
    assert str(status) in proc.stderr and url in proc.stderr and words in proc.stderr
    assert KEY_VALUE not in proc.stderr + proc.stdout
    # 401/403: refused at GET /models; 404: the route check falls back to one 1-token completion.
    assert srv.stats_dict()["requests"] <= (1 if status == 404 else 0)
    assert not (tmp_path / "run").exists()


def test_server_that_accepts_and_never_answers_exits_2(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # the kernel accepts connections; nobody ever reads or answers
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        cfg = write_config(tmp_path, url, teacher={"timeout_s": 2})
        proc = _generate(cfg)
    finally:
        stop.set()
        t.join(5)
        for c in held:
            c.close()
        sock.close()
    assert proc.returncode == 2, proc.stderr
    _no_traceback(proc)
    assert url in proc.stderr and ("no reply" in proc.stderr or "timed out" in proc.stderr)


def test_teacher_dying_mid_run_trips_the_breaker_keeps_work_and_resumes(tmp_path, fault_server):
    """Every completion fails after the preflight passed (a dead backend behind a live proxy):
    the circuit breaker stops the run with exit 2 and a resume hint; a rerun completes."""
    srv, url = fault_server
    srv.reset(Faults(p500=1.0))
    cfg = write_config(tmp_path, url, n=20, teacher={"max_retries": 6, "max_consecutive_failures": 5})
    proc = _generate(cfg)
    assert proc.returncode == 2, proc.stderr
    _no_traceback(proc)
    assert "circuit breaker" in proc.stderr and "run the same command again" in proc.stderr
    assert srv.stats_dict()["requests"] <= 5 + 4  # stopped at the breaker (+ what was in flight)
    run = tmp_path / "run"
    assert (run / "manifest.json").exists()
    srv.reset(Faults())  # the teacher is back
    again = _generate(cfg)
    assert again.returncode == 0, again.stderr
    raw = jsonl(run / "generate" / "raw.jsonl")
    assert len(raw) == 20 and len({r["meta"]["gen_id"] for r in raw}) == 20


def test_breaker_keeps_answers_received_before_the_teacher_died(tmp_path, fault_server):
    """Half the answers arrive, then the server fails everything: those answers are kept and the
    rerun asks only for the rest."""
    srv, url = fault_server
    srv.reset(Faults())
    cfg = write_config(tmp_path, url, n=10)
    assert _generate(cfg).returncode == 0
    run = tmp_path / "run"
    kept = tree_hash(run)["generate/raw.jsonl"]
    cfg2 = write_config(tmp_path, url, n=20, name="more.yaml", teacher={"max_consecutive_failures": 3})
    srv.reset(Faults(p500=1.0))
    proc = _generate(cfg2)
    assert proc.returncode == 2 and "circuit breaker" in proc.stderr, proc.stderr
    lines = (run / "generate" / "raw.jsonl").read_text().splitlines()
    assert len(lines) == 10 and tree_hash(run)["generate/raw.jsonl"] == kept  # nothing lost
    srv.reset(Faults())
    assert _generate(cfg2).returncode == 0
    assert srv.stats_dict()["requests"] == 10  # only the 10 new ones


def test_self_instruct_stops_when_num_is_unreachable_within_max_requests(tmp_path, fault_server):
    """Most calls fail (but not enough in a row for the breaker): with max_requests, the loop
    stops as soon as the target is out of reach, and says so."""
    srv, url = fault_server
    srv.reset(Faults(p500=0.7, seed=2))
    cfg = write_config(tmp_path, url, teacher={"max_retries": 0, "max_consecutive_failures": 1000},
                       generate={"mode": "self-instruct", "num": 200, "max_requests": 60, "instructions": None,
                                 "tasks_per_request": 2})
    proc = _generate(cfg)
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert "cannot be reached within generate.max_requests" in proc.stderr
    assert srv.stats_dict()["requests"] < 60  # stopped before spending the whole cap
