"""GPU training throughput and model FLOPs utilisation (MFU) of protege's single-GPU path.

A randomly initialised ~1.1B Llama-architecture model (TinyLlama-1.1B shape: hidden 2048, 22 layers,
32 heads / 4 KV heads, MLP 5632, vocab 32000; config only, nothing downloaded), FULL fine-tune, bf16
weights (`--autocast`: fp32 weights + bf16 autocast instead), AdamW (fused), seq 2048,
random token ids (no data files), all positions trained, through protege's Trainer subclass (token-budget
batches + loss on trained positions, chunked). Valid for speed and memory, not for quality.

    MFU = 6 * N * tokens/s / peak_flops        (N = parameters doing matmuls: all but the input embedding;
                                                attention score FLOPs are reported apart, not counted)

Peak: H100 SXM bf16 dense 989 TFLOP/s (H200 has the same peak); pass --peak-tflops for other cards. The
card name is printed from torch.cuda.get_device_name(). Goal in issue 5: >= 40% on one H100.

    python benchmarks/bench_gpu_mfu.py --batch 8 --compile   # 41.7% MFU on one H100 (docs/benchmarks.md)
    python benchmarks/bench_gpu_mfu.py                 # eager, batch 4: ~20 s on one H100
    python benchmarks/bench_gpu_mfu.py --tiny --cpu    # seconds: checks the script itself on a CPU
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4, help="sequences per micro-batch")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing (memory for speed)")
    p.add_argument("--naive-loss", action="store_true", help="the model's own full-logits loss")
    p.add_argument("--autocast", action="store_true",
                   help="fp32 weights + bf16 autocast (default: bf16 weights, as torchtune's full fine-tunes)")
    p.add_argument("--compile", action="store_true", help="torch.compile each decoder layer (regional compile)")
    p.add_argument("--tiny", action="store_true", help="a tiny model, to test the script")
    p.add_argument("--cpu", action="store_true")
    a = p.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback, TrainingArguments

    from protege.train.data import ListDataset, PadCollator, Tokenized
    from protege.train.trainer import TokenStats, trainer_class

    cuda = torch.cuda.is_available() and not a.cpu
    if a.tiny:
        cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=1000, max_position_embeddings=a.seq)
    else:
        cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                          num_key_value_heads=4, vocab_size=32000, max_position_embeddings=4096,
                          tie_word_embeddings=False, rope_theta=10000.0)
    cfg.use_cache = False
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = LlamaForCausalLM(cfg)
    if not a.autocast:
        model = model.to(torch.bfloat16)
    model.config._attn_implementation = "sdpa"
    if a.compile:  # regional compilation: one compiled graph reused by all identical decoder layers
        for layer in model.model.layers:
            layer.compile()
    n_all = sum(p.numel() for p in model.parameters())
    n_mm = n_all - model.get_input_embeddings().weight.numel()

    n_seqs = a.batch * (a.steps + 1)
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(n_seqs):
        ids = torch.randint(0, cfg.vocab_size, (a.seq,), generator=g).tolist()
        items.append(Tokenized(i, ids, list(ids), full_length=a.seq))
    stats = TokenStats()
    marks: dict[str, float] = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            if state.global_step == a.warmup:
                if cuda:
                    torch.cuda.synchronize()
                marks["t0"], marks["tok0"] = time.perf_counter(), stats.real

        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            if cuda:
                torch.cuda.synchronize()
            marks["t1"] = time.perf_counter()

    args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="mfu_"), per_device_train_batch_size=a.batch,
                             max_steps=a.steps, learning_rate=1e-5, logging_steps=1000, save_strategy="no",
                             report_to="none", disable_tqdm=True, remove_unused_columns=False, use_cpu=not cuda,
                             bf16=a.autocast, optim="adamw_torch_fused" if cuda else "adamw_torch",
                             activation_checkpointing=a.checkpointing, dataloader_pin_memory=cuda,
                             activation_checkpointing_kwargs={"use_reentrant": False} if a.checkpointing else None)
    trainer = trainer_class()(model=model, args=args, train_dataset=ListDataset(items),
                              data_collator=PadCollator(0), callbacks=[Timer()],
                              token_budget=a.batch * a.seq, fast_loss=not a.naive_loss, stats=stats)
    trainer.train()
    dt = marks["t1"] - marks["t0"]
    tok_s = (stats.real - marks["tok0"]) / dt
    attn = 12 * cfg.num_hidden_layers * cfg.hidden_size * a.seq / 2  # causal score+value FLOPs per token (fwd+bwd)
    out = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "params": n_all, "matmul_params": n_mm, "seq": a.seq, "batch": a.batch,
        "timed_steps": a.steps - a.warmup, "seconds": round(dt, 2), "tokens_per_s": round(tok_s, 1),
        "model_tflops_per_s": round(6 * n_mm * tok_s / 1e12, 1),
        "mfu": round(6 * n_mm * tok_s / (a.peak_tflops * 1e12), 4),
        "mfu_with_attention": round((6 * n_mm + attn) * tok_s / (a.peak_tflops * 1e12), 4),
        "peak_tflops": a.peak_tflops,
        "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None,
        "checkpointing": a.checkpointing, "fast_loss": not a.naive_loss, "compile": a.compile, "weights": "fp32+autocast" if a.autocast else "bf16",
        "torch": torch.__version__,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
