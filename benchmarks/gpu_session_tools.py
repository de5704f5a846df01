"""Python steps of benchmarks/gpu_session.sh (one device call): build the model and data, check the liger
loss against ours, and collect the runs' summaries into one table.

    python benchmarks/gpu_session_tools.py build W [--small]    # random Llama + synthetic data + configs
    python benchmarks/gpu_session_tools.py parity [--small]     # liger vs protege loss/grads, same batch
    python benchmarks/gpu_session_tools.py cpu-data FILE        # Alpaca-length synthetic chat records
    python benchmarks/gpu_session_tools.py cpu-model DIR [--small]  # random SmolLM2-135M-shaped fp32 model
    python benchmarks/gpu_session_tools.py table OUT            # summary table of OUT/train_*.json

The model: TinyLlama-1.1B's shape (hidden 2048, 22 layers, 32 heads / 4 KV heads, MLP 5632) with
SmolLM2's tokenizer, so vocab 49,152 (1.17 B parameters), randomly initialised on the device and saved
in bf16 (weights are too big to carry). The data: chat records of exactly 2048 tokens whose assistant
turn is random common words, so ~99% of positions are trained and batches need no padding (they run
without an attention mask); `data_short.jsonl`: the same at 512 tokens, for the precision runs. Valid for
speed and memory, not for quality.
`--small`: a 2-layer model and 128-token examples, to test the session script on a CPU.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = ("the of and to in is that for it as with was on be by at this are from or have an they which one "
         "you were all we there can been has more if will would about their when what so no into out up time "
         "model data train student teacher answer question language learn small large fast slow memory token "
         "river mountain city garden window paper music light water stone forest bridge market engine cloud "
         "because however although therefore while before after during between without within under over").split()


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def build(w: Path, small: bool) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from protege.records import Example, write_examples

    tok = AutoTokenizer.from_pretrained(REPO / ".gpu" / "tok")
    common = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, tie_word_embeddings=False, rope_theta=10000.0)
    if small:
        cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=512, **common)
    else:
        cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                          num_key_value_heads=4, max_position_embeddings=4096, **common)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg)
    m = w / "model"
    model.to(torch.bfloat16).save_pretrained(m)
    tok.save_pretrained(m)
    if (REPO / ".gpu" / "tok" / "generation_config.json").exists():
        shutil.copy(REPO / ".gpu" / "tok" / "generation_config.json", m)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    seq = 128 if small else 2048
    lengths = {}
    for name, n in (("data.jsonl", seq), ("data_short.jsonl", 64 if small else 512)):
        lengths[name] = exact_length_data(tok, w / name, n)
    (w / "base.yaml").write_text(
        f"run_dir: {w}/run\nstudent: {{model: {m}}}\n"
        f"train: {{data: {w}/data.jsonl, max_seq_len: {seq}, batch_size: 8, max_steps: 30, "
        f"save_every: 100000, warmup_ratio: 0, lr: 1.0e-5}}\n", encoding="utf-8")
    print(json.dumps({"model": str(m), "params": n_params, "vocab": len(tok), "token_lengths": lengths}))


def exact_length_data(tok, path: Path, seq: int, n: int = 128) -> dict[int, int]:  # type: ignore[no-untyped-def]
    """`n` chat records of exactly `seq` tokens each (so batches need no padding and nothing is cut).

    Every word of WORDS is one token after a space in SmolLM2's vocabulary, so the assistant turn gets
    `seq - template tokens` words; the lengths protege's own tokenizer step sees are returned (length:
    count) and should all be `seq`.
    """
    from protege.records import Example, write_examples
    from protege.train.data import tokenize_examples

    rng = random.Random(seq)
    prompt = [{"role": "user", "content": "Write about the river."}]
    overhead = len(tokenize_examples([Example(messages=prompt + [{"role": "assistant", "content": "x"}], meta={})],
                                     tok, "chat", 10 * seq).items[0].input_ids) - 1
    ex = [Example(messages=prompt + [{"role": "assistant", "content": words(rng, seq - overhead)}], meta={})
          for _ in range(n)]
    write_examples(path, ex)
    res = tokenize_examples(ex, tok, "chat", seq)
    counts: dict[int, int] = {}
    for it in res.items:
        counts[len(it.input_ids)] = counts.get(len(it.input_ids), 0) + 1
    return counts


def parity(small: bool) -> int:
    """liger's fused linear cross-entropy vs ours on one batch: loss, dL/dh, dL/dW (bf16, like training)."""
    import torch

    from protege.train.loss import fused_linear_cross_entropy_sum, liger_linear_cross_entropy_sum

    dev = "cuda"
    n, h, v = (512, 64, 1000) if small else (16384, 2048, 49152)
    g = torch.Generator(device=dev).manual_seed(0)
    hid = (torch.randn(n, h, device=dev, generator=g) * 1.0).to(torch.bfloat16).requires_grad_()
    w = (torch.randn(v, h, device=dev, generator=g) * 0.02).to(torch.bfloat16).requires_grad_()
    t = torch.randint(0, v, (n,), device=dev, generator=g)
    ref = torch.nn.functional.cross_entropy((hid.double() @ w.double().T), t, reduction="sum")
    rh, rw = torch.autograd.grad(ref, (hid, w))
    out = {"n": n, "hidden": h, "vocab": v, "ref_loss": float(ref)}
    for name, fn in (("protege", lambda: fused_linear_cross_entropy_sum(hid, w, t, 8192)),
                     ("liger", lambda: liger_linear_cross_entropy_sum(hid, w, t))):
        loss = fn()
        gh, gw = torch.autograd.grad(loss, (hid, w))
        for _ in range(3):  # warm (Triton compile), then time
            fn().backward()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(10):
            l2 = fn()
            torch.autograd.grad(l2, (hid, w))
        end.record()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        torch.autograd.grad(fn(), (hid, w))
        out[name] = {
            "loss": float(loss), "loss_rel_err": abs(float(loss) - float(ref)) / float(ref),
            "grad_h_rel_err": float((gh.double() - rh).norm() / rh.norm()),
            "grad_w_rel_err": float((gw.double() - rw).norm() / rw.norm()),
            "ms_fwd_bwd": round(start.elapsed_time(end) / 10, 2),
            "extra_peak_gib": round((torch.cuda.max_memory_allocated() - base) / 2**30, 2)}
    print(json.dumps(out, indent=1))
    ok = all(out[k]["loss_rel_err"] < 2e-3 and out[k]["grad_h_rel_err"] < 2e-2 and out[k]["grad_w_rel_err"] < 2e-2
             for k in ("protege", "liger"))
    print("PARITY", "ok" if ok else "FAILED")
    return 0 if ok else 1


