"""Issue 14: under the preset's bf16 autocast, every matmul of protege's fast path runs in bf16.

Needs no bf16 hardware: CPU bf16 arithmetic is emulated where the CPU lacks avx512_bf16/AMX (slow, exact
dtypes). A dispatch mode records the dtypes every matrix product and attention call actually receives
(below autocast, so after its casts) during one real `ProtegeTrainer` step (forward, loss, backward):
before the fix the fast path called the backbone outside the autocast accelerate wraps around
`model.forward`, and all of them ran in fp32.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

MATMULS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear"}


class OpDtypes(TorchDispatchMode):
    """Records (op, dtypes of its tensor arguments) for matrix products and attention kernels."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, tuple[Any, ...]]] = []
        self.copies: list[tuple[int, ...]] = []  # shapes of dtype conversions (_to_copy)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.overloadpacket.__name__
        if name in MATMULS or "scaled_dot_product" in name:
            self.ops.append((name, tuple(a.dtype for a in args if isinstance(a, torch.Tensor))))
        elif name == "_to_copy" and args and isinstance(args[0], torch.Tensor):
            self.copies.append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))


def _tiny_base(seed: int = 0):  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.config._attn_implementation = "sdpa"
    model.config.use_cache = False
    return model


def _tiny_lora(seed: int = 0, base_dtype=None):  # type: ignore[no-untyped-def]
    """A tiny LoRA model; `base_dtype=torch.bfloat16`: the frozen base in bf16, as `load_model` loads it
    under the CPU preset's bf16 (PEFT keeps the adapters in fp32)."""
    from peft import LoraConfig, get_peft_model

    model = _tiny_base(seed)
    if base_dtype is not None:
        model = model.to(base_dtype)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))


def _items(prefix: bool):  # type: ignore[no-untyped-def]
    """4 rows of different lengths (padding + mask); with `prefix`, a shared 12-token start (CPU path)."""
    from protege.train.data import Tokenized

    g = torch.Generator().manual_seed(1)
    head = torch.randint(0, 512, (12,), generator=g).tolist()
    out = []
    for i in range(4):
        ids = (head if prefix else []) + torch.randint(0, 512, (20 + 4 * i,), generator=g).tolist()
        out.append(Tokenized(i, ids, [-100] * 12 + ids[12:], full_length=len(ids)))
    return out


def _one_step(tmp_path, bf16: bool, fast: bool, prefix: bool = True, base_dtype=None):  # type: ignore[no-untyped-def]
    from transformers import TrainingArguments

    from protege.train.data import ListDataset, PadCollator
    from protege.train.trainer import trainer_class

    args = TrainingArguments(output_dir=str(tmp_path / f"o{bf16}{fast}"), per_device_train_batch_size=4,
                             max_steps=1, use_cpu=True, bf16=bf16, report_to="none", save_strategy="no",
                             disable_tqdm=True, remove_unused_columns=False, logging_steps=1, learning_rate=1e-9)
    trainer = trainer_class()(model=_tiny_lora(base_dtype=base_dtype), args=args,
                              train_dataset=ListDataset(_items(prefix)),
                              data_collator=PadCollator(0), token_budget=4 * 64, fast_loss=fast)
    rec = OpDtypes()
    with rec:
        out = trainer.train()
    return rec.ops, out.training_loss


@pytest.mark.parametrize("base", ["fp32-base", "bf16-base"])
@pytest.mark.parametrize("prefix", [True, False], ids=["shared-prefix", "plain"])
def test_fast_path_runs_every_matmul_and_attention_in_bf16_under_autocast(  # type: ignore[no-untyped-def]
        tmp_path, prefix, base) -> None:
    ops, _ = _one_step(tmp_path, bf16=True, fast=True, prefix=prefix,
                       base_dtype=torch.bfloat16 if base == "bf16-base" else None)
    kinds = Counter(name for name, _ in ops)
    assert kinds["mm"] > 50, kinds  # 2 layers x 7 linear layers x (base + 2 LoRA) x fwd/bwd, and the loss
    assert any("scaled_dot_product" in k for k in kinds), kinds
    # attention kernels: their first three tensors are the operands (q, k, v; grad_out, q, k in backward);
    # later ones include the softmax log-sum-exp, which is fp32 by design
    not_bf16 = Counter((name, d) for name, d in ops
                       if any(x != torch.bfloat16 for x in (d[:3] if "scaled_dot" in name else d)))
    assert not not_bf16, f"ran outside bf16 under bf16 autocast: {dict(not_bf16)}"


