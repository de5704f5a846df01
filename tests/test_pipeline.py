"""`protege run`: stages in order, skipped when their config and inputs are unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from protege.config import load_config
from protege.errors import UserError
from protege.pipeline import planned_stages, stage_key
from protege.scaffold import template_text
from protege.store import RunStore
from tests.conftest import run_cli


def project(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "seeds.jsonl").write_text(template_text("seeds.jsonl"))
    cfg = tmp_path / "protege.yaml"
    cfg.write_text("run_dir: run\nseeds: seeds.jsonl\n" + extra)
    return cfg


def test_planned_stages(tmp_path: Path) -> None:
    cfg = load_config(project(tmp_path))
    assert planned_stages(cfg) == ["curate", "train"]  # no teacher: curate your own data
    cfg = load_config(project(tmp_path, "teacher: {kind: llamacpp, model: smollm2-135m-instruct}\n"))
    assert planned_stages(cfg) == ["generate", "curate", "train"]
    cfg = load_config(project(tmp_path, "train: {data: seeds.jsonl}\n"))
    assert planned_stages(cfg) == ["train"]
    (tmp_path / "p2.yaml").write_text("run_dir: run\n")
    with pytest.raises(UserError, match="nothing to train on"):
        planned_stages(load_config(tmp_path / "p2.yaml"))


def test_stage_key_follows_config_and_inputs(tmp_path: Path) -> None:
    path = project(tmp_path)
    cfg = load_config(path)
    store = RunStore(cfg.run_dir)
    k_curate, k_train = stage_key(cfg, store, "curate"), stage_key(cfg, store, "train")
    assert stage_key(load_config(path), store, "curate") == k_curate
    # a train setting changes train's key only
    cfg2 = load_config(path, ["train.lr=1e-3"])
    assert stage_key(cfg2, store, "train") != k_train and stage_key(cfg2, store, "curate") == k_curate
    # editing the input file changes curate's key
    with (tmp_path / "seeds.jsonl").open("a") as f:
        f.write('{"instruction": "Name a prime.", "input": "", "output": "7"}\n')
    assert stage_key(load_config(path), store, "curate") != k_curate


@pytest.mark.slow
def test_run_curates_trains_then_skips_unchanged(tmp_path: Path) -> None:
    cfg = project(tmp_path, "train: {max_steps: 2, batch_size: 2, max_seq_len: 256, save_every: 1}\n"
                            "curate: {split: {val: 0.1, test: 0.1}}\n")
    first = run_cli("run", "-c", str(cfg))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "curate: running" in first.stdout and "train: running" in first.stdout
    store = RunStore(tmp_path / "run")
    assert store.split("train").exists() and store.card.exists()
    assert (store.adapter_dir.exists() or store.merged_dir.exists()) and store.metrics.exists()
    second = run_cli("run", "-c", str(cfg))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "curate: unchanged" in second.stdout and "train: unchanged" in second.stdout
