"""Helpers for the reliability suite: configs against the fault server, the CLI as a process, hashes.

Everything here runs the real `protege` command in a subprocess (as a user would: exit codes,
stderr, signals), against real HTTP on loopback (tests/teachers/fault_server.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.teachers.fault_server import Faults, FaultServer, ServerThread

KEY_ENV = "PROTEGE_RELIABILITY_KEY"
KEY_VALUE = "sk-RELIABILITY-planted-9d2e7c41aa"


@pytest.fixture(scope="module")
def fault_server():
    """(FaultServer, base URL); reset its faults per test with `srv.reset(Faults(...))`."""
    srv = FaultServer()
    srv.reset(Faults())
    with ServerThread(srv) as st:
        yield srv, st.url


def instructions(tmp: Path, n: int) -> Path:
    p = tmp / "instructions.txt"
    p.write_text("".join(f"Task {i}: explain the number {i * 7} in one short sentence.\n" for i in range(n)))
    return p


def write_config(tmp: Path, url: str, *, n: int = 12, name: str = "protege.yaml", teacher: dict | None = None,
                 generate: dict | None = None, extra: dict | None = None) -> Path:
    """A respond-mode config against `url` (the fault server), run_dir tmp/run."""
    data = {
        "run_dir": "run",
        "teacher": {"kind": "openai", "model": "fault-model", "base_url": url, "api_key_env": KEY_ENV,
                    "max_concurrency": 4, "timeout_s": 2, "max_retries": 3, **(teacher or {})},
        "generate": {"mode": "respond", "instructions": str(instructions(tmp, n)), "num": n,
                     "sampling": {"max_tokens": 16}, **(generate or {})},
        **(extra or {}),
    }
    path = tmp / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, KEY_ENV: KEY_VALUE, "PYTHONUNBUFFERED": "1", **extra}
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _sigint_as_in_a_terminal() -> None:
    """In the child before exec: SIGINT back to its default. A test suite started in the background by a
    non-interactive shell (`.ci/run &`) inherits SIGINT ignored, and Python then installs no Ctrl-C handler,
    so a SIGINT test would measure the shell's job control instead of protege."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The real `protege` command as a background process (to kill it), with SIGINT as a user's terminal has it."""
    return subprocess.Popen([sys.executable, "-m", "protege.cli", *args], cwd=cwd, env=env or cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_sigint_as_in_a_terminal)


def wait_for(pred, timeout: float = 60.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)


def tree_hash(root: Path) -> dict[str, str]:
    """sha256 of every file under root (relative path -> hash); symlinks by their target text."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[rel] = "dir"
    return out


def jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
