"""What a finished training run leaves behind: adapter, merged model, tokenizer, config, model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from protege.store import RunStore


def save_student(model: Any, tokenizer: Any, cfg: Any, store: RunStore, base_dir: Path) -> dict[str, str]:
    """Save the adapter (LoRA/QLoRA) and a merged safetensors model, each with the tokenizer.

    QLoRA adapters are merged into a freshly loaded bf16 base (merging into 4-bit weights would lose
    precision); LoRA adapters are merged into the fp32 model in memory; full fine-tunes are saved as is.
    """
    out: dict[str, str] = {}
    method = cfg.train.method
    if method in ("lora", "qlora"):
        model.save_pretrained(store.adapter_dir, safe_serialization=True)
        tokenizer.save_pretrained(store.adapter_dir)
        out["adapter"] = str(store.adapter_dir)
        if method == "qlora":
            import torch
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16)
            merged = PeftModel.from_pretrained(base, store.adapter_dir).merge_and_unload()
        else:
            merged = model.merge_and_unload()
    else:
        merged = model
    merged.generation_config.eos_token_id = _eos_ids(merged, tokenizer)
    merged.save_pretrained(store.merged_dir, safe_serialization=True)
    tokenizer.save_pretrained(store.merged_dir)
    out["merged"] = str(store.merged_dir)
    return out


def _eos_ids(model: Any, tokenizer: Any) -> Any:
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else ([ids] if isinstance(ids, int) else list(ids))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.insert(0, tokenizer.eos_token_id)
    return ids[0] if len(ids) == 1 else ids


def final_losses(metrics_path: Path) -> dict[str, Any]:
    """First/last training loss and last validation loss from the metrics JSONL."""
    losses, evals = [], []
    if metrics_path.exists():
        for line in metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "loss" in rec:
                losses.append((rec["step"], rec["loss"]))
            if "eval_loss" in rec:
                evals.append((rec["step"], rec["eval_loss"]))
    return {
        "first_loss": losses[0][1] if losses else None,
        "final_loss": losses[-1][1] if losses else None,
        "steps": losses[-1][0] if losses else 0,
        "final_eval_loss": evals[-1][1] if evals else None,
    }


def model_card(cfg: Any, store: RunStore, data_source: str, plan: dict[str, Any], losses: dict[str, Any],
               governance_md: str, outputs: dict[str, str]) -> str:
    """MODEL_CARD.md: base model, data (card link), teachers and terms, hyperparameters, final losses."""
    t = cfg.train
    card_link = store.relative(store.card) if store.card.exists() else "(no data card: data given as a file)"
    hp = {k: getattr(t, k) for k in ("method", "epochs", "max_steps", "max_seq_len", "batch_size", "grad_accum",
                                     "lr", "warmup_ratio", "weight_decay", "seed", "prompt_format")}
    if t.method != "full":
        hp.update(lora_r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
                  target_modules=t.target_modules)
    rows = "\n".join(f"| {k} | {v} |" for k, v in hp.items())
    plan_rows = "\n".join(f"| {k} | {v} |" for k, v in plan.items())
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
    return f"""# Student model card

Trained with protege (`protege train`).

## Base model

`{cfg.student.model}`. The student inherits the base model's license and limitations.

## Data

- training data: `{data_source}`
- data card: {card_link}

{governance_md or "## Teachers and their terms" + chr(10) + chr(10) + "No teacher provenance in the data."}

## Training

| hyperparameter | value |
|---|---|
{rows}

| hardware plan | value |
|---|---|
{plan_rows}

## Results

- training loss: first logged {fmt(losses['first_loss'])}, final {fmt(losses['final_loss'])} \
after {losses['steps']} optimizer steps
- final validation loss: {fmt(losses['final_eval_loss'])}
- metrics: `{store.relative(store.metrics)}`

## Files

""" + "\n".join(f"- {k}: `{store.relative(Path(v))}`" for k, v in outputs.items()) + "\n"
