"""Hardware presets: the settings `protege train` picks per hardware, and the multi-GPU launch files.

`cpu` defaults were chosen by measurement (benchmarks/bench_train.py, docs/benchmarks.md): token-budget
length-grouped batches + loss on trained positions only, fp32 (the measured CPU has no avx512_bf16;
autocast bf16 is only turned on automatically where the CPU advertises avx512_bf16 or AMX), no gradient
checkpointing (the token budget already bounds activations). `single-gpu`: the same batching, bf16 when
supported. `multi-gpu`: FSDP or DeepSpeed ZeRO-3 accelerate configs shipped in `protege/presets/`,
launched with `accelerate launch ... -m protege.train -c FILE`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from protege.errors import UserError

PRESET_DIR = Path(__file__).with_name("presets")
PRESET_FILES = {
    "fsdp": "accelerate_fsdp.yaml",
    "ddp": "accelerate_ddp.yaml",
    "deepspeed": "accelerate_deepspeed_zero3.yaml",
    "deepspeed-json": "deepspeed_zero3.json",
    "single-gpu": "accelerate_single_gpu.yaml",
}
# Token budget per micro-batch by preset (padded tokens). CPU: chosen by measurement so that peak RSS
# stays under 4 GiB for SmolLM2-135M LoRA r16 all-linear: ~2.3 MiB of activations per padded token on the
# fast path at lora_dropout 0 (3.2 MiB at 0.05), plus ~0.9 GiB of runtime and touched weights; 2.8 GiB
# peak measured over a full epoch. 1024 gave the same throughput with more memory (docs/benchmarks.md).
CPU_TOKEN_BUDGET = 768
GPU_TOKEN_BUDGET = 16384


@dataclass
class Plan:
    """What the preset resolved to: printed in the preflight and saved with the training config."""

    preset: str
    device: str  # cpu | cuda
    token_budget: int | None
    gradient_checkpointing: bool
    bf16: bool
    fast_loss: bool
    world_size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def preset_file(name: str) -> Path:
    """Path of a shipped launch config: fsdp, deepspeed, deepspeed-json, single-gpu."""
    if name not in PRESET_FILES:
        raise UserError(f"unknown preset file {name!r}", hint=f"Choose one of: {', '.join(PRESET_FILES)}")
    return PRESET_DIR / PRESET_FILES[name]


def cpu_has_bf16() -> bool:
    """True when the CPU advertises native bf16 math (avx512_bf16 or AMX); Linux only."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_plan(train: Any) -> Plan:
    """Turn `train.preset` (+ explicit settings, which always win) into concrete settings."""
    import os

    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    preset = train.preset
    cuda = torch.cuda.is_available()
    if preset == "auto":
        preset = ("multi-gpu" if world > 1 else "single-gpu") if cuda else "cpu"
    if preset in ("single-gpu", "multi-gpu") and not cuda:
        raise UserError(f"train.preset: {preset} but no CUDA GPU is visible",
                        hint="Use train.preset: cpu (or auto), or run on a machine with a GPU.")
    if train.method == "qlora" and not cuda:
        raise UserError("train.method: qlora needs a CUDA GPU (bitsandbytes 4-bit)",
                        hint="Use train.method: lora on CPU.")
    if preset == "cpu":
        budget = CPU_TOKEN_BUDGET
        bf16 = cpu_has_bf16()
    else:
        budget = GPU_TOKEN_BUDGET
        bf16 = bool(torch.cuda.is_bf16_supported())
    return Plan(
        preset=preset,
        device="cuda" if preset != "cpu" else "cpu",
        token_budget=train.token_budget or budget,
        gradient_checkpointing=bool(train.gradient_checkpointing) if train.gradient_checkpointing is not None
        else False,
        bf16=train.bf16 if train.bf16 is not None else bf16,
        fast_loss=getattr(train, "fast_loss", True),
        world_size=world,
    )


def load_preset_configs() -> dict[str, Any]:
    """Parse every shipped launch file (used by tests and `protege train --preset` docs)."""
    import yaml

    out: dict[str, Any] = {}
    for name, fname in PRESET_FILES.items():
        text = (PRESET_DIR / fname).read_text(encoding="utf-8")
        out[name] = json.loads(text) if fname.endswith(".json") else yaml.safe_load(text)
    return out
