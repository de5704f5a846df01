"""The GPU options of `protege train` (issue 15): train.compile, bf16 weights with fp32 master AdamW,
train.fused_loss, MFU/tokens-per-second metrics. Runs on CPU; the liger-kernel checks need CUDA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from protege.config import RunConfig, TrainConfig  # noqa: E402
from protege.errors import UserError  # noqa: E402


def _tiny(lora: bool = False, dtype=None):  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.config._attn_implementation = "sdpa"
    model.config.use_cache = False
    if dtype is not None:
        model = model.to(dtype)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    return model


def _batch(rows: int = 3, n: int = 24):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 256, (rows, n), generator=g)
    labels = ids.clone()
    labels[:, :6] = -100
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}


# ---------------------------------------------------------------- config and plan

def test_new_keys_validate() -> None:
    t = TrainConfig(compile=True, fused_loss="protege", master_weights=False)
    assert (t.compile, t.fused_loss, t.master_weights) == (True, "protege", False)
    assert TrainConfig().fused_loss == "auto" and TrainConfig().compile is None and TrainConfig().master_weights
    with pytest.raises(ValueError, match="fused_loss"):
        TrainConfig(fused_loss="triton")
    with pytest.raises(ValueError, match="needs fast_loss: true"):
        TrainConfig(fused_loss="liger", fast_loss=False)
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        TrainConfig(fused_loss="liger", preset="cpu")


def test_cpu_plan_keeps_fp32_weights_no_compile_and_our_loss() -> None:
    from protege.train.presets import resolve_plan

    plan = resolve_plan(TrainConfig(preset="cpu", method="full", bf16=True))
    assert (plan.weights_dtype, plan.autocast, plan.master_weights) == ("float32", True, False)
    assert (plan.compile, plan.fused_loss) == (False, "protege")
    assert resolve_plan(TrainConfig(preset="cpu", compile=True)).compile is True  # explicit wins


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_liger_without_cuda_is_a_user_error() -> None:
    from protege.train.presets import resolve_plan

    with pytest.raises(UserError, match="liger needs a CUDA GPU"):
        resolve_plan(TrainConfig(fused_loss="liger"))  # preset auto resolves to cpu here


def test_gpu_plan_bf16_weights_master_adamw_compile_liger(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The single-gpu resolution, with CUDA, bf16 support, Triton and liger-kernel reported present."""
    import protege.train.presets as presets

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(presets, "triton_available", lambda: True)
    monkeypatch.setattr(presets, "liger_available", lambda: True)
    full = presets.resolve_plan(TrainConfig(method="full"))
    assert (full.preset, full.weights_dtype, full.autocast, full.master_weights) == \
        ("single-gpu", "bfloat16", False, True)
    assert (full.compile, full.fused_loss) == (True, "liger")
    lora = presets.resolve_plan(TrainConfig(method="lora"))
    assert (lora.weights_dtype, lora.autocast, lora.master_weights) == ("bfloat16", True, False)
    plain = presets.resolve_plan(TrainConfig(method="full", master_weights=False, fused_loss="protege"))
    assert (plain.master_weights, plain.fused_loss) == (False, "protege")
    fp32 = presets.resolve_plan(TrainConfig(method="full", bf16=False, compile=False))
    assert (fp32.weights_dtype, fp32.autocast, fp32.master_weights, fp32.compile) == \
        ("float32", False, False, False)
    monkeypatch.setattr(presets, "liger_available", lambda: False)
    assert presets.resolve_plan(TrainConfig(method="full")).fused_loss == "protege"
    with pytest.raises(UserError, match="liger-kernel, which is not installed"):
        presets.resolve_plan(TrainConfig(fused_loss="liger"))


# ---------------------------------------------------------------- regional compile

