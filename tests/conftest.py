"""Shared test helpers: the real CLI in a subprocess, and the third-party data in ../shared."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (third-party reference data); tests using it skip where it is absent."""
    if not (SHARED_DATA / "alpaca" / "seed_tasks.jsonl").exists():
        pytest.skip(f"reference data not found at {SHARED_DATA} (only present in the dev/CI workspace)")
    return SHARED_DATA


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real `protege` command as a user would and capture its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "protege.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