def cpu_data(path: Path) -> None:
    """Alpaca-like lengths: instruction 8-40 words, output 10-250 words (CPU benchmark without Alpaca)."""
    from protege.records import Example, write_examples

    rng = random.Random(1)
    ex = [Example(messages=[{"role": "user", "content": words(rng, rng.randint(8, 40))},
                            {"role": "assistant", "content": words(rng, int(rng.triangular(10, 250, 60)))}],
                  meta={}) for _ in range(256)]
    write_examples(path, ex)


def cpu_model(d: Path, small: bool) -> None:
    """Random weights of SmolLM2-135M's shape (.gpu/smollm2_config.json) + its tokenizer, saved in fp32 (the
    real weights are too big to carry to the device). `--small`: 2 layers of width 64, for a local check."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / ".gpu" / "smollm2_config.json", d / "config.json")
    for f in (REPO / ".gpu" / "tok").iterdir():
        shutil.copy(f, d / f.name)
    cfg = AutoConfig.from_pretrained(d)
    if small:
        cfg.update(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=16))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(d)
    print(json.dumps({"cpu_model": str(d), "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size}))


def table(out: Path) -> None:
    rows = []
    for f in sorted(out.glob("train_*.json")):
        try:
            r = json.loads(f.read_text())
        except ValueError:
            continue
        rows.append((f.stem[6:], r))
    print("| run | tokens/s | MFU | from step | first loss | final loss | compile | loss kernel | weights |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r.get('tokens_per_s')} | {r.get('mfu')} | {r.get('throughput_from_step')} | "
              f"{r.get('first_loss')} | {r.get('final_loss')} | {r.get('compile')} | {r.get('fused_loss')} | "
              f"{r.get('weights_dtype')} |")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["build", "parity", "cpu-data", "cpu-model", "table"])
    p.add_argument("path", nargs="?")
    p.add_argument("--small", action="store_true")
    a = p.parse_args()
    if a.cmd == "build":
        build(Path(a.path), a.small)
    elif a.cmd == "parity":
        return parity(a.small)
    elif a.cmd == "cpu-data":
        cpu_data(Path(a.path))
    elif a.cmd == "cpu-model":
        cpu_model(Path(a.path), a.small)
    else:
        table(Path(a.path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