def test_fast_path_in_fp32_keeps_every_matmul_fp32(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ops, _ = _one_step(tmp_path, bf16=False, fast=True)
    assert ops
    assert {d for _, dts in ops for d in dts if d.is_floating_point} == {torch.float32}


def test_loss_handed_bf16_matmuls_and_equal_to_fp32_within_bf16_tolerance(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The loss function sees fp32 hidden states (the residual stream stays fp32 under autocast) and runs
    its logit matmuls in bf16; its value and the backbone's gradients match the fp32 path's."""
    import protege.train.loss as loss_mod
    from protege.train.data import PadCollator

    seen: list[tuple[Any, Any]] = []
    real = loss_mod.fused_linear_cross_entropy_sum

    def spy(h, weight, targets, chunk=loss_mod.LOGIT_CHUNK):  # type: ignore[no-untyped-def]
        seen.append((h.dtype, loss_mod.matmul_dtype(h)))
        return real(h, weight, targets, chunk)

    monkeypatch.setattr(loss_mod, "fused_linear_cross_entropy_sum", spy)
    batch = PadCollator(0)([{"input_ids": it.input_ids, "labels": it.labels} for it in _items(prefix=True)])
    results = {}
    for bf16 in (False, True):
        model = _tiny_lora()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # what accelerate's autocast() enters
            loss = loss_mod.trained_positions_loss(model, batch)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad and p.grad is not None]
        results[bf16] = (float(loss), grads)
    assert seen == [(torch.float32, torch.float32), (torch.float32, torch.bfloat16)]
    (l32, g32), (l16, g16) = results[False], results[True]
    assert abs(l16 - l32) / l32 < 1e-2, (l16, l32)
    num = sum(float((a - b).norm() ** 2) for a, b in zip(g16, g32)) ** 0.5
    den = sum(float(a.norm() ** 2) for a in g32) ** 0.5
    assert num / den < 5e-2, num / den  # bf16 operands: ~1e-3..1e-2 relative error expected


def test_fused_ce_under_autocast_equals_explicit_bf16_and_casts_weight_once() -> None:
    """Inside the loss the head weight is cast once per call (not per chunk and matmul)."""
    from protege.train.loss import fused_linear_cross_entropy_sum

    g = torch.Generator().manual_seed(0)
    h = torch.randn(300, 32, generator=g, requires_grad=True)
    w = torch.randn(1000, 32, generator=g) * 0.1  # a frozen head (LoRA): no weight grad
    t = torch.randint(0, 1000, (300,), generator=g)
    rec = OpDtypes()
    with torch.autocast("cpu", dtype=torch.bfloat16), rec:
        auto = fused_linear_cross_entropy_sum(h, w, t, 64)
    explicit = fused_linear_cross_entropy_sum(h.detach().bfloat16().float().requires_grad_(),
                                              w.bfloat16().float(), t, 64)
    assert abs(float(auto) - float(explicit)) / float(explicit) < 1e-2
    assert all(d == (torch.bfloat16, torch.bfloat16) for _, d in rec.ops)
    assert len(rec.ops) == 2 * 5  # 5 chunks x (logits, grad_h): no weight-gradient matmul for a frozen head
    assert rec.copies.count(tuple(w.shape)) == 1  # before: cast again by autocast in each of the 10 matmuls


# ---------------------------------------------------------------- the frozen LoRA base in bf16 on CPU


def test_cpu_plan_under_bf16_loads_the_lora_base_in_bf16_and_keeps_fp32_unchanged(  # type: ignore[no-untyped-def]
        monkeypatch) -> None:
    """On a CPU with native bf16 the preset turns autocast on, and then LoRA loads the frozen base in bf16
    and skips the shared-prefix split (both measured faster there, issue 14); fp32 keeps fp32 weights
    and the shared prefix; a CPU full fine-tune keeps fp32 weights under autocast."""
    import protege.train.presets as presets
    from protege.config import TrainConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for native in (True, False):
        monkeypatch.setattr(presets, "cpu_has_bf16", lambda native=native: native)
        plan = presets.resolve_plan(TrainConfig(preset="auto", method="lora"))
        assert (plan.device, plan.bf16, plan.autocast) == ("cpu", native, native)
        assert plan.weights_dtype == ("bfloat16" if native else "float32")
        assert plan.share_prefix is (not native)
        assert plan.token_budget == presets.CPU_TOKEN_BUDGET
    forced_off = presets.resolve_plan(TrainConfig(preset="cpu", method="lora", bf16=False))
    assert (forced_off.weights_dtype, forced_off.autocast, forced_off.share_prefix) == ("float32", False, True)
    full = presets.resolve_plan(TrainConfig(preset="cpu", method="full", bf16=True))
    assert (full.weights_dtype, full.autocast, full.master_weights) == ("float32", True, False)


def test_load_model_puts_the_frozen_base_in_bf16_and_keeps_adapters_fp32(  # type: ignore[no-untyped-def]
        tmp_path) -> None:
    from protege.config import RunConfig
    from protege.train.presets import resolve_plan
    from protege.train.stage import load_model

    _tiny_base().save_pretrained(tmp_path / "base")
    cfg = RunConfig(run_dir=str(tmp_path / "run"))
    cfg.train.preset, cfg.train.method, cfg.train.bf16 = "cpu", "lora", True
    plan = resolve_plan(cfg.train)
    assert plan.weights_dtype == "bfloat16" and plan.autocast
    model = load_model(tmp_path / "base", cfg, plan)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16}, frozen
    assert trained == {torch.float32}, trained  # AdamW steps fp32 adapters
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
    cfg.train.bf16 = False
    fp32 = load_model(tmp_path / "base", cfg, resolve_plan(cfg.train))
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}


@pytest.mark.parametrize("prefix", [True, False], ids=["shared-prefix", "plain"])
def test_bf16_base_loss_and_adapter_grads_match_the_fp32_path(prefix) -> None:  # type: ignore[no-untyped-def]
    """The bf16 base under autocast (the CPU preset's bf16) against the fp32 base without autocast: same
    loss and adapter gradients within bf16 tolerance; the loss is handed bf16 hidden states there."""
    import protege.train.loss as loss_mod
    from protege.train.data import PadCollator

    batch = PadCollator(0)([{"input_ids": it.input_ids, "labels": it.labels} for it in _items(prefix=True)])
    results = {}
    for bf16 in (False, True):
        model = _tiny_lora(base_dtype=torch.bfloat16 if bf16 else None)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_mod.trained_positions_loss(model, batch, share_prefix=prefix)
        loss.backward()
        named = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
        assert all(g.dtype == torch.float32 for g in named.values())
        results[bf16] = (float(loss), named)
    (l32, g32), (l16, g16) = results[False], results[True]
    assert set(g32) == set(g16) and g32
    assert abs(l16 - l32) / l32 < 1e-2, (l16, l32)
    num = sum(float((g16[n] - g32[n]).norm() ** 2) for n in g32) ** 0.5
    den = sum(float(g.norm() ** 2) for g in g32.values()) ** 0.5
    assert num / den < 5e-2, num / den


def test_preflight_says_the_base_is_bf16_and_why(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import protege.train.presets as presets
    from protege.config import TrainConfig
    from protege.train.preflight import dtype_note

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(presets, "cpu_has_bf16", lambda: True)
    plan = presets.resolve_plan(TrainConfig(preset="cpu", method="lora"))
    assert "frozen base in bf16, adapters fp32; this CPU has native bf16" in dtype_note(plan, "lora")
    monkeypatch.setattr(presets, "cpu_has_bf16", lambda: False)
    forced = presets.resolve_plan(TrainConfig(preset="cpu", method="lora", bf16=True))
    assert "emulated, slow" in dtype_note(forced, "lora")
    assert dtype_note(presets.resolve_plan(TrainConfig(preset="cpu", method="lora")), "lora") == ""
