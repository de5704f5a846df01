"""The transformers `Trainer` as protege uses it: token-budget batches, the fast loss, callbacks.

Subclassing `Trainer` and overriding `get_train_dataloader` / `compute_loss` is the extension point
transformers documents ("Subclass and override"); the optimiser loop, schedules, checkpoints, resume,
gradient accumulation and distributed launch all stay the library's. Built lazily (`trainer_class()`)
because transformers must not be imported at CLI start.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from protege.train.loss import backbone_and_head, trained_positions_loss


class TokenStats:
    """Counters shared between the trainer (which sees the batches) and the callbacks (which log)."""

    def __init__(self) -> None:
        self.trained = 0  # tokens with a loss (labels != -100 after the shift)
        self.real = 0  # non-padding tokens
        self.padded = 0  # tokens including padding


def trainer_class():  # type: ignore[no-untyped-def]
    from torch.utils.data import DataLoader
    from transformers import Trainer

    from protege.train.data import TokenBudgetBatchSampler

    class ProtegeTrainer(Trainer):
        """`Trainer` + token-budget length-grouped batches + loss on trained positions only."""

        def __init__(self, *a: Any, token_budget: int | None = None, fast_loss: bool = True,
                     stats: TokenStats | None = None, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.token_budget = token_budget
            self.fast_loss = fast_loss
            self.stats = stats or TokenStats()

        def _get_output_dir(self, trial: Any) -> str:
            # While a checkpoint is written: its staging folder (see _save_checkpoint).
            return getattr(self, "_staging_dir", None) or super()._get_output_dir(trial)

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            """The library's checkpoint, written under `checkpoints/.partial/checkpoint-N` and renamed
            into place when complete, so a kill during the write never leaves a torn `checkpoint-N`
            for `--resume` to pick (`last_complete_checkpoint`)."""
            final_root = Path(super()._get_output_dir(trial))
            staging_root = final_root / PARTIAL_DIR
            name = f"checkpoint-{self.state.global_step}"
            if self.args.should_save:
                shutil.rmtree(staging_root / name, ignore_errors=True)  # a torn one from a killed run
            self._staging_dir = str(staging_root)
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging_dir = None
            self.accelerator.wait_for_everyone()  # every rank's shards are written
            if self.args.should_save:
                publish_checkpoint(staging_root / name, final_root / name, self.state)
                rotate_complete_checkpoints(final_root, self.args.save_total_limit,
                                            self.state.best_model_checkpoint)
            self.accelerator.wait_for_everyone()

        def get_train_dataloader(self) -> Any:
            if not self.token_budget:
                return super().get_train_dataloader()
            ds = self.train_dataset
            sampler = TokenBudgetBatchSampler(ds.lengths, self.args.per_device_train_batch_size,
                                              self.token_budget, seed=self.args.seed)
            dl = DataLoader(ds, batch_sampler=sampler, collate_fn=self.data_collator,
                            num_workers=self.args.dataloader_num_workers,
                            pin_memory=self.args.dataloader_pin_memory)
            return self.accelerator.prepare(dl)

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            labels = inputs["labels"]
            self.stats.trained += int((labels[:, 1:] != -100).sum())
            self.stats.real += int(inputs["attention_mask"].sum())
            self.stats.padded += int(labels.numel())
            return super().training_step(model, inputs, num_items_in_batch)

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            # The fast path calls the backbone directly, so it needs the unwrapped module: under
            # DDP/FSDP/DeepSpeed wrapping we keep the model's own loss.
            if self.fast_loss and self.accelerator.unwrap_model(model) is model and backbone_and_head(model):
                loss = trained_positions_loss(model, inputs, num_items_in_batch)
                return (loss, {"loss": loss}) if return_outputs else loss
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return ProtegeTrainer


def metrics_callback(path: Path, stats: TokenStats, console: Any = None,
                     show_progress: bool = True):  # type: ignore[no-untyped-def]
    """A TrainerCallback writing metrics JSONL (step, loss, lr, trained tokens, tokens/s) and a Rich bar."""
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def __init__(self) -> None:
            self.t0 = time.perf_counter()
            self.progress: Any = None
            self.task: Any = None

        def _rate(self) -> float:
            dt = time.perf_counter() - self.t0
            return stats.trained / dt if dt > 0 else 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.t0 = time.perf_counter()
            if show_progress:
                from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                           TimeElapsedColumn, TimeRemainingColumn)
                self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                         TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                         TextColumn("ETA"), TimeRemainingColumn(), console=console,
                                         transient=False)
                self.progress.start()
                self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step,
                                                   info="")

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.progress is not None:
                self.progress.update(self.task, completed=state.global_step,
                                     info=f"{self._rate():.0f} trained tok/s")

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kw: Any) -> None:
            logs = logs or {}
            rec: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0, 4)}
            if "loss" in logs:
                rec.update(loss=logs["loss"], lr=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"))
            if "eval_loss" in logs:
                rec["eval_loss"] = logs["eval_loss"]
            if len(rec) == 2:
                return
            rec.update(trained_tokens=stats.trained, tokens=stats.real,
                       trained_tokens_per_s=round(self._rate(), 2),
                       elapsed_s=round(time.perf_counter() - self.t0, 2))
            if state.is_world_process_zero:
                with path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")
                if self.progress is None and console is not None and "loss" in rec:
                    console.print(f"step {rec['step']}: loss {rec['loss']:.4f}")

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.progress is not None:
                self.progress.stop()

    return MetricsCallback()


def trim_metrics(path: Path, last_step: int) -> None:
    """On resume, drop metric lines logged after the checkpoint (those steps are trained again)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by kill -9
    path.write_text("".join(x + "\n" for x in keep), encoding="utf-8")