@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_compile_wraps_each_decoder_layer_and_keeps_the_loss(lora: bool) -> None:
    from protege.train.loss import trained_positions_loss
    from protege.train.speed import compile_decoder_layers, decoder_layers, is_compiled

    model = _tiny(lora)
    batch = _batch()
    before = trained_positions_loss(model, batch)
    assert compile_decoder_layers(model, backend="eager") == 3  # "eager": dynamo traces, no compiler
    layers = decoder_layers(model)
    assert [type(m).__name__ for m in layers] == ["LlamaDecoderLayer"] * 3
    assert all(is_compiled(m) for m in layers)
    assert not is_compiled(model)  # only the layers: loss, PEFT wrapper and Trainer stay eager
    after = trained_positions_loss(model, batch)
    after.backward()
    assert torch.allclose(before, after, rtol=1e-5)
    trained = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trained if p.ndim == 2 and p.shape[0] != 256)


# ---------------------------------------------------------------- master weights

def test_plain_adamw_on_bf16_loses_small_updates_master_weights_keep_them() -> None:
    """lr 1e-5 on weights ~0.02: bf16's spacing there is 1.2e-4, so plain AdamW's updates round away."""
    from protege.train.speed import master_weight_adamw

    g = torch.Generator().manual_seed(0)
    init = torch.randn(256, 64, generator=g) * 0.02
    direction = torch.randn(256, 64, generator=g)  # a steady gradient (plus noise): updates add up
    grads = [direction + 0.1 * torch.randn(256, 64, generator=g) for _ in range(20)]
    ref = init.clone().requires_grad_()
    plain = init.to(torch.bfloat16).requires_grad_()
    mixed = init.to(torch.bfloat16).requires_grad_()
    start = mixed.detach().clone()
    opts = [torch.optim.AdamW([ref], lr=1e-5), torch.optim.AdamW([plain], lr=1e-5),
            master_weight_adamw()([mixed], lr=1e-5)]
    for gr in grads:
        for p, opt in zip((ref, plain, mixed), opts):
            p.grad = gr.to(p.dtype)
            opt.step()
            opt.zero_grad()
    moved_plain = float((plain.detach() != start).float().mean())
    moved_mixed = float((mixed.detach() != start).float().mean())
    assert moved_plain < 0.2 and moved_mixed > 0.8, (moved_plain, moved_mixed)
    # the master copy follows fp32 AdamW from the bf16 start on the same bf16 gradients; the model holds
    # it rounded to bf16
    master = opts[2].masters[0]
    ref_on_bf16_grads = init.to(torch.bfloat16).float().requires_grad_()
    o = torch.optim.AdamW([ref_on_bf16_grads], lr=1e-5)
    for gr in grads:
        ref_on_bf16_grads.grad = gr.to(torch.bfloat16).float()
        o.step()
    assert torch.equal(master, ref_on_bf16_grads.detach())
    assert torch.equal(mixed.detach(), master.to(torch.bfloat16))
    err_plain = float((plain.detach().float() - ref.detach()).norm())
    err_mixed = float((mixed.detach().float() - ref.detach()).norm())
    assert err_mixed < err_plain / 3, (err_mixed, err_plain)


def test_master_weights_survive_state_dict_round_trip(tmp_path: Path) -> None:
    from protege.train.speed import master_weight_adamw

    cls = master_weight_adamw()
    p = (torch.randn(32, 8) * 0.02).to(torch.bfloat16).requires_grad_()
    opt = cls([p], lr=1e-3)
    for _ in range(3):
        p.grad = torch.randn(32, 8).to(torch.bfloat16)
        opt.step()
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    q = p.detach().clone().requires_grad_()
    with torch.no_grad():
        q.add_(1.0)  # the model weights differ; loading the optimizer restores master and weights
    opt2 = cls([q], lr=1e-3)
    opt2.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=False))
    assert torch.equal(opt2.masters[0], opt.masters[0])
    assert torch.equal(q.detach(), p.detach())
    assert opt2.state[opt2.masters[0]]["exp_avg"].dtype == torch.float32


