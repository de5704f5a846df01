"""CPU training throughput: protege's CPU defaults vs the naive baseline of Alpaca's train.py.

Same model (SmolLM2-135M-Instruct, LoRA r16/alpha32/dropout0.05 on all linear layers, AdamW, fp32), same
data (the first 512 records of ../shared/data/alpaca/alpagasus_random_9k.json as chat, loss on assistant
tokens only), same machine, one invocation; each variant runs in its own subprocess so its peak RSS
(VmHWM) is its own.

- naive:   transformers Trainer as Alpaca's train.py uses it: batch 8, random order, pad to the longest in
           the batch, loss via `labels=` (full logits). Runs through protege's Trainer subclass with both
           protege features off (token_budget=None -> Trainer's own RandomSampler dataloader;
           fast_loss=False -> Trainer's own compute_loss); the subclass only counts tokens.
- protege: `protege.train` CPU defaults (train_presets.resolve_plan): <= 8 sequences and <= token budget
           padded tokens per batch, length-grouped, loss on trained positions only.

Metric: trained (label) tokens per second over the timed steps (after `--warmup` steps), and the
padded/real token counts. Run:

    .venv/bin/python benchmarks/bench_train.py --steps 24 --warmup 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "alpaca" / "alpagasus_random_9k.json"


def child(variant: str, steps: int, warmup: int, n_records: int, budget: int | None,
          lora_dropout: float | None = None) -> dict:
    import torch
    from transformers import AutoTokenizer, TrainerCallback

    from protege import models
    from protege.config import RunConfig
    from protege.records import from_alpaca
    from protege.train import _load_model, _training_args
    from protege.train_data import ListDataset, PadCollator, tokenize_examples
    from protege.train_presets import resolve_plan
    from protege.train_trainer import TokenStats, trainer_class
    from protege.store import RunStore
    import tempfile

    recs = json.loads(DATA.read_text())[:n_records]
    examples = [from_alpaca(r) for r in recs]
    cfg = RunConfig(run_dir=tempfile.mkdtemp(prefix="bench_train_"))
    cfg.train.max_steps = steps
    cfg.train.save_every = 10_000
    cfg.train.preset = "cpu"
    if variant == "naive":
        cfg.train.fast_loss = False
    if budget:
        cfg.train.token_budget = budget
    if lora_dropout is not None:
        cfg.train.lora_dropout = lora_dropout
    plan = resolve_plan(cfg.train)
    if variant == "naive":
        plan.token_budget = None
    base = models.resolve(cfg.student.model)
    tok = AutoTokenizer.from_pretrained(base)
    res = tokenize_examples(examples, tok, "chat", cfg.train.max_seq_len)
    torch.manual_seed(0)
    model = _load_model(base, cfg, plan)
    stats = TokenStats()
    marks: dict[str, float] = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            if state.global_step == warmup:
                marks["t0"] = time.perf_counter()
                marks["trained0"], marks["real0"], marks["padded0"] = stats.trained, stats.real, stats.padded

        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            marks["t1"] = time.perf_counter()

    args = _training_args(cfg, RunStore(cfg.run_dir), plan, has_val=False)
    args.report_to = []
    trainer = trainer_class()(model=model, args=args, train_dataset=ListDataset(res.items),
                              data_collator=PadCollator(tok.pad_token_id), processing_class=tok,
                              callbacks=[Timer()], token_budget=plan.token_budget, fast_loss=plan.fast_loss,
                              stats=stats)
    out = trainer.train()
    dt = marks["t1"] - marks["t0"]
    trained = stats.trained - marks["trained0"]
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM"))
    return {"variant": variant, "timed_steps": steps - warmup, "seconds": round(dt, 1),
            "trained_tokens": trained, "real_tokens": stats.real - marks["real0"],
            "padded_tokens": stats.padded - marks["padded0"], "trained_tok_s": round(trained / dt, 1),
            "real_tok_s": round((stats.real - marks["real0"]) / dt, 1), "peak_rss_gib": round(hwm / 2**20, 2),
            "final_loss": out.training_loss, "token_budget": plan.token_budget, "fast_loss": plan.fast_loss,
            "threads": torch.get_num_threads(), "lora_dropout": cfg.train.lora_dropout}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--variant", choices=["naive", "protege"])
    p.add_argument("--variants", default="naive,protege")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--records", type=int, default=512)
    p.add_argument("--token-budget", type=int, default=None)
    p.add_argument("--lora-dropout", type=float, default=None, help="what-if: another lora_dropout (both variants)")
    a = p.parse_args()
    if not DATA.exists():
        sys.exit(f"data not found: {DATA}")
    if a.variant:
        print("RESULT " + json.dumps(child(a.variant, a.steps, a.warmup, a.records, a.token_budget,
                                                  a.lora_dropout)), flush=True)
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    rows = []
    for v in a.variants.split(","):
        cmd = [sys.executable, __file__, "--variant", v, "--steps", str(a.steps), "--warmup", str(a.warmup),
               "--records", str(a.records)] + (["--token-budget", str(a.token_budget)] if a.token_budget else []) \
            + (["--lora-dropout", str(a.lora_dropout)] if a.lora_dropout is not None else [])
        t = time.time()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{v} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        row = json.loads(line[7:])
        row["wall_s"] = round(time.time() - t, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = next((r for r in rows if r["variant"] == "naive"), rows[0])
    print("\n| variant | trained tok/s | x naive | real tok/s | padded/real | peak RSS (VmHWM) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['trained_tok_s']} | {r['trained_tok_s'] / base['trained_tok_s']:.2f} | "
              f"{r['real_tok_s']} | {r['padded_tokens'] / r['real_tokens']:.2f} | {r['peak_rss_gib']} GiB |")


if __name__ == "__main__":
    main()
