"""Shared pieces of the ship tests: the offline student, a LoRA-adapted "trained" run, a real server process."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
STUDENT = "smollm2-135m-instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def student_dir() -> Path:
    """The prepared HF folder of the offline student (converted once into protege's cache)."""
    from protege.models import resolve

    return resolve(STUDENT)


@pytest.fixture(scope="session")
def adapter_run(student_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory as `protege train` leaves it for LoRA, minus the merged model: student/adapter (a real
    PEFT LoRA adapter with non-zero weights on the student), train_config.json naming the base, MODEL_CARD.md."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path_factory.mktemp("run") / "tiny-student"
    adapter = run / "student" / "adapter"
    base = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(base, cfg)
    g = torch.Generator().manual_seed(0)  # the same adapter every run: serve's merge cache is reused
    with torch.no_grad():  # small weights: the student still answers sensibly, but differs from its base
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * (0.01 if "lora_B" in name else 0.1))
    model.save_pretrained(adapter, safe_serialization=True)
    AutoTokenizer.from_pretrained(student_dir).save_pretrained(adapter)
    (run / "student" / "train_config.json").write_text(f'{{"student_base": "{student_dir}"}}\n')
    (run / "student" / "MODEL_CARD.md").write_text(
        "# Student model card\n\n## Data\n\n- training data: `data/train.jsonl` (42 records)\n\n"
        "## Teachers and their terms\n\n| teacher | terms | status |\n|---|---|---|\n"
        "| qwen2.5-coder-1.5b-instruct | Apache-2.0 | allowed (gate passed) |\n")
    return run


@contextlib.contextmanager
def serve(model: str, *args: str, env: dict[str, str] | None = None, log: Path,
          timeout: float = 300) -> Iterator[str]:
    """`protege serve MODEL ARGS` as a subprocess on a free loopback port; yields the base URL (…/v1)."""
    port = free_port()
    cmd = [sys.executable, "-m", "protege.cli", "serve", model, "--port", str(port), *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=log.open("wb"))  # a file, not a pipe: a full pipe would block the server
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"protege serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise AssertionError(f"protege serve did not come up in {timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base + "/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
