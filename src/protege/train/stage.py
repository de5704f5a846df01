"""`protege train`: a curated dataset -> a student model (LoRA, full fine-tune, or QLoRA on GPU).

The recipe is transformers `Trainer` + PEFT + accelerate; what protege adds (modules of this package):
- data.py       assistant-only label masks from the chat template, token-budget length-grouped batches
- loss.py       loss on trained positions only, chunked (the full logits tensor is never built);
                the batch's common prefix (chat template header) computed once
- trainer.py    the Trainer subclass wiring both in; metrics JSONL + Rich progress callback
- preflight.py  what is about to happen, printed before step 1 (refuses hopeless configs)
- presets.py    cpu / single-gpu / multi-gpu settings and the accelerate/DeepSpeed launch files
- output.py     adapter, merged model, tokenizer, model card

`run(cfg, store, resume=False)` is the stage function the CLI calls. `python -m protege.train -c FILE
[--set k=v] [--resume]` runs it without the CLI (and is what `accelerate launch` starts on multi-GPU).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from protege.config import RunConfig
from protege.errors import UserError, report
from protege.records import Example, read_examples
from protege.store import RunStore


def _load_data(cfg: RunConfig, store: RunStore) -> tuple[list[Example], str, list[Example]]:
    src = Path(cfg.train.data) if cfg.train.data else store.split("train")
    if not src.exists():
        raise UserError(f"training data not found: {src}",
                        hint="Run `protege curate` first, or point train.data at a data file.")
    examples = read_examples(src)
    if not examples:
        raise UserError(f"{src}: no examples to train on")
    val_path = store.split("val")
    val = read_examples(val_path) if val_path.exists() else []
    return examples, str(src), val


def _governance(examples: list[Example], cfg: RunConfig) -> tuple[str, str]:
    """Run the pre-training gate (raises UserError when blocked); returns (one-line summary, card md)."""
    from protege.governance import check_gate, render_governance_section

    report = check_gate(examples, cfg)
    teachers = getattr(report, "teachers", None) or []
    summary = f"gate passed ({len(teachers)} teacher(s) in the data)"
    return summary, render_governance_section(report)


def check_outputs(store: RunStore, resume: bool, console: Any = None) -> str | None:
    """The checkpoint to resume from (the newest *complete* one, said aloud); refuses to overwrite a
    finished student or stray checkpoints."""
    from protege.train.trainer import clear_partial_checkpoints, last_complete_checkpoint

    newest, torn = last_complete_checkpoint(store.checkpoints_dir)
    ckpt = str(newest) if newest is not None else None
    if resume:
        if ckpt is None:
            extra = f" (only incomplete ones: {', '.join(p.name for p in torn)})" if torn else ""
            raise UserError(f"--resume: no complete checkpoint in {store.checkpoints_dir}{extra}",
                            hint="Run without --resume to start training.")
        if is_main_process():  # one rank cleans up (the others only read)
            clear_partial_checkpoints(store.checkpoints_dir)  # what a kill left half-written
        if console is not None:
            skipped = f"; skipped incomplete {', '.join(p.name for p in torn)}" if torn else ""
            console.print(f"resuming from the newest complete checkpoint: {newest}{skipped}",
                          markup=False, highlight=False)
        return ckpt
    done = [p for p in (store.adapter_dir, store.merged_dir) if p.exists()]
    if done or ckpt:
        what = ", ".join(str(p) for p in done) if done else f"checkpoints in {store.checkpoints_dir}"
        raise UserError(f"this run already has a student ({what}); training again would overwrite it",
                        hint="Use --resume to continue from the last checkpoint, or set another run_dir.")
    return None


def is_main_process() -> bool:
    """Rank 0 of a `torchrun` / `accelerate launch` job (or a plain single process): the one that
    writes. Read from the launcher's RANK variable, so it holds before torch.distributed starts."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _kernels_default() -> bool:
    """True for transformers 5.x, whose from_pretrained takes `use_kernels` (and turns it on by default)."""
    import transformers

    return int(transformers.__version__.split(".")[0]) >= 5