# ------------------------------------------------------------------ atomic checkpoints

PARTIAL_DIR = ".partial"  # checkpoints being written; renamed to checkpoints/checkpoint-N when complete
_TRASH_PREFIX = ".trash-"  # checkpoints being deleted (renamed first, so a kill never leaves a torn one)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_STATE_FILE = "trainer_state.json"


def publish_checkpoint(staging: Path, final: Path, state: Any) -> None:
    """Rename a fully written checkpoint into place (one `rename`: it appears complete or not at all).

    Paths the trainer state recorded inside the staging folder (the best checkpoint) are rewritten
    to the final place first, in the checkpoint's trainer_state.json too.
    """
    best = getattr(state, "best_model_checkpoint", None)
    if best and Path(best).parent == staging.parent:
        state.best_model_checkpoint = str(final.parent / Path(best).name)
        if (staging / _STATE_FILE).exists():
            state.save_to_json(str(staging / _STATE_FILE))
    if final.exists():  # the same step saved again: move the old one out of the way first
        trash = final.with_name(_TRASH_PREFIX + final.name)
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(staging, final)
    _fsync_dir(final.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def complete_checkpoints(folder: Path) -> tuple[list[Path], list[Path]]:
    """(complete checkpoints oldest first, torn ones) in `folder`, by step number.

    Complete: a `checkpoint-N` folder with its trainer_state.json (written last). Since saves are
    atomic, a torn one can only come from an older protege or a deletion cut short.
    """
    good: list[tuple[int, Path]] = []
    torn: list[Path] = []
    if not folder.is_dir():
        return [], []
    for p in folder.iterdir():
        m = _CHECKPOINT.match(p.name)
        if m and p.is_dir():
            (good.append((int(m.group(1)), p)) if (p / _STATE_FILE).is_file() else torn.append(p))
    return [p for _, p in sorted(good)], torn


def last_complete_checkpoint(folder: Path) -> tuple[Path | None, list[Path]]:
    """(the newest complete checkpoint or None, the torn checkpoints skipped)."""
    good, torn = complete_checkpoints(folder)
    return (good[-1] if good else None), torn


def rotate_complete_checkpoints(folder: Path, limit: int | None, best: str | None) -> None:
    """Keep the newest `limit` checkpoints (and the best one); each deletion is a rename, then rmtree."""
    if not limit or limit <= 0:
        return
    good, _ = complete_checkpoints(folder)
    protected = {good[-1]} if good else set()
    if best:
        protected.add(Path(best))
    excess = len(good) - max(limit, len(protected))
    for p in [p for p in good if p not in protected][:max(0, excess)]:
        trash = p.with_name(_TRASH_PREFIX + p.name)
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(p, trash)
        shutil.rmtree(trash, ignore_errors=True)


def clear_partial_checkpoints(folder: Path) -> None:
    """Remove what killed runs left behind: checkpoints being written or being deleted."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.name == PARTIAL_DIR or p.name.startswith(_TRASH_PREFIX):
            shutil.rmtree(p, ignore_errors=True)
