"""Preflight: what is about to be trained, printed before step 1 and saved to `student/preflight.txt`.

Refuses (UserError) what would silently waste a run: examples with nothing to learn (never dropped
quietly, unlike FastChat's "tokenization mismatch" skips), a `max_seq_len` that truncates every
example. Warns, with the setting to change, when the memory estimate exceeds free memory.
"""

from __future__ import annotations

import statistics
from typing import Any

from protege.errors import UserError
from protege.train.data import TokenizeResult, render_marked

MiB = 1024 ** 2
GiB = 1024 ** 3
RUNTIME_OVERHEAD = 400 * MiB  # torch + transformers + PEFT + Python: RSS before the weights are touched


def check_tokenized(res: TokenizeResult, total: int, max_seq_len: int, source: str) -> None:
    """Refuse data that cannot be trained as asked; the message lists the offending examples."""
    if res.problems:
        shown = "\n".join(f"  - example #{i}: {why}" for i, why in res.problems[:20])
        more = f"\n  ... and {len(res.problems) - 20} more" if len(res.problems) > 20 else ""
        raise UserError(
            f"{source}: {len(res.problems)} of {total} examples have nothing to train on:\n{shown}{more}",
            hint="Fix or remove them (protege curate drops such records with a reason), then run again.",
        )
    if res.lengths and res.truncated == len(res.lengths):
        raise UserError(
            f"{source}: train.max_seq_len={max_seq_len} truncates EVERY example "
            f"(shortest is {min(res.lengths)} tokens, median {int(statistics.median(res.lengths))})",
            hint=f"Raise train.max_seq_len (e.g. --set train.max_seq_len={_round_up(max(res.lengths))}).",
        )
    if not res.items:
        raise UserError(f"{source}: no example is left to train on after truncation at {max_seq_len} tokens",
                        hint="Raise train.max_seq_len.")


def _round_up(n: int) -> int:
    p = 64
    while p < n:
        p *= 2
    return p


def activation_bytes_per_token(config: Any, method: str, checkpointing: bool, fast_loss: bool,
                               dtype_bytes: int = 4, lora_dropout: float = 0.0) -> int:
    """Rough activation memory per (padded) token, calibrated on SmolLM2-135M (see docs/training.md).

    Per layer we keep about 17 hidden-sized and 6 intermediate-sized tensors (norms, q/k/v/o inputs,
    rotary, attention, MLP gate/up/act/down); with checkpointing only the layer inputs. LoRA dropout adds
    its own copy (+ mask) of each adapted layer's input. Measured on SmolLM2-135M, 2 x 416 tokens: 2.3 MiB
    per token without dropout, 3.2 MiB with 0.05. The naive loss adds ~3 vocab-sized float32 rows per token.
    """
    h = getattr(config, "hidden_size", 1024)
    inter = getattr(config, "intermediate_size", 4 * h)
    layers = getattr(config, "num_hidden_layers", 24)
    vocab = getattr(config, "vocab_size", 32000)
    per_layer = (2 * h) if checkpointing else (17 * h + 6 * inter)
    out = layers * per_layer * dtype_bytes
    if method != "full" and lora_dropout > 0 and not checkpointing:
        out += layers * (6 * h + inter) * (dtype_bytes + 1)
    if not fast_loss:
        out += 3 * vocab * 4
    return out


def memory_estimate(model: Any, plan: Any, method: str, lora_dropout: float = 0.0) -> dict[str, int]:
    """Bytes for weights, gradients, optimizer state, activations at the token budget."""
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    wbytes = next(model.parameters()).element_size()
    half = plan.bf16 and (plan.device == "cuda" or getattr(plan, "weights_dtype", "float32") == "bfloat16")
    act_tok = activation_bytes_per_token(model.config, method, plan.gradient_checkpointing, plan.fast_loss,
                                         2 if half else 4, lora_dropout)
    est = {
        "weights": params * wbytes,
        "gradients": trainable * 4,
        "optimizer": trainable * 8,  # AdamW: two fp32 moments
        "activations_per_token": act_tok,
        "activations": act_tok * (plan.token_budget or 4096),
        "params": params,
        "trainable": trainable,
    }
    est["total"] = est["weights"] + est["gradients"] + est["optimizer"] + est["activations"]
    if plan.device == "cpu":
        est["total"] += RUNTIME_OVERHEAD
    return est


def available_memory(device: str) -> tuple[int, str]:
    if device == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return free, "free GPU memory"
    import psutil

    return psutil.virtual_memory().available, "available RAM"


