"""Records never carry a path of the user's machine: a local teacher is named by a content hash."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from protege import models
from protege.config import validate_config
from protege.store import RunStore


def test_public_id_of_paths_is_a_name_and_a_content_hash(tmp_path: Path) -> None:
    d = tmp_path / "home" / "me" / "my-model"
    d.mkdir(parents=True)
    (d / "config.json").write_text('{"model_type": "llama"}')
    (d / "model.safetensors").write_bytes(b"weights-1")
    first = models.public_id(str(d))
    assert first.startswith("my-model@sha256:") and str(tmp_path) not in first and "/" not in first
    (d / "model.safetensors").write_bytes(b"weights-2")  # other weights, other id
    assert models.public_id(str(d)) != first
    g = tmp_path / "x.gguf"
    g.write_bytes(b"GGUF....")
    assert models.public_id(f"gguf:{g}").startswith("x.gguf@sha256:")
    assert models.public_id("smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert models.public_id("hf:HuggingFaceTB/SmolLM2-135M-Instruct") == "hf:HuggingFaceTB/SmolLM2-135M-Instruct"


def _respond_two(tmp_path: Path, teacher: dict) -> list[str]:
    """Two records answered by `teacher` in respond mode (greedy, 8 tokens); the lines of raw.jsonl."""
    from protege import generate

    (tmp_path / "instructions.txt").write_text("Name a colour.\nName a fruit.\n")
    cfg = validate_config({"run_dir": str(tmp_path / "run"), "teacher": teacher,
                           "generate": {"mode": "respond", "instructions": str(tmp_path / "instructions.txt"),
                                        "num": 2, "drop_truncated": False,
                                        "sampling": {"temperature": 0, "max_tokens": 8}}})
    generate.run(cfg, RunStore(cfg.run_dir))
    return (tmp_path / "run" / "generate" / "raw.jsonl").read_text().splitlines()


@pytest.mark.slow
def test_generated_records_hold_no_local_path(tmp_path: Path) -> None:
    src = models.resolve("smollm2-135m-instruct")
    local = tmp_path / "users" / "alice" / "models" / "student-copy"
    shutil.copytree(src, local)
    lines = _respond_two(tmp_path, {"kind": "hf", "model": str(local), "max_concurrency": 2})
    assert len(lines) == 2
    for line in lines:
        meta = json.loads(line)["meta"]
        blob = json.dumps(meta)
        assert str(tmp_path) not in blob and str(Path.home()) not in blob and str(models.cache_dir()) not in blob
        assert meta["teacher"]["model"].startswith("student-copy@sha256:")
        assert meta["teacher"]["model_version"] == meta["teacher"]["model"]


@pytest.mark.slow
def test_llamacpp_teacher_records_name_no_path(tmp_path: Path) -> None:
    """llama-cpp-python reports the GGUF's path as its model: the records carry the public name instead."""
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python")
    lines = _respond_two(tmp_path, {"kind": "llamacpp", "model": "smollm2-135m-instruct", "n_threads": 2})
    assert len(lines) == 2
    for line in lines:
        meta = json.loads(line)["meta"]
        blob = json.dumps(meta)
        assert str(Path.home()) not in blob and str(models.cache_dir()) not in blob
        assert not any("/" in str(v) for v in meta["teacher"].values())
        assert meta["teacher"]["model"] == meta["teacher"]["model_version"] == "smollm2-135m-instruct"
