"""Run directory manifest: artifacts with sha256 and counts, stage timings, versions."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from protege.store import RunStore


def test_manifest_records_artifacts_and_stages(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    with store.stage("generate", config_hash="abc") as info:
        store.ensure(store.generate_dir)
        store.raw.write_text('{"messages": []}\n')
        store.record_artifact(store.raw, "generate", records=1)
        info["kept"] = 1
    m = json.loads(store.manifest_file.read_text())
    art = m["artifacts"]["generate/raw.jsonl"]
    assert art["sha256"] == hashlib.sha256(store.raw.read_bytes()).hexdigest()
    assert art["records"] == 1 and art["bytes"] == store.raw.stat().st_size
    st = m["stages"]["generate"]
    assert st["status"] == "ok" and st["kept"] == 1 and st["config_hash"] == "abc" and st["seconds"] >= 0
    assert "torch" in m["versions"] and "python" in m["versions"]


def test_failed_stage_is_recorded(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    with pytest.raises(RuntimeError):
        with store.stage("train"):
            raise RuntimeError("boom")
    assert json.loads(store.manifest_file.read_text())["stages"]["train"]["status"] == "failed"


def test_split_names_are_checked(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    assert store.split("val") == tmp_path / "data" / "val.jsonl"
    with pytest.raises(ValueError):
        store.split("dev")
