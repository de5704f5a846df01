"""`protege train` under `accelerate launch` with 2 processes on CPU (gloo, DDP), LoRA on the real SmolLM2-135M.

Same global batch as one process with grad_accum 2 (accelerate gives rank r the batches r, r+2, ... of the
same token-budget sampler), so the per-step losses must agree; checkpoints hold both ranks' RNG states,
--resume continues from one, and only rank 0 writes the run directory.

Launcher note (accelerate 1.16): `accelerate launch --cpu --num_processes 2` starts ONE process (its CPU
multi-process path is mpirun); `--multi_gpu` selects the torchrun launcher, which on a machine without CUDA
runs DistributedType.MULTI_CPU over gloo. `torchrun --nproc_per_node 2 -m protege.train` does the same.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from protege.errors import UserError
from tests.teachers.fault_server import free_port

STEPS = 4


@pytest.fixture(scope="module")
def student() -> str:
    from protege import models

    try:
        models.prepare("smollm2-135m-instruct")
    except UserError as err:
        pytest.skip(f"SmolLM2-135M-Instruct not available: {err.message}")
    return "smollm2-135m-instruct"


def _data(path: Path) -> Path:
    rng = random.Random(0)
    with path.open("w") as f:
        for i in range(32):
            a, b = rng.randrange(50), rng.randrange(50)
            long = i % 3 == 0
            q = f"What is {a} plus {b}?" + (" Explain briefly." if long else "")
            ans = f"{a} plus {b} is {a + b}." + (" Adding the two numbers gives the sum." if long else "")
            f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ans}]})
                    + "\n")
    return path


def _cfg(tmp: Path, name: str, student: str, grad_accum: int) -> Path:
    cfg = {"run_dir": f"run_{name}", "student": {"model": student},
           "train": {"data": "d.jsonl", "preset": "cpu", "max_steps": STEPS, "save_every": 2, "batch_size": 2,
                     "grad_accum": grad_accum, "max_seq_len": 128, "lr": 1e-3,
                     "bf16": False}}  # fp32: the comparison is to 1e-3; bf16 autocast (a bf16 CPU's default) is coarser
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _launch(cfg: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "protege.train", "-c", str(cfg), *extra]
    return subprocess.run(cmd, cwd=cfg.parent, env=_env(), capture_output=True, text=True, timeout=900)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "student" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_and_resumes(tmp_path, student) -> None:
    _data(tmp_path / "d.jsonl")
    one = subprocess.run([sys.executable, "-m", "protege.train", "-c", str(_cfg(tmp_path, "one", student, 2))],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]
    ddp_cfg = _cfg(tmp_path, "ddp", student, 1)
    two = _launch(ddp_cfg)
    assert two.returncode == 0, two.stderr[-3000:]
    run = tmp_path / "run_ddp"
    ref, got = _metrics(tmp_path / "run_one"), _metrics(run)
    # Only rank 0 writes: one metrics line per step, one preflight on stdout, one summary in the manifest.
    assert [m["step"] for m in got] == list(range(1, STEPS + 1))
    assert two.stdout.count("first example, trained spans") == 1
    stage = json.loads((run / "manifest.json").read_text())["stages"]["train"]
    assert stage["status"] == "ok" and stage["steps"] == STEPS and stage["adapter"].endswith("adapter")
    # Same global batch per optimizer step: the losses and gradient norms agree (gloo all-reduce vs local sum).
    for a, b in zip(ref, got):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3), (a, b)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3), (a, b)
        assert b["epoch"] == pytest.approx(a["epoch"])  # both see 8 optimizer steps per epoch
    assert len({round(m["loss"], 3) for m in got}) == STEPS  # different batches each step: a real comparison
    ckpts = run / "student" / "checkpoints"
    for step in (2, 4):
        names = {p.name for p in (ckpts / f"checkpoint-{step}").iterdir()}
        assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json"} <= names  # both ranks' RNG
    assert (run / "student" / "adapter" / "adapter_model.safetensors").exists()

    # --resume from checkpoint-2 under the same launcher: steps 3-4 again, same losses as before.
    shutil.rmtree(ckpts / "checkpoint-4")
    again = _launch(ddp_cfg, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("Resuming from") == 1 and "(step 2)" in again.stdout
    resumed = _metrics(run)
    assert [m["step"] for m in resumed] == list(range(1, STEPS + 1))  # trimmed, then appended once
    for a, b in zip(got[2:], resumed[2:]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3), (a, b)
    state = json.loads((ckpts / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS
