"""Hardware presets: the settings `protege train` picks per hardware, and the multi-GPU launch files.

`cpu` defaults were chosen by measurement (benchmarks/bench_train.py, docs/benchmarks.md): token-budget
length-grouped batches + loss on trained positions only, fp32 (the measured CPU has no avx512_bf16;
autocast bf16 is only turned on automatically where the CPU advertises avx512_bf16 or AMX, and then LoRA
loads the frozen base in bf16 and the shared prefix is not split off: measured on a Xeon with AMX), no
gradient checkpointing (the token budget already bounds activations), no torch.compile (measured slower
on the 2-core box).
`single-gpu`: the same batching, bf16 weights when supported, regional torch.compile of the decoder
layers and liger-kernel's fused linear cross-entropy when installed (measured on an H200:
docs/benchmarks.md). `multi-gpu`: FSDP or DeepSpeed ZeRO-3 accelerate configs shipped in `protege/presets/`,
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
# peak measured over a full epoch. 1024 gave the same throughput with more memory (docs/benchmarks.md);
# so did 1536/2048 under bf16 on an 8-core Xeon with AMX (issue 14: the 8-sequence cap binds first).
CPU_TOKEN_BUDGET = 768
GPU_TOKEN_BUDGET = 16384


@dataclass
class Plan:
    """What the preset resolved to: printed in the preflight and saved with the training config."""

    preset: str
    device: str  # cpu | cuda
    token_budget: int | None
    gradient_checkpointing: bool
    bf16: bool  # bf16 compute (autocast over fp32 weights, or bf16 weights)
    fast_loss: bool
    world_size: int
    weights_dtype: str = "float32"  # dtype the model is loaded in: bfloat16 for LoRA/full on a bf16 GPU
    autocast: bool = False  # TrainingArguments.bf16: autocast around the forward (not for bf16 full fine-tunes)
    master_weights: bool = False  # full fine-tune in bf16 weights: AdamW on fp32 master copies
    fused_loss: str = "protege"  # kernel of the fast loss: protege | liger
    compile: bool = False  # regional torch.compile of the decoder layers
    share_prefix: bool = False  # fast loss: the batch's common prefix computed once (CPU default)

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


def liger_available() -> bool:
    """True when liger-kernel (and so Triton) can be imported."""
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


def triton_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def resolve_plan(train: Any) -> Plan:
    """Turn `train.preset` (+ explicit settings, which always win) into concrete settings.

    Dtypes: on a bf16 GPU, LoRA loads the frozen base in bf16 (adapters fp32, under autocast) and a full
    fine-tune loads bf16 weights and runs without autocast (fp32 weights under autocast hand fp32 q/k to
    SDPA after the rotary embedding, and SDPA's math kernel materialises the scores: measured OOM on an
    H100); AdamW then steps fp32 master copies unless `train.master_weights` is false. On CPU bf16 means
    autocast (on by default only on CPUs with avx512_bf16/AMX); under it LoRA loads the frozen base in bf16
    too (adapters fp32) and the shared-prefix computation is off (both measured on a Xeon with AMX, issue
    14); CPU full fine-tunes keep fp32 weights.
    """
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
    bf16 = train.bf16 if train.bf16 is not None else bf16
    device = "cuda" if preset != "cpu" else "cpu"
    fast_loss = getattr(train, "fast_loss", True)
    # bf16 weights: on a bf16 GPU for LoRA and full fine-tunes; on CPU for LoRA under bf16 autocast (issue
    # 14: autocast casts a frozen fp32 weight to bf16 again in every matmul of every micro-batch, since it
    # caches casts only of weights that require grad; a bf16 base skips those casts, and the activations
    # between layers are bf16 too). CPU full fine-tunes keep fp32 weights under autocast.
    bf16_weights = bf16 and (train.method in ("lora", "full") if device == "cuda" else train.method == "lora")
    return Plan(
        preset=preset,
        device=device,
        token_budget=train.token_budget or budget,
        gradient_checkpointing=bool(train.gradient_checkpointing) if train.gradient_checkpointing is not None
        else False,
        bf16=bf16,
        fast_loss=fast_loss,
        world_size=world,
        weights_dtype=_weights_dtype(train.method, bf16, bf16_weights),
        autocast=bf16 and not (bf16_weights and train.method == "full"),
        master_weights=bool(bf16_weights and train.method == "full" and getattr(train, "master_weights", True)),
        fused_loss=_fused_loss(getattr(train, "fused_loss", "auto"), device, fast_loss),
        compile=train.compile if getattr(train, "compile", None) is not None
        else preset == "single-gpu" and triton_available(),  # not yet run under DDP/FSDP: opt in there
        # Measured on CPU only (docs/benchmarks.md), never run on a GPU: +8 % in fp32 on a 2-core EPYC, equal
        # in fp32 on 8 Xeon cores, but 1.1-1.4x SLOWER under bf16 autocast there (issue 14): off with bf16.
        share_prefix=device == "cpu" and not bf16,
    )


def _weights_dtype(method: str, bf16: bool, bf16_weights: bool) -> str:
    if method == "qlora":  # the 4-bit base's compute dtype
        return "bfloat16" if bf16 else "float16"
    return "bfloat16" if bf16_weights else "float32"


def _fused_loss(choice: str, device: str, fast_loss: bool) -> str:
    if choice == "auto":
        return "liger" if fast_loss and device == "cuda" and liger_available() else "protege"
    if choice == "liger":
        if device != "cuda":
            raise UserError("train.fused_loss: liger needs a CUDA GPU (its kernels are Triton)",
                            hint="Use train.fused_loss: auto or protege on this machine.")
        if not liger_available():
            raise UserError("train.fused_loss: liger needs liger-kernel, which is not installed",
                            hint="pip install liger-kernel (or pip install 'protege[gpu]'), or use "
                                 "train.fused_loss: auto.")
    return choice


def load_preset_configs() -> dict[str, Any]:
    """Parse every shipped launch file (used by tests and `protege train --preset` docs)."""
    import yaml

    out: dict[str, Any] = {}
    for name, fname in PRESET_FILES.items():
        text = (PRESET_DIR / fname).read_text(encoding="utf-8")
        out[name] = json.loads(text) if fname.endswith(".json") else yaml.safe_load(text)
    return out