def test_trainer_uses_master_adamw_for_bf16_full_finetune_and_logs_throughput(tmp_path: Path) -> None:
    """A real ProtegeTrainer run: bf16 weights, master-weight AdamW (the Trainer's own lr/betas/eps),
    metrics lines with tokens_per_s and MFU (a made-up peak: CPUs have none in the table)."""
    from transformers import TrainingArguments

    from protege.train.data import ListDataset, PadCollator, Tokenized
    from protege.train.speed import train_flops_per_token
    from protege.train.trainer import TokenStats, metrics_callback, trainer_class

    model = _tiny(dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(16):
        ids = torch.randint(0, 256, (16,), generator=g).tolist()
        items.append(Tokenized(i, ids, [-100] * 4 + ids[4:], full_length=16))
    stats = TokenStats()
    fpt = train_flops_per_token(model)
    peak = fpt * 100  # a made-up peak that makes MFU = tokens/s / 100
    cb = metrics_callback(tmp_path / "metrics.jsonl", stats, None, show_progress=False, flops_per_token=fpt,
                          peak_flops=peak)
    args = TrainingArguments(output_dir=str(tmp_path / "o"), per_device_train_batch_size=4, max_steps=4,
                             use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
                             remove_unused_columns=False, logging_steps=1, learning_rate=1e-3)
    trainer = trainer_class()(model=model, args=args, train_dataset=ListDataset(items), callbacks=[cb],
                              data_collator=PadCollator(0), token_budget=64, stats=stats, master_weights=True)
    start = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    assert type(opt).__name__ == "MasterWeightAdamW"
    assert all(m.dtype == torch.float32 for m in opt.masters)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert sum(not torch.equal(a, b) for a, b in zip(start, model.parameters())) > len(start) // 2
    assert abs(opt.param_groups[0]["betas"][0] - args.adam_beta1) < 1e-12
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    assert stats.real == 4 * 4 * 16 and stats.trained == 4 * 4 * 12  # 4 steps x 4 rows; 12 labels after the shift
    for x in lines[1:]:
        assert x["tokens_per_s"] > 0 and x["mfu"] == pytest.approx(x["tokens_per_s"] / 100, rel=1e-2, abs=2e-4)
    thr = cb.throughput()
    assert thr["throughput_from_step"] == 2 and thr["tokens_per_s"] > 0


def test_flops_per_token_and_peaks() -> None:
    from protege.train.speed import peak_bf16_flops, train_flops_per_token

    full = _tiny()
    n = sum(m.weight.numel() for m in full.modules() if isinstance(m, torch.nn.Linear))
    assert train_flops_per_token(full) == 6 * n
    lora = _tiny(lora=True)
    adapters = sum(p.numel() for n_, p in lora.named_parameters() if p.requires_grad)
    assert train_flops_per_token(lora) == 4 * n + 6 * adapters  # adapters: fwd, input and weight grads
    assert peak_bf16_flops("NVIDIA H200") == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA L40") == 181e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_flops("Some CPU") is None


# ---------------------------------------------------------------- liger-kernel (CUDA)

@pytest.mark.skipif(not torch.cuda.is_available(), reason="liger-kernel's Triton kernels need CUDA")
def test_liger_loss_equals_ours_on_cuda() -> None:
    pytest.importorskip("liger_kernel")
    from protege.train.loss import fused_linear_cross_entropy_sum, liger_linear_cross_entropy_sum

    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(1000, 128, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
    w = (torch.randn(5000, 128, device="cuda", generator=g) * 0.05).to(torch.bfloat16).requires_grad_()
    t = torch.randint(0, 5000, (1000,), device="cuda", generator=g)
    a = fused_linear_cross_entropy_sum(h, w, t, 256)
    ga = torch.autograd.grad(a, (h, w))
    b = liger_linear_cross_entropy_sum(h, w, t)
    gb = torch.autograd.grad(b, (h, w))
    assert abs(float(a) - float(b)) / float(a) < 1e-3
    for x, y in zip(ga, gb):
        assert float((x.float() - y.float()).norm() / x.float().norm()) < 2e-2
