"""`protege run`: generate -> curate -> train from one config, skipping unchanged stages.

A stage is skipped when its outputs exist and its *key* (the config blocks it reads plus the
sha256 of its input files) equals the key recorded in `manifest.json` when it last finished.
Each stage is still the one function its own command calls; this module only sequences them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protege.config import RunConfig
from protege.errors import UserError
from protege.store import RunStore, sha256_file

STAGES = ("generate", "curate", "train")


def _file_hash(path: str | Path | None) -> str | None:
    if path is None:
        return None
    p = Path(path)
    return sha256_file(p) if p.is_file() else None


def stage_inputs(cfg: RunConfig, store: RunStore, stage: str) -> dict[str, Any]:
    """What a stage reads: its config blocks and the hashes of its input files."""
    c = cfg.model_dump(mode="json")
    if stage == "generate":
        return {"teacher": c["teacher"], "generate": c["generate"], "rouge": c["curate"]["rouge_threshold"],
                "seeds": _file_hash(cfg.seeds), "instructions": _file_hash(cfg.generate.instructions)}
    if stage == "curate":
        return {"curate": c["curate"], "governance": c["governance"], "input": _file_hash(curate_input(cfg, store)),
                "eval": [_file_hash(p) for p in cfg.curate.decontaminate]}
    if stage == "train":
        data = cfg.train.data or store.split("train")
        return {"student": c["student"], "train": c["train"], "governance": c["governance"],
                "data": _file_hash(data), "val": _file_hash(store.split("val"))}
    raise ValueError(stage)


def stage_key(cfg: RunConfig, store: RunStore, stage: str) -> str:
    blob = json.dumps(stage_inputs(cfg, store, stage), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _outputs_exist(store: RunStore, stage: str) -> bool:
    if stage == "generate":
        return store.raw.exists()
    if stage == "curate":
        return store.split("train").exists()
    return store.merged_dir.exists() or store.adapter_dir.exists()


def curate_input(cfg: RunConfig, store: RunStore) -> Path | None:
    """What curate reads: the teacher's raw.jsonl, or without a teacher the seeds (your own data)."""
    if cfg.teacher is not None:
        return store.raw
    return Path(cfg.seeds) if cfg.seeds else None


def planned_stages(cfg: RunConfig) -> list[str]:
    """Stages this config asks for: no teacher -> curate the seeds; train.data given -> train only."""
    if cfg.train.data is not None:
        return ["train"]
    if cfg.teacher is None and not cfg.seeds:
        raise UserError("run: nothing to train on: the config has no teacher, no seeds and no train.data",
                        hint="Add a teacher block (to generate data), or point seeds / train.data at your data.")
    return [s for s in STAGES if s != "generate" or cfg.teacher is not None]


def run(cfg: RunConfig, store: RunStore, *, force: bool = False,
        say: Callable[[str], None] = print) -> dict[str, str]:
    """Run every planned stage in order; returns {stage: "ran" | "skipped"}."""
    from protege.curate import stage as curate_stage
    from protege import generate, train

    fns: dict[str, Callable[[], Any]] = {
        "generate": lambda: generate.run(cfg, store),
        "curate": lambda: curate_stage.run(cfg, store, input_path=curate_input(cfg, store)),
        "train": lambda: train.run(cfg, store, resume=_can_resume(store)),
    }
    done: dict[str, str] = {}
    for stage in planned_stages(cfg):
        key = stage_key(cfg, store, stage)
        if not force and _outputs_exist(store, stage) and store.run_key(stage) == key:
            say(f"{stage}: unchanged since the last run (config and inputs), skipped")
            done[stage] = "skipped"
            continue
        say(f"{stage}: running")
        fns[stage]()
        store.set_run_key(stage, key)
        done[stage] = "ran"
    return done


def _can_resume(store: RunStore) -> bool:
    """Continue an interrupted training (checkpoints, no final student) instead of refusing."""
    has_ckpt = store.checkpoints_dir.is_dir() and any(store.checkpoints_dir.glob("checkpoint-*"))
    return has_ckpt and not _outputs_exist(store, "train")