def load_model(path: Path, cfg: RunConfig, plan: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    # plan.weights_dtype: bf16 on a bf16 GPU for LoRA (frozen base; PEFT keeps the adapters in fp32) and
    # full fine-tunes (AdamW on fp32 master copies, train.master_weights): half the memory, and attention
    # gets bf16 inputs, so SDPA can use its flash kernels (fp32 inputs of a GQA model fall back to the math
    # path, which materialises batch x heads x seq x seq scores: measured OOM at 4 x 2048 on an H100).
    kw: dict[str, Any] = {"dtype": getattr(torch, getattr(plan, "weights_dtype", "float32")),
                          "attn_implementation": "sdpa"}
    if _kernels_default():
        # transformers >= 5.2x swaps layers for kernels downloaded from the Hub by default when the
        # `kernels` package is present; on CUDA offline that failed at load ("Version 2 of
        # 'kernels-community/rotary' is not available in the local cache"; without `kernels`: "Kernels are
        # not available", measured on an H200). protege trains offline and reproducibly: no Hub code.
        kw["use_kernels"] = False
    if cfg.train.method == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise UserError("train.method: qlora needs bitsandbytes",
                            hint="pip install bitsandbytes (CUDA only), or use train.method: lora.") from None
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if plan.bf16 else torch.float16)
        kw["dtype"] = torch.bfloat16 if plan.bf16 else torch.float16
    model = AutoModelForCausalLM.from_pretrained(path, **kw)
    model.config.use_cache = False  # training: no KV cache (and packed/padded positions stay isolated)
    if cfg.train.method == "full":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.train.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=plan.gradient_checkpointing)
    lora = LoraConfig(r=cfg.train.lora_r, lora_alpha=cfg.train.lora_alpha, lora_dropout=cfg.train.lora_dropout,
                      target_modules=cfg.train.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def check_launch(method: str, base_dir: Path) -> None:
    """Refuse the one multi-GPU combination measured to fail: (Q)LoRA under FSDP on tied embeddings."""
    import os

    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() not in ("1", "true") or method == "full":
        return
    try:
        tied = json.loads((Path(base_dir) / "config.json").read_text()).get("tie_word_embeddings", False)
    except (OSError, ValueError):
        return
    if tied:
        raise UserError(
            f"train.method: {method} under FSDP: this student ties its input and output embeddings, and LoRA "
            "with FSDP fails on tied weights (FSDP1: use_orig_params assertion; FSDP2: 'FSDP requires a single "
            "root module'), measured on an H100 with torch 2.11 / accelerate 1.15",
            hint="Launch LoRA with the ddp preset: accelerate launch --config_file "
                 "$(python -c \"import protege.train.presets as p; print(p.preset_file('ddp'))\") "
                 "-m protege.train -c FILE. FSDP is for full fine-tunes.")


def training_args(cfg: RunConfig, store: RunStore, plan: Any, has_val: bool) -> Any:
    import importlib.util

    from transformers import TrainingArguments

    t = cfg.train
    eval_every = t.eval_every or (t.save_every if t.early_stopping_patience else None)
    do_eval = has_val and eval_every is not None
    if t.early_stopping_patience and not has_val:
        raise UserError("train.early_stopping_patience needs a validation split",
                        hint=f"Create {store.split('val')} (protege curate makes one) or unset the option.")
    # save_every being a multiple of eval_every is a config rule (config.TrainConfig).
    tb = importlib.util.find_spec("tensorboard") is not None
    return TrainingArguments(
        output_dir=str(store.checkpoints_dir),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.lr,
        lr_scheduler_type="cosine",
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        logging_steps=1,
        save_strategy="steps",
        save_steps=t.save_every,
        save_total_limit=None if t.early_stopping_patience else 2,
        eval_strategy="steps" if do_eval else "no",
        eval_steps=eval_every if do_eval else None,
        load_best_model_at_end=bool(t.early_stopping_patience),
        metric_for_best_model="eval_loss" if t.early_stopping_patience else None,
        greater_is_better=False if t.early_stopping_patience else None,
        prediction_loss_only=True,
        report_to=["tensorboard"] if tb else "none",
        disable_tqdm=True,
        remove_unused_columns=False,
        use_cpu=plan.device == "cpu",
        bf16=plan.autocast,  # bf16 full fine-tunes hold bf16 weights and run without autocast
        logging_nan_inf_filter=False,  # its isnan() check would wait for the device after every micro-batch
        activation_checkpointing=plan.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if plan.gradient_checkpointing else None,
        dataloader_pin_memory=plan.device != "cpu",
        seed=t.seed,
        save_only_model=False,
    )


def run(cfg: RunConfig, store: RunStore, resume: bool = False, console: Any = None) -> dict[str, Any]:
    """Train the student; returns a summary (paths, losses, steps, trained tokens/s, resumed step)."""
    from rich.console import Console

    console = console or Console(quiet=not is_main_process())  # under a launcher, rank 0 speaks
    examples, source, val_examples = _load_data(cfg, store)
    gate_text, governance_md = _governance(examples, cfg)
    ckpt = check_outputs(store, resume, console)
    if not is_main_process():  # the other ranks train; rank 0 alone writes the run directory and manifest
        return _train(cfg, store, examples, source, val_examples, ckpt, gate_text, governance_md, console)
    with store.stage("train", cfg.hash()) as info:
        result = _train(cfg, store, examples, source, val_examples, ckpt, gate_text, governance_md, console)
        info.update({k: v for k, v in result.items() if isinstance(v, (int, float, str)) or v is None})
    return result


def _train(cfg: RunConfig, store: RunStore, examples: list[Example], source: str, val_examples: list[Example],
           ckpt: str | None, gate_text: str, governance_md: str, console: Any) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer, EarlyStoppingCallback

    from protege import models
    from protege.train.data import ListDataset, PadCollator, tokenize_examples
    from protege.train.output import final_losses, model_card, save_student
    from protege.train.preflight import available_memory, check_tokenized, memory_estimate, render
    from protege.train.presets import resolve_plan
    from protege.train.trainer import TokenStats, metrics_callback, trainer_class, trim_metrics

    t = cfg.train
    plan = resolve_plan(t)
    base_dir = models.resolve(cfg.student.model)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    res = tokenize_examples(examples, tokenizer, t.prompt_format, t.max_seq_len)
    check_tokenized(res, len(examples), t.max_seq_len, source)
    val_res = tokenize_examples(val_examples, tokenizer, t.prompt_format, t.max_seq_len, keep_rendered=0)
    check_launch(t.method, base_dir)
    torch.manual_seed(t.seed)
    model = load_model(base_dir, cfg, plan)
    if plan.compile:
        from protege.train.speed import compile_decoder_layers

        n_compiled = compile_decoder_layers(model)
        console.print(f"torch.compile: {n_compiled} decoder layers (regional; the first steps compile)"
                      if n_compiled else "[yellow]note: train.compile found no decoder layers; running eager")
    if plan.token_budget and plan.token_budget < max(len(it.input_ids) for it in res.items):
        console.print(f"[yellow]note: examples longer than token_budget={plan.token_budget} go one per batch")
    est = memory_estimate(model, plan, t.method, t.lora_dropout)
    desc = f"{cfg.student.model} -> {base_dir} ({model.config.model_type})"
    text = render(res, len(examples), source, tokenizer, cfg, plan, est, available_memory(plan.device), desc,
                  gate_text)
    if is_main_process():
        store.ensure(store.student_dir)
        store.preflight.write_text(text, encoding="utf-8")
    console.print(text, markup=False, highlight=False)

    stats = TokenStats()
    resumed_step = 0
    if ckpt:
        state = json.loads((Path(ckpt) / "trainer_state.json").read_text())
        resumed_step = int(state.get("global_step", 0))
        console.print(f"[bold]Resuming from {ckpt} (step {resumed_step})[/bold]")
        if is_main_process():
            trim_metrics(store.metrics, resumed_step)
    from protege.train.speed import peak_bf16_flops, train_flops_per_token

    peak = peak_bf16_flops(torch.cuda.get_device_name()) if plan.device == "cuda" and plan.bf16 else None
    metrics_cb = metrics_callback(store.metrics, stats, console, show_progress=console.is_terminal,
                                  flops_per_token=train_flops_per_token(model), peak_flops=peak)
    callbacks = [metrics_cb]
    if t.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience))
    args = training_args(cfg, store, plan, bool(val_res.items))
    trainer = trainer_class()(
        model=model, args=args, train_dataset=ListDataset(res.items),
        eval_dataset=ListDataset(val_res.items) if val_res.items else None,
        data_collator=PadCollator(tokenizer.pad_token_id), processing_class=tokenizer, callbacks=callbacks,
        token_budget=plan.token_budget, fast_loss=plan.fast_loss, stats=stats, fused_loss=plan.fused_loss,
        master_weights=plan.master_weights, share_prefix=plan.share_prefix)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our callback prints/logs; no raw dicts on stdout
    out = trainer.train(resume_from_checkpoint=ckpt)
    if not trainer.is_world_process_zero():
        return {"steps": out.global_step}
    outputs = save_student(trainer.model, tokenizer, cfg, store, base_dir)
    losses = final_losses(store.metrics)
    resolved = {"train": t.model_dump(mode="json"), "plan": plan.to_dict(), "student_base": str(base_dir),
                "data": source, "examples": len(res.items), "training_args": args.to_dict()}
    store.train_config.write_text(json.dumps(resolved, indent=2, default=str), encoding="utf-8")
    store.write_config(cfg.to_yaml())
    store.model_card.write_text(model_card(cfg, store, source, plan.to_dict(), losses, governance_md, outputs),
                                encoding="utf-8")
    for p in (store.metrics, store.model_card, store.preflight, store.train_config):
        store.record_artifact(p, "train")
    return {**outputs, **losses, "resumed_from_step": resumed_step, "examples": len(res.items),
            "train_runtime_s": out.metrics.get("train_runtime"),
            **metrics_cb.throughput(), "fused_loss": plan.fused_loss if plan.fast_loss else None,
            "compile": plan.compile, "weights_dtype": plan.weights_dtype,
            "trained_tokens_per_s": round(stats.trained / out.metrics["train_runtime"], 2)
            if out.metrics.get("train_runtime") else None}


def main(argv: list[str] | None = None) -> int:
    """`python -m protege.train -c FILE [--set k=v ...] [--resume]` (also the `accelerate launch` entry)."""
    import argparse

    from protege.config import load_config

    p = argparse.ArgumentParser(prog="python -m protege.train")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--resume", action="store_true")
    a = p.parse_args(argv)
    try:
        cfg = load_config(a.config, a.overrides)
        result = run(cfg, RunStore(cfg.run_dir), resume=a.resume)
    except UserError as err:
        return report(err)
    print(json.dumps(result, default=str))
    return 0
