"""CPU training throughput: protege's CPU defaults vs the naive baseline of Alpaca's train.py.

Same model (SmolLM2-135M-Instruct with protege's default LoRA: r16/alpha32 on all linear layers, AdamW,
fp32), same data, same machine, one invocation; each variant runs in its own subprocess so its peak RSS
(VmHWM) is its own. Both variants train ONE EPOCH over the SAME records (the first `--records` of
../shared/data/alpaca/alpagasus_random_9k.json as chat, loss on assistant tokens only), so both see the
identical set of real and trained tokens (the script checks this) and the tokens/s ratio is exactly the
ratio of the two training times. Before the timed epoch each variant runs one untimed forward/backward
on other records (allocator and kernels warm), then starts from a fresh optimizer.

- naive:   transformers Trainer as Alpaca's train.py uses it: batch 8, random order, pad to the longest in
           the batch, loss via `labels=` (full logits). Runs through protege's Trainer subclass with both
           protege features off (token_budget=None -> Trainer's own RandomSampler dataloader;
           fast_loss=False -> Trainer's own compute_loss); the subclass only counts tokens.
- protege: `protege.train` CPU defaults (train.presets.resolve_plan): <= 8 sequences and <= token budget
           padded tokens per batch, length-grouped, loss on trained positions only.

Metric: trained (label) and real (non-padding) tokens per second over the epoch, padded/real tokens,
peak RSS. `--dtype fp32|bf16|auto` (default auto = the cpu preset's choice: bf16 autocast only where the CPU
has avx512_bf16/AMX) applies to both variants; each row says which dtype ran (`dtype`) and whether the CPU
has native bf16 (`cpu_native_bf16`), with the weights' dtype and whether the shared prefix ran. What-ifs on
protege's plan (issue 14): `--base-dtype fp32|bf16` (the frozen LoRA base), `--share-prefix on|off`,
`--token-budget N`; the naive variant always keeps fp32 weights (Alpaca's use, autocast only). Run:

    .venv/bin/python benchmarks/bench_train.py                # 128 records: ~6 min on 2 cores
    .venv/bin/python benchmarks/bench_train.py --dtype bf16   # bf16 autocast for both variants
    # any model dir / data file protege reads (the GPU session uses random SmolLM2-shaped weights):
    python benchmarks/bench_train.py --model DIR --data FILE.jsonl --records 64 --threads 8
    # the bf16-CPU session on the device machine's host (issue 14): bash benchmarks/cpu_bf16_session.sh
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


DTYPES = {"fp32": False, "bf16": True, "auto": None}


def child(variant: str, n_records: int, budget: int | None, lora_dropout: float | None = None,
          dtype: str = "auto", model_spec: str | None = None, data: str | None = None,
          profile_steps: int = 0, base_dtype: str = "auto", share_prefix: str = "auto") -> dict:
    import tempfile

    import torch
    from transformers import AutoTokenizer, TrainerCallback

    from protege import models
    from protege.config import RunConfig
    from protege.records import from_alpaca, read_examples
    from protege.store import RunStore
    from protege.train.stage import load_model, training_args
    from protege.train.data import ListDataset, PadCollator, tokenize_examples
    from protege.train.loss import trained_positions_loss
    from protege.train.presets import cpu_has_bf16, resolve_plan
    from protege.train.trainer import TokenStats, trainer_class

    if data:
        every = read_examples(data)
    else:
        every = [from_alpaca(r) for r in json.loads(DATA.read_text())[:n_records + 64]]
    examples, warm_examples = every[:n_records], every[n_records:n_records + 64]
    cfg = RunConfig(run_dir=tempfile.mkdtemp(prefix="bench_train_"))
    if model_spec:
        cfg.student.model = model_spec
    cfg.train.bf16 = DTYPES[dtype]
    cfg.train.epochs = 1
    cfg.train.save_every = 100_000
    cfg.train.preset = "cpu"
    if variant == "naive":
        cfg.train.fast_loss = False
    if budget:
        cfg.train.token_budget = budget
    if lora_dropout is not None:
        cfg.train.lora_dropout = lora_dropout
    plan = resolve_plan(cfg.train)
    if variant == "naive":  # Alpaca's use: fp32 weights (+ the Trainer's autocast when bf16), no extras
        plan.token_budget = None
        plan.weights_dtype = "float32"
        plan.share_prefix = False
    else:  # what-ifs on protege's plan (issue 14): the frozen base's dtype, the shared prefix
        if base_dtype != "auto":
            plan.weights_dtype = {"fp32": "float32", "bf16": "bfloat16"}[base_dtype]
        if share_prefix != "auto":
            plan.share_prefix = share_prefix == "on"
    base = models.resolve(cfg.student.model)
    tok = AutoTokenizer.from_pretrained(base)
    res = tokenize_examples(examples, tok, "chat", cfg.train.max_seq_len)
    torch.manual_seed(0)
    model = load_model(base, cfg, plan)
    collate = PadCollator(tok.pad_token_id)

    # untimed warm-up: one forward/backward of a mid-length batch of other records, then clean grads
    warm = sorted(tokenize_examples(warm_examples, tok, "chat", cfg.train.max_seq_len).items,
                  key=lambda it: len(it.input_ids))[24:30]
    wb = collate([{"input_ids": it.input_ids, "labels": it.labels} for it in warm])
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=plan.autocast):
        loss = trained_positions_loss(model, wb, share_prefix=plan.share_prefix) if plan.fast_loss \
            else model(**wb).loss
    loss.backward()
    model.zero_grad(set_to_none=True)

    stats = TokenStats()
    marks: dict[str, float] = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            marks.setdefault("t0", time.perf_counter())

        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            marks["t1"] = time.perf_counter()

    args = training_args(cfg, RunStore(cfg.run_dir), plan, has_val=False)
    args.report_to = []
    if profile_steps:
        args.max_steps = profile_steps
    trainer = trainer_class()(model=model, args=args, train_dataset=ListDataset(res.items),
                              data_collator=collate, processing_class=tok,
                              callbacks=[Timer()], token_budget=plan.token_budget, fast_loss=plan.fast_loss,
                              stats=stats, share_prefix=plan.share_prefix)
    prof_rows: list = []
    if profile_steps:  # per-op profile of the first steps (torch.profiler, CPU self time)
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = trainer.train()
        ev = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in ev) or 1
        prof_rows = [(e.key, round(e.self_cpu_time_total / 1e3, 1), round(100 * e.self_cpu_time_total / total, 1),
                      e.count) for e in ev[:22]]
        prof_rows.append(("TOTAL self CPU", round(total / 1e3, 1), 100.0, sum(e.count for e in ev)))
    else:
        out = trainer.train()
    dt = marks["t1"] - marks["t0"]
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM"))
    return {"variant": variant, "records": n_records, "steps": out.global_step, "seconds": round(dt, 1),
            "trained_tokens": stats.trained, "real_tokens": stats.real, "padded_tokens": stats.padded,
            "trained_tok_s": round(stats.trained / dt, 1), "real_tok_s": round(stats.real / dt, 1),
            "peak_rss_gib": round(hwm / 2**20, 2), "final_loss": out.training_loss,
            "token_budget": plan.token_budget, "fast_loss": plan.fast_loss, "threads": torch.get_num_threads(),
            "lora_dropout": cfg.train.lora_dropout, "dtype": "bf16" if plan.autocast else "fp32",
            "weights_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "adapter_dtype": str(next(p for p in model.parameters() if p.requires_grad).dtype).replace("torch.", ""),
            "share_prefix": plan.share_prefix, "torch": torch.__version__,
            "cpu_native_bf16": cpu_has_bf16(), **({"profile": prof_rows} if prof_rows else {})}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--variant", choices=["naive", "protege"])
    p.add_argument("--variants", default="naive,protege")
    p.add_argument("--records", type=int, default=128)
    p.add_argument("--token-budget", type=int, default=None, help="what-if: another token budget (protege)")
    p.add_argument("--lora-dropout", type=float, default=None, help="what-if: another lora_dropout (both variants)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="auto",
                   help="fp32, bf16 (autocast), auto (the cpu preset: bf16 only with avx512_bf16/AMX)")
    p.add_argument("--model", default=None, help="student model spec or dir (default: smollm2-135m-instruct)")
    p.add_argument("--data", default=None, help="any file protege reads (default: the Alpaca subset)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--base-dtype", choices=["auto", "fp32", "bf16"], default="auto",
                   help="what-if (protege): the frozen LoRA base's dtype (auto: the preset's plan)")
    p.add_argument("--share-prefix", choices=["auto", "on", "off"], default="auto",
                   help="what-if (protege): compute the batch's common prefix once (auto: the preset's plan)")
    p.add_argument("--label", default=None, help="a name for this invocation, copied into each row")
    p.add_argument("--profile-steps", type=int, default=0,
                   help="profile the first N steps per variant (torch.profiler; top ops by CPU self time)")
    a = p.parse_args()
    if not a.data and not DATA.exists():
        sys.exit(f"data not found: {DATA}")
    if a.variant:
        if a.threads:
            import torch

            torch.set_num_threads(a.threads)
        print("RESULT " + json.dumps(child(a.variant, a.records, a.token_budget, a.lora_dropout, a.dtype,
                                           a.model, a.data, a.profile_steps, a.base_dtype,
                                           a.share_prefix)), flush=True)
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    rows = []
    for v in a.variants.split(","):
        cmd = [sys.executable, __file__, "--variant", v, "--records", str(a.records)] \
            + (["--token-budget", str(a.token_budget)] if a.token_budget else []) \
            + (["--lora-dropout", str(a.lora_dropout)] if a.lora_dropout is not None else []) \
            + ["--dtype", a.dtype] + (["--model", a.model] if a.model else []) \
            + (["--data", a.data] if a.data else []) + (["--threads", str(a.threads)] if a.threads else []) \
            + (["--profile-steps", str(a.profile_steps)] if a.profile_steps else []) \
            + ["--base-dtype", a.base_dtype, "--share-prefix", a.share_prefix]
        t = time.time()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{v} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        row = json.loads(line[7:])
        row["wall_s"] = round(time.time() - t, 1)
        row["load_avg_after"] = os.getloadavg()[0]
        if a.label:
            row["label"] = a.label
        rows.append(row)
        prof = row.pop("profile", None)
        print(json.dumps(row), flush=True)
        if prof:
            print(f"top ops, {v}, {row['dtype']}, weights {row['weights_dtype']}, {row['steps']} steps in "
                  f"{row['seconds']} s (self CPU ms, %, calls):")
            for name, ms, pct, n in prof:
                print(f"  {name:48s} {ms:10.1f} {pct:5.1f}% {n:6d}")
    if not a.profile_steps and len({(r["trained_tokens"], r["real_tokens"]) for r in rows}) != 1:
        sys.exit("the variants saw different tokens: the comparison would not be fair")
    base = next((r for r in rows if r["variant"] == "naive"), rows[0])
    print(f"\ncpu_native_bf16: {rows[0]['cpu_native_bf16']}, threads: {rows[0]['threads']}")
    print("\n| variant | dtype | seconds | trained tok/s | real tok/s | x naive | padded/real | peak RSS (VmHWM) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['dtype']} | {r['seconds']} | {r['trained_tok_s']} | {r['real_tok_s']} | "
              f"{base['seconds'] / r['seconds']:.2f} | {r['padded_tokens'] / r['real_tokens']:.2f} | "
              f"{r['peak_rss_gib']} GiB |")


if __name__ == "__main__":
    main()
