"""`protege run`: the stages in order from one config, skipping unchanged ones.

The stages are one table (`STAGES`): a name, what the stage reads (its config blocks and input files),
whether its outputs exist, when the config asks for it, and the function its own command calls. Adding a
stage is adding one entry. A stage is skipped when its outputs exist and its *key* (what it reads: the
config blocks plus the sha256 of its input files) equals the key recorded in `manifest.json` when it last
finished. Stages never call each other; they meet through files in the run directory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protege.config import RunConfig
from protege.errors import UserError
from protege.store import RunStore, sha256_file


def _file_hash(path: str | Path | None) -> str | None:
    if path is None:
        return None
    p = Path(path)
    return sha256_file(p) if p.is_file() else None


def curate_input(cfg: RunConfig, store: RunStore) -> Path | None:
    """What curate reads: the teacher's raw.jsonl, or without a teacher the seeds (your own data)."""
    if cfg.teacher is not None:
        return store.raw
    return Path(cfg.seeds) if cfg.seeds else None


def _can_resume(store: RunStore) -> bool:
    """Continue an interrupted training (checkpoints, no final student) instead of refusing."""
    has_ckpt = store.checkpoints_dir.is_dir() and any(store.checkpoints_dir.glob("checkpoint-*"))
    return has_ckpt and not (store.merged_dir.exists() or store.adapter_dir.exists())


# ------------------------------------------------------------------ the stages


def _run_generate(cfg: RunConfig, store: RunStore) -> None:
    from protege import generate

    generate.run(cfg, store)


def _run_curate(cfg: RunConfig, store: RunStore) -> None:
    from protege.curate import stage

    stage.run(cfg, store, input_path=curate_input(cfg, store))


def _run_train(cfg: RunConfig, store: RunStore) -> None:
    from protege import train

    train.run(cfg, store, resume=_can_resume(store))


def _run_eval(cfg: RunConfig, store: RunStore) -> None:
    from protege import evaluate

    evaluate.run(cfg, store)


@dataclass(frozen=True)
class Stage:
    """One row of the pipeline: how `protege run` decides about a stage and runs it."""

    name: str
    reads: Callable[[dict[str, Any], RunConfig, RunStore], dict[str, Any]]  # (config as JSON, cfg, store)
    done: Callable[[RunStore], bool]  # its outputs exist
    wanted: Callable[[RunConfig], bool]  # the config asks for it
    run: Callable[[RunConfig, RunStore], None]


STAGES: tuple[Stage, ...] = (
    Stage("generate",
          reads=lambda c, cfg, store: {"teacher": c["teacher"], "generate": c["generate"],
                                       "rouge": c["curate"]["rouge_threshold"], "seeds": _file_hash(cfg.seeds),
                                       "instructions": _file_hash(cfg.generate.instructions)},
          done=lambda store: store.raw.exists(),
          wanted=lambda cfg: cfg.train.data is None and cfg.teacher is not None,
          run=_run_generate),
    Stage("curate",
          reads=lambda c, cfg, store: {"curate": c["curate"], "governance": c["governance"],
                                       "input": _file_hash(curate_input(cfg, store)),
                                       "eval": [_file_hash(p) for p in cfg.curate.decontaminate]},
          done=lambda store: store.split("train").exists(),
          wanted=lambda cfg: cfg.train.data is None,
          run=_run_curate),
    Stage("train",
          reads=lambda c, cfg, store: {"student": c["student"], "train": c["train"], "governance": c["governance"],
                                       "data": _file_hash(cfg.train.data or store.split("train")),
                                       "val": _file_hash(store.split("val"))},
          done=lambda store: store.merged_dir.exists() or store.adapter_dir.exists(),
          wanted=lambda cfg: True,
          run=_run_train),
    Stage("eval",  # opt-in (eval.in_run): a judged eval costs many judge calls
          reads=lambda c, cfg, store: {"eval": c["eval"], "student": c["student"], "teacher": c["teacher"],
                                       "sets": [_file_hash(p) for p in cfg.eval.sets],
                                       "test": _file_hash(store.split("test")), "trained": _file_hash(store.metrics)},
          done=lambda store: store.scores.exists(),
          wanted=lambda cfg: cfg.eval.in_run,
          run=_run_eval),
)
BY_NAME = {s.name: s for s in STAGES}


def stage_inputs(cfg: RunConfig, store: RunStore, stage: str) -> dict[str, Any]:
    """What a stage reads: its config blocks and the hashes of its input files."""
    return BY_NAME[stage].reads(cfg.model_dump(mode="json"), cfg, store)


def stage_key(cfg: RunConfig, store: RunStore, stage: str) -> str:
    blob = json.dumps(stage_inputs(cfg, store, stage), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def check_inputs(cfg: RunConfig) -> None:
    """Refuse, all at once, the input files and model specs of a config that do not exist or cannot be used.

    The file and model half of `protege config`'s check (the config's own rules are pydantic validators):
    what a stage would refuse later because a named file is missing or a model spec is malformed, reported
    before anything slow runs. Specs of API models (`kind: openai`) are names, not checked here.
    """
    from protege import models

    problems: list[str] = []
    files = [("seeds", cfg.seeds), ("generate.instructions", cfg.generate.instructions), ("train.data", cfg.train.data)]
    files += [(f"curate.decontaminate[{i}]", p) for i, p in enumerate(cfg.curate.decontaminate)]
    for key, path in files:
        if path is not None and not Path(path).is_file():
            what = "is a directory, not a file" if Path(path).is_dir() else "not found"
            problems.append(f"  - {key}: {path}: {what}")
    specs = [("student.model", cfg.student.model)]
    for key, block in (("teacher", cfg.teacher), ("curate.judge", cfg.curate.judge), ("eval.judge", cfg.eval.judge)):
        if block is not None and block.kind != "openai":
            specs.append((f"{key}.model", block.model))
    for key, spec in specs:
        try:
            models.parse_spec(spec)
        except UserError as err:
            problems.append(f"  - {key}: {err.message}")
    if problems:
        raise UserError(f"{len(problems)} problem(s) with the files and models this config names:\n" + "\n".join(problems),
                        hint="Fix the paths (relative to the config file) or the model specs "
                             "(`protege models list` shows the named offline models).")


def planned_stages(cfg: RunConfig) -> list[str]:
    """Stages this config asks for: no teacher -> curate the seeds; train.data given -> train only."""
    if cfg.train.data is None and cfg.teacher is None and not cfg.seeds:
        raise UserError("run: nothing to train on: the config has no teacher, no seeds and no train.data",
                        hint="Add a teacher block (to generate data), or point seeds / train.data at your data.")
    return [s.name for s in STAGES if s.wanted(cfg)]


def run(cfg: RunConfig, store: RunStore, *, force: bool = False,
        say: Callable[[str], None] = print) -> dict[str, str]:
    """Run every planned stage in order; returns {stage: "ran" | "skipped"}."""
    done: dict[str, str] = {}
    for name in planned_stages(cfg):
        stage = BY_NAME[name]
        key = stage_key(cfg, store, name)
        if not force and stage.done(store) and store.run_key(name) == key:
            say(f"{name}: unchanged since the last run (config and inputs), skipped")
            done[name] = "skipped"
            continue
        say(f"{name}: running")
        stage.run(cfg, store)
        store.set_run_key(name, key)
        done[name] = "ran"
    return done
