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
    """Counters shared between the trainer (which sees the batches) and the callbacks (which log).

    On a GPU the per-batch counts stay on the device until read (`trained` / `real`), so counting adds
    no host-device synchronisation to a step; the callbacks read them when a step is logged.
    """

    def __init__(self) -> None:
        self._trained = 0  # tokens with a loss (labels != -100 after the shift)
        self._real = 0  # non-padding tokens
        self.padded = 0  # tokens including padding
        self._pending: list[Any] = []  # device tensors [trained, real] not yet added

    def add(self, labels: Any, attention_mask: Any) -> None:
        """Count one micro-batch."""
        self.padded += int(labels.numel())
        trained, real = (labels[:, 1:] != -100).sum(), attention_mask.sum()
        if labels.device.type == "cpu":
            self._trained += int(trained)
            self._real += int(real)
        else:
            import torch

            self._pending.append(torch.stack([trained, real.to(trained.dtype)]))

    def _flush(self) -> None:
        if self._pending:
            import torch

            t, r = torch.stack(self._pending).sum(0).tolist()
            self._pending.clear()
            self._trained += int(t)
            self._real += int(r)

    @property
    def trained(self) -> int:
        self._flush()
        return self._trained

    @property
    def real(self) -> int:
        self._flush()
        return self._real


def trainer_class():  # type: ignore[no-untyped-def]
    from torch.utils.data import DataLoader
    from transformers import Trainer

    from protege.train.data import TokenBudgetBatchSampler

    class ProtegeTrainer(Trainer):
        """`Trainer` + token-budget length-grouped batches + loss on trained positions only."""

        def __init__(self, *a: Any, token_budget: int | None = None, fast_loss: bool = True,
                     stats: TokenStats | None = None, fused_loss: str = "protege", master_weights: bool = False,
                     share_prefix: bool | None = None, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.token_budget = token_budget
            self.fast_loss = fast_loss
            self.fused_loss = fused_loss  # kernel of the fast loss: protege | liger
            self.master_weights = master_weights  # AdamW on fp32 master copies of bf16 weights
            self.share_prefix = share_prefix  # common prefix computed once (None: the loss's default, CPU only)
            self.stats = stats or TokenStats()

        def create_optimizer(self, *a: Any, **kw: Any) -> Any:
            # The library's AdamW (same kwargs: lr, betas, eps, fused), stepping fp32 master copies.
            custom = getattr(self, "optimizer_cls_and_kwargs", None)
            if self.master_weights and self.optimizer is None and custom is None:
                import torch

                from protege.train.speed import master_weight_adamw

                cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
                if isinstance(cls, type) and issubclass(cls, torch.optim.AdamW):
                    self.optimizer_cls_and_kwargs = (master_weight_adamw(), kwargs)
            return super().create_optimizer(*a, **kw)

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
                try:
                    staging_root.rmdir()  # only when empty
                except OSError:
                    pass
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
            self.stats.add(inputs["labels"], inputs["attention_mask"])
            return super().training_step(model, inputs, num_items_in_batch)

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            # The fast path calls the backbone directly, so it needs the unwrapped module: under
            # DDP/FSDP/DeepSpeed wrapping we keep the model's own loss.
            # accelerate applies mixed precision by wrapping `model.forward` in autocast; the fast path does
            # not go through `model.forward`, so it enters the same autocast itself (before this, bf16
            # training ran the fast path in fp32: issue 14).
            if self.fast_loss and self.accelerator.unwrap_model(model) is model and backbone_and_head(model):
                with self.accelerator.autocast():
                    loss = trained_positions_loss(model, inputs, num_items_in_batch, kernel=self.fused_loss,
                                                  share_prefix=self.share_prefix)
                return (loss, {"loss": loss}) if return_outputs else loss
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return ProtegeTrainer


def metrics_callback(path: Path, stats: TokenStats, console: Any = None, show_progress: bool = True,
                     flops_per_token: float | None = None,
                     peak_flops: float | None = None):  # type: ignore[no-untyped-def]
    """A TrainerCallback writing metrics JSONL (step, loss, lr, trained tokens, tokens/s, MFU) and a Rich bar.

    `tokens_per_s` on each line: real (non-padding) tokens per second since the previous logged step (the
    Trainer reads the loss before logging, so the device has finished that step). `mfu`: that rate times
    `flops_per_token` over `peak_flops`, when both are known (a GPU with a known bf16 peak).
    `throughput()` gives the same over the steps after the warm-up (compilation, allocator) for the summary.
    """
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def __init__(self) -> None:
            self.t0 = time.perf_counter()
            self.progress: Any = None
            self.task: Any = None
            self.points: list[tuple[int, float, int]] = []  # (step, seconds since start, real tokens)

        def _mfu(self, tok_s: float) -> float | None:
            return round(tok_s * flops_per_token / peak_flops, 4) if flops_per_token and peak_flops else None

        def throughput(self) -> dict[str, Any]:
            """tokens/s (and MFU) from step k+1 to the last step, k = min(5, steps // 4) warm-up steps."""
            pts = self.points
            if len(pts) < 2:
                return {"tokens_per_s": None, "mfu": None, "throughput_from_step": None}
            k = max(1, min(5, len(pts) // 4))
            (s0, t0, n0), (_, t1, n1) = pts[k - 1], pts[-1]
            rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
            return {"tokens_per_s": round(rate, 1), "mfu": self._mfu(rate), "throughput_from_step": s0 + 1}

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
            elapsed = time.perf_counter() - self.t0
            rec.update(trained_tokens=stats.trained, tokens=stats.real,
                       trained_tokens_per_s=round(self._rate(), 2), elapsed_s=round(elapsed, 2))
            if "loss" in rec:
                if self.points:
                    _, t_prev, n_prev = self.points[-1]
                    if elapsed > t_prev:
                        rate = (rec["tokens"] - n_prev) / (elapsed - t_prev)
                        rec["tokens_per_s"] = round(rate, 1)
                        if (mfu := self._mfu(rate)) is not None:
                            rec["mfu"] = mfu
                self.points.append((state.global_step, elapsed, rec["tokens"]))
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
