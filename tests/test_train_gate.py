"""The governance gate through the real `protege train`: refuses, then trains once acknowledged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli


def data_from(tmp_path: Path, model: str, n: int = 4) -> Path:
    rows = []
    for i in range(n):
        rows.append({"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                  {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}],
                     "meta": {"teacher": {"kind": "openai", "model": model, "endpoint": "api.example.test"}}})
    p = tmp_path / "data.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.mark.slow
def test_train_refuses_restricted_teacher_until_acknowledged(tmp_path: Path) -> None:
    data = data_from(tmp_path, "gpt-4o-mini")
    cfg = tmp_path / "protege.yaml"
    cfg.write_text(f"run_dir: run\ntrain: {{data: {data}, max_steps: 1, batch_size: 2, max_seq_len: 128}}\n")
    refused = run_cli("train", "-c", str(cfg))
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "gpt-4o-mini" in refused.stderr and "4 of 4 records" in refused.stderr
    assert "acknowledge" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "run" / "student" / "merged").exists()
    ok = run_cli("train", "-c", str(cfg), "--set", "governance.acknowledge=[openai]")
    assert ok.returncode == 0, ok.stderr[-3000:]
    card = (tmp_path / "run" / "student" / "MODEL_CARD.md").read_text()
    assert "gpt-4o-mini" in card and "acknowledged" in card.lower()