def dtype_note(plan: Any, method: str) -> str:
    """What bf16 means for this run: which weights are bf16, and why on a CPU."""
    if not plan.bf16:
        return ""
    weights = getattr(plan, "weights_dtype", "float32")
    if method == "qlora":
        return f" (4-bit base computing in {weights}, adapters fp32)"
    if method == "lora" and weights == "bfloat16":
        why = ""
        if plan.device == "cpu":
            from protege.train.presets import cpu_has_bf16

            why = ("; this CPU has native bf16 (avx512_bf16/AMX)" if cpu_has_bf16()
                   else "; this CPU has no native bf16: emulated, slow")
        return f" (autocast; frozen base in bf16, adapters fp32{why})"
    if method == "full" and weights == "bfloat16":
        return " (bf16 weights" + (", fp32 master copies in AdamW)" if getattr(plan, "master_weights", False)
                                   else ")")
    return f" (autocast over {weights} weights)" if getattr(plan, "autocast", False) else f" ({weights} weights)"


def _fmt(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def render(res: TokenizeResult, total: int, source: str, tokenizer: Any, cfg: Any, plan: Any,
           est: dict[str, int], free: tuple[int, str], model_desc: str, gate_text: str) -> str:
    """The preflight report as text."""
    t = cfg.train
    lens = sorted(res.lengths)
    trained = sum(it.trained for it in res.items)
    real = sum(len(it.input_ids) for it in res.items)
    q = lambda f: lens[min(len(lens) - 1, int(f * len(lens)))]  # noqa: E731
    lines = [
        "protege train: preflight",
        f"model     {model_desc}",
        f"method    {t.method}" + (f" (r={t.lora_r}, alpha={t.lora_alpha}, dropout={t.lora_dropout}, "
                                    f"targets={t.target_modules})" if t.method != "full" else ""),
        f"trainable {est['trainable']:,} of {est['params']:,} parameters "
        f"({100 * est['trainable'] / max(1, est['params']):.2f}%)",
        f"hardware  preset {plan.preset} on {plan.device}; bf16={plan.bf16}{dtype_note(plan, t.method)}; "
        f"gradient checkpointing="
        f"{plan.gradient_checkpointing}; micro-batches <= {t.batch_size} sequences and <= "
        f"{plan.token_budget} padded tokens, length-grouped; loss "
        f"{'on trained positions only (chunked)' if plan.fast_loss else 'via the model (full logits)'}"
        + ("; the batch's common prefix computed once" if plan.fast_loss and getattr(plan, "share_prefix", False)
           else ""),
        f"data      {source}: {total} examples, {len(res.items)} to train, prompt format {t.prompt_format}",
        f"tokens    per example min {lens[0]}, median {q(0.5)}, mean {sum(lens) / len(lens):.0f}, "
        f"p95 {q(0.95)}, max {lens[-1]}; {trained:,} of {real:,} tokens trained "
        f"({100 * trained / max(1, real):.0f}%)",
        f"truncated {res.truncated} of {len(lens)} examples exceed max_seq_len={t.max_seq_len}"
        + (" (their tails are cut)" if res.truncated else ""),
    ]
    for i, why in res.dropped[:20]:
        lines.append(f"  DROPPED example #{i}: {why}")
    if len(res.dropped) > 20:
        lines.append(f"  ... and {len(res.dropped) - 20} more dropped")
    eos = tokenizer.eos_token
    if res.no_eos:
        lines.append(f"EOS check {res.no_eos} example(s) do not end their last trained span with {eos!r} "
                     "(cut by truncation, or the template does not close turns with the EOS)")
    else:
        lines.append(f"EOS check every example's trained span ends with {eos!r} (id {tokenizer.eos_token_id}): "
                     "the student learns to stop")
    fits = est["total"] <= free[0]
    lines += [
        f"memory    weights {_fmt(est['weights'])} + gradients {_fmt(est['gradients'])} + optimizer "
        f"{_fmt(est['optimizer'])} + activations {_fmt(est['activations_per_token'])}/token x "
        f"{plan.token_budget} = {_fmt(est['activations'])}"
        + (f" + runtime {_fmt(RUNTIME_OVERHEAD)}" if plan.device == "cpu" else "")
        + f" ~ {_fmt(est['total'])} vs {_fmt(free[0])} {free[1]}: " + ("fits" if fits else "MAY NOT FIT"),
    ]
    if not fits:
        lines.append("          to fit: lower train.token_budget (activations scale with it), set "
                     "train.gradient_checkpointing: true, or use train.method: lora / qlora")
    if gate_text:
        lines.append(f"governance {gate_text}")
    if res.spans_text:
        text, spans = res.spans_text[0]
        lines += ["", "first example, trained spans between [[ and ]]:", "-" * 60, render_marked(text, spans),
                  "-" * 60]
    return "\n".join(lines) + "\n"
