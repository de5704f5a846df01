"""protege train on the real SmolLM2-135M-Instruct (CPU): label masks, fast loss == naive loss, a LoRA run
that learns and generates, kill -9 + resume, preflight refusals, batching bounds, multi-GPU presets."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from protege.errors import UserError
from protege.records import Example, from_alpaca, write_examples
from protege.train.data import (IGNORE, ListDataset, PadCollator, TokenBudgetBatchSampler, tokenize_examples)

REPO = Path(__file__).resolve().parents[1]
ALPACA = REPO.parent / "shared" / "data" / "alpaca" / "alpagasus_random_9k.json"
CHATML_SYSTEM = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                 "<|im_end|>\n")


@pytest.fixture(scope="session")
def student_dir() -> Path:
    from protege import models

    try:
        return models.prepare("smollm2-135m-instruct")
    except UserError as err:
        pytest.skip(f"SmolLM2-135M-Instruct not available: {err.message}")


@pytest.fixture(scope="session")
def tokenizer(student_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(student_dir)


@pytest.fixture(scope="session")
def alpaca_records() -> list[dict]:
    if not ALPACA.exists():
        pytest.skip(f"reference data not found at {ALPACA}")
    return json.loads(ALPACA.read_text())


def _chat(*turns: str) -> Example:
    roles = ["user", "assistant"] * len(turns)
    return Example(messages=[{"role": r, "content": c} for r, c in zip(roles, turns)], meta={})


def _expected_chatml(tokenizer, turns: list[str]) -> tuple[list[int], list[bool]]:  # type: ignore[no-untyped-def]
    """The oracle: ChatML written out by hand, each piece tokenized alone, trained flags per piece."""
    pieces: list[tuple[str, bool]] = [(CHATML_SYSTEM, False)]
    for k, text in enumerate(turns):
        if k % 2 == 0:
            pieces.append((f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n", False))
        else:
            pieces += [(text + "<|im_end|>", True), ("\n", False)]
    ids: list[int] = []
    mask: list[bool] = []
    for text, trained in pieces:
        part = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += part
        mask += [trained] * len(part)
    return ids, mask


@pytest.mark.parametrize("turns", [
    ["What is 2+2?", "2+2 is 4."],
    ["Name a colour.", "Blue.", "Another one, in French?", "Rouge, which means red.\nAnything else?"],
])
def test_label_mask_is_exactly_the_assistant_spans_with_eos(tokenizer, turns) -> None:  # type: ignore[no-untyped-def]
    res = tokenize_examples([_chat(*turns)], tokenizer, "chat", 1024)
    item = res.items[0]
    ids, mask = _expected_chatml(tokenizer, turns)
    assert item.input_ids == ids
    assert [lab != IGNORE for lab in item.labels] == mask  # token by token
    assert all(lab == tid for lab, tid in zip(item.labels, item.input_ids) if lab != IGNORE)
    # each assistant turn's last trained token is the end-of-turn EOS, and it is trained
    ends = [k for k in range(len(mask)) if mask[k] and (k + 1 == len(mask) or not mask[k + 1])]
    assert len(ends) == len(turns) // 2
    assert all(item.input_ids[k] == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
               for k in ends)
    assert res.no_eos == 0


def test_alpaca_format_trains_outputs_and_eos(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ex = from_alpaca({"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"})
    res = tokenize_examples([ex, _chat("Hi", "Hello!", "Bye", "Goodbye.")], tokenizer, "alpaca", 1024)
    for item, outputs in zip(res.items, [["5"], ["Hello!", "Goodbye."]]):
        runs, cur = [], []
        for tid, lab in zip(item.input_ids, item.labels):
            if lab != IGNORE:
                cur.append(tid)
            elif cur:
                runs.append(cur)
                cur = []
        runs += [cur] if cur else []
        assert [tokenizer.decode(r) for r in runs] == [o + tokenizer.eos_token for o in outputs]
    assert "### Input:\n2 and 3" in res.spans_text[0][0]


def test_nothing_to_learn_is_refused_not_dropped(tokenizer) -> None:  # type: ignore[no-untyped-def]
    from protege.train.preflight import check_tokenized

    exs = [_chat("Hi", "Hello"), Example(messages=[{"role": "user", "content": "only a question"}], meta={})]
    res = tokenize_examples(exs, tokenizer, "chat", 1024)
    with pytest.raises(UserError, match=r"example #1: no assistant turn"):
        check_tokenized(res, len(exs), 1024, "data.jsonl")


def test_token_budget_batches_are_bounded_complete_and_longest_first() -> None:
    lengths = [5, 400, 30, 31, 29, 200, 7, 90, 91, 3] * 7
    s = TokenBudgetBatchSampler(lengths, max_batch_size=8, token_budget=256, seed=1)
    batches = list(iter(s))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 8
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 256
    assert s.cost(batches[0]) == max(s.cost(b) for b in batches)
    s.set_epoch(1)
    again = list(iter(s))
    assert len(again) == len(batches) and again != batches  # same batches, new order per epoch
    assert sorted(map(sorted, again)) == sorted(map(sorted, batches))


def _write_cfg(tmp: Path, data: Path, **train) -> Path:  # type: ignore[no-untyped-def]
    cfg = {"run_dir": str(tmp / "run"), "train": {"data": str(data), "preset": "cpu", **train}}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _short_examples(records: list[dict], n: int, max_chars: int = 220) -> list[Example]:
    picked = [r for r in records if len(r["instruction"]) + len(r["input"]) + len(r["output"]) < max_chars]
    return [from_alpaca(r) for r in picked[:n]]


def test_preflight_refuses_max_seq_len_that_truncates_everything(tmp_path, alpaca_records, student_dir) -> None:  # type: ignore[no-untyped-def]
    from protege.config import load_config
    from protege.store import RunStore
    from protege.train import run

    data = tmp_path / "d.jsonl"
    write_examples(data, _short_examples(alpaca_records, 8))
    cfg = load_config(_write_cfg(tmp_path, data, max_seq_len=16))
    with pytest.raises(UserError, match="max_seq_len=16 truncates EVERY example") as info:
        run(cfg, RunStore(cfg.run_dir))
    assert "--set train.max_seq_len=" in (info.value.hint or "")


def _lora_model(student_dir: Path, seed: int = 0):  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForCausalLM
    from peft import LoraConfig, get_peft_model

    m = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    m.config.use_cache = False
    torch.manual_seed(seed)
    m = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                     task_type="CAUSAL_LM"))
    # LoRA B starts at zero; give it values so gradients through A are not trivially zero.
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    return m


@pytest.mark.slow
def test_fast_loss_equals_naive_loss_and_grads_and_per_step(tmp_path, tokenizer, student_dir, alpaca_records) -> None:  # type: ignore[no-untyped-def]
    """Tolerances: loss 1e-4 relative; each LoRA gradient within 1e-2 of its largest entry (fp32: the
    output layer is summed in other chunks, and the ~1e-7 differences grow through 30 layers of backward:
    1.03e-3 measured); per-step Trainer losses 1e-3 absolute over 3 AdamW steps on identical batches.
    A wrong mask, shift or normalisation differs by O(1) on all three."""
    import torch
    from transformers import TrainingArguments

    from protege.train.loss import trained_positions_loss
    from protege.train.trainer import trainer_class

    res = tokenize_examples([from_alpaca(r) for r in alpaca_records[:8]], tokenizer, "chat", 256)
    ds = ListDataset(res.items)
    batch = PadCollator(tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])
    assert batch["attention_mask"].sum() < batch["attention_mask"].numel()  # really padded
    model = _lora_model(student_dir)
    naive = model(**batch).loss
    naive.backward()
    g_naive = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    fast = trained_positions_loss(model, batch)
    fast.backward()
    assert abs(fast.item() - naive.item()) <= 1e-4 * naive.item()
    for n, p in model.named_parameters():
        if p.requires_grad:
            scale = g_naive[n].abs().max().item() + 1e-12
            assert (p.grad - g_naive[n]).abs().max().item() <= 1e-2 * scale, n

    losses = {}
    for fast_loss in (True, False):
        args = TrainingArguments(output_dir=str(tmp_path / str(fast_loss)), per_device_train_batch_size=4,
                                 max_steps=3, learning_rate=1e-3, logging_steps=1, save_strategy="no",
                                 report_to="none", disable_tqdm=True, remove_unused_columns=False, use_cpu=True,
                                 seed=0)
        trainer = trainer_class()(model=_lora_model(student_dir), args=args, train_dataset=ds,
                                  data_collator=PadCollator(tokenizer.pad_token_id), token_budget=512,
                                  fast_loss=fast_loss)
        trainer.train()
        losses[fast_loss] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], abs=1e-3)
    assert torch.isfinite(torch.tensor(losses[True])).all()


def _mean_loss(model_dir_or_model, tokenizer, items) -> float:  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForCausalLM

    model = (AutoModelForCausalLM.from_pretrained(model_dir_or_model, dtype=torch.float32)
             if isinstance(model_dir_or_model, (str, Path)) else model_dir_or_model)
    ds = ListDataset(items)
    batch = PadCollator(tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        return model(**batch).loss.item()


@pytest.mark.slow
def test_lora_run_lowers_loss_writes_metrics_and_student_generates(tmp_path, tokenizer, student_dir,
                                                                  alpaca_records) -> None:  # type: ignore[no-untyped-def]
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from protege.config import load_config
    from protege.store import RunStore
    from protege.train import run

    exs = _short_examples(alpaca_records, 12)
    data = tmp_path / "d.json"
    write_examples(data, exs, fmt="alpaca")
    cfg = load_config(_write_cfg(tmp_path, data, max_steps=8, lr=2e-3, batch_size=6, save_every=100,
                                 warmup_ratio=0.0))
    store = RunStore(cfg.run_dir)
    result = run(cfg, store)

    items = tokenize_examples(exs, tokenizer, "chat", 1024).items
    before = _mean_loss(student_dir, tokenizer, items)
    after = _mean_loss(store.merged_dir, tokenizer, items)
    assert after < before - 0.1, (before, after)

    metrics = [json.loads(x) for x in store.metrics.read_text().splitlines()]
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in steps] == list(range(1, 9))
    assert all(m["trained_tokens"] > 0 and m["trained_tokens_per_s"] > 0 for m in steps)
    assert result["steps"] == 8 and result["resumed_from_step"] == 0
    text = store.preflight.read_text()
    assert "[[" in text and "EOS check" in text and "memory" in text
    card = store.model_card.read_text()
    assert "smollm2-135m-instruct" in card and "lora_r" in card
    assert (store.merged_dir / "model.safetensors").exists()
    assert (store.merged_dir / "chat_template.jinja").exists() or "chat_template" in \
        (store.merged_dir / "tokenizer_config.json").read_text()

    base = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    student = PeftModel.from_pretrained(base, store.adapter_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": exs[0].prompt}], tokenize=False,
                                           add_generation_prompt=True)
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = student.generate(**enc, max_new_tokens=12, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]
    assert tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    with pytest.raises(UserError, match="already has a student"):
        run(cfg, store)  # never overwrites a trained student


@pytest.mark.slow
def test_kill_9_then_resume_continues_from_the_checkpoint(tmp_path, student_dir, alpaca_records) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "d.jsonl"
    write_examples(data, _short_examples(alpaca_records, 24))
    cfg = _write_cfg(tmp_path, data, max_steps=7, save_every=2, batch_size=4)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "protege.train", "-c", str(cfg)]
    ckpts = tmp_path / "run" / "student" / "checkpoints"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while not (ckpts / "checkpoint-2" / "trainer_state.json").exists():
            assert proc.poll() is None, "training ended before the first checkpoint"
            assert time.time() < deadline
            time.sleep(0.2)
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "run" / "student" / "adapter").exists()
    last = max(int(p.name.split("-")[1]) for p in ckpts.glob("checkpoint-*")
               if (p / "trainer_state.json").exists())
    assert last < 7

    out = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"(step {last})" in out.stdout and "Resuming from" in out.stdout
    state = json.loads((ckpts / "checkpoint-7" / "trainer_state.json").read_text())
    assert state["global_step"] == 7
    metrics = [json.loads(x) for x in (tmp_path / "run" / "student" / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in metrics if "loss" in m]
    assert steps == list(range(1, 8))  # no step lost, none logged twice
    assert (tmp_path / "run" / "student" / "adapter" / "adapter_model.safetensors").exists()


def test_multi_gpu_preset_configs_build() -> None:
    """The shipped FSDP, DDP and DeepSpeed ZeRO-3 launch files parse with accelerate's own config classes."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import FullyShardedDataParallelPlugin

    from protege.train.presets import load_preset_configs, preset_file

    cfgs = load_preset_configs()
    fsdp = ClusterConfig.from_yaml_file(preset_file("fsdp"))
    assert fsdp.distributed_type.value == "FSDP" and fsdp.num_processes > 1
    fc = fsdp.fsdp_config
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=fc["fsdp_version"],
        auto_wrap_policy=fc["fsdp_auto_wrap_policy"].lower(),
        sharding_strategy=fc["fsdp_sharding_strategy"],
        backward_prefetch=fc["fsdp_backward_prefetch"],
        use_orig_params=fc["fsdp_use_orig_params"],
        state_dict_type=fc["fsdp_state_dict_type"],
    )
    # FSDP1: accelerate 1.15's FSDP2 path failed on a GPU with tied embeddings (docs/benchmarks.md)
    assert plugin.fsdp_version == 1 and plugin.use_orig_params
    assert plugin.sharding_strategy.name == "FULL_SHARD"
    # these two need a GPU to build (the plugin asks for the current device), so they are checked as read
    assert fc["fsdp_cpu_ram_efficient_loading"] is True and fc["fsdp_sync_module_states"] is True
    ddp = ClusterConfig.from_yaml_file(preset_file("ddp"))
    assert ddp.distributed_type.value == "MULTI_GPU" and ddp.num_processes > 1
    ds = ClusterConfig.from_yaml_file(preset_file("deepspeed"))
    assert ds.distributed_type.value == "DEEPSPEED"
    json_path = preset_file("deepspeed").parent / ds.deepspeed_config["deepspeed_config_file"]
    assert json_path == preset_file("deepspeed-json")
    zero = cfgs["deepspeed-json"]
    assert zero["zero_optimization"]["stage"] == 3
    assert zero["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True  # merged save works
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:  # the Trainer's own parser, where installed
        from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

        assert HfTrainerDeepSpeedConfig(str(json_path)).is_zero3()


def test_lora_under_fsdp_on_tied_embeddings_is_refused(tmp_path, monkeypatch) -> None:
    """Measured on an H100: LoRA + FSDP (v1 and v2) fails on tied embeddings; full FT + FSDP and LoRA + DDP
    ran. protege says so before loading anything, and points at the ddp preset."""
    from protege.errors import UserError
    from protege.train.stage import check_launch

    tied, untied = tmp_path / "tied", tmp_path / "untied"
    for d, tie in ((tied, True), (untied, False)):
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"tie_word_embeddings": tie}))
    check_launch("lora", tied)  # not under FSDP: fine
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    check_launch("full", tied)
    check_launch("lora", untied)
    with pytest.raises(UserError) as err:
        check_launch("lora", tied)
    assert "ddp" in err.value.hint and "tie" in err.value.message


@pytest.mark.parametrize("chunk", [16, 70, 512])
def test_fused_linear_cross_entropy_matches_autograd_for_h_and_w(chunk: int) -> None:
    """The chunked loss and both gradients (hidden states: LoRA; output weights: full fine-tune) equal
    PyTorch's cross_entropy on full logits, for chunks smaller than, equal to and larger than the batch."""
    import torch

    from protege.train.loss import fused_linear_cross_entropy_sum

    torch.manual_seed(0)
    w = torch.randn(1000, 32, requires_grad=True)
    h = torch.randn(70, 32, requires_grad=True)
    t = torch.randint(0, 1000, (70,))
    (fused_linear_cross_entropy_sum(h, w, t, chunk) * 0.5).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = torch.nn.functional.cross_entropy(h @ w.T, t, reduction="sum")
    (ref * 0.5).backward()
    assert torch.allclose(gh, h.grad, atol=1e-5) and torch.allclose(gw, w.grad, atol=1e-5)
    assert abs(float(fused_linear_cross_entropy_sum(h.detach(), w.detach(), t, chunk)) - float(ref)) < 1e-3


@pytest.mark.slow
def test_validation_loss_early_stopping_best_checkpoint_and_tensorboard(tmp_path, tokenizer, student_dir,
                                                                          alpaca_records) -> None:  # type: ignore[no-untyped-def]
    """Validation loss every N steps lands in metrics.jsonl; early stopping ends the run when it stops
    improving and the saved student is the best checkpoint's; TensorBoard events are written."""
    from protege.config import load_config
    from protege.store import RunStore
    from protege.train import run

    exs = _short_examples(alpaca_records, 22)
    train_exs, val_exs = exs[:16], exs[16:]
    data = tmp_path / "train.jsonl"
    write_examples(data, train_exs)
    # a learning rate far too high: the validation loss gets worse after the first evaluations, so
    # patience 1 must stop the run early
    # fp32 (bf16=False): on a bf16 CPU training would evaluate under bf16 autocast, the check below in fp32
    cfg = load_config(_write_cfg(tmp_path, data, max_steps=16, lr=0.05, batch_size=4, save_every=2,
                                 eval_every=2, early_stopping_patience=1, warmup_ratio=0.0, bf16=False))
    store = RunStore(cfg.run_dir)
    store.split("val").parent.mkdir(parents=True, exist_ok=True)
    write_examples(store.split("val"), val_exs)
    result = run(cfg, store)

    metrics = [json.loads(x) for x in store.metrics.read_text().splitlines()]
    evals = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    assert [s for s, _ in evals] == list(range(2, 2 * len(evals) + 1, 2))  # every eval_every steps
    assert result["steps"] < 16, "early stopping did not stop the run"
    best = min(v for _, v in evals)
    assert evals[-1][1] > best  # it stopped because the last evaluation did not improve
    items = tokenize_examples(val_exs, tokenizer, "chat", 1024).items
    assert abs(_mean_loss(store.merged_dir, tokenizer, items) - best) < 1e-3  # the best checkpoint was kept
    if importlib.util.find_spec("tensorboard") is not None:
        assert list(store.checkpoints_dir.rglob("events.out.tfevents.*")), "no TensorBoard events written"


def test_shared_prefix_len_counts_common_real_tokens() -> None:
    import torch

    from protege.train.loss import shared_prefix_len

    ids = torch.tensor([[1, 2, 3, 4, 5, 0], [1, 2, 3, 9, 0, 0], [1, 2, 3, 4, 7, 7]])
    mask = (ids != 0).long()
    assert shared_prefix_len(ids, mask) == 3
    assert shared_prefix_len(ids[:1], mask[:1]) == 0  # one row: nothing to share
    same = torch.tensor([[5, 6, 7], [5, 6, 7]])
    assert shared_prefix_len(same, torch.ones_like(same)) == 2  # at least one token of each row stays


def test_shared_prefix_path_equals_plain_path_loss_and_grads(tokenizer, student_dir, alpaca_records) -> None:  # type: ignore[no-untyped-def]
    """The chat template's common prefix computed once (keys/values expanded to the batch) gives the same
    loss and LoRA gradients as computing every row in full, with padding in the batch."""
    import torch

    from protege.config import RunConfig
    from protege.train.stage import load_model
    from protege.train.loss import shared_prefix_len, trained_positions_loss
    from protege.train.presets import resolve_plan

    res = tokenize_examples([from_alpaca(r) for r in alpaca_records[:5]], tokenizer, "chat", 512)
    ds = ListDataset(res.items)
    batch = PadCollator(tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 1  # rows of different lengths: padding
    assert shared_prefix_len(batch["input_ids"], batch["attention_mask"]) >= 8  # the template's header
    cfg = RunConfig(run_dir="unused", train={"bf16": False})  # fp32: a bf16 CPU would load the base in bf16
    torch.manual_seed(0)
    model = load_model(student_dir, cfg, resolve_plan(cfg.train))
    with torch.no_grad():  # non-zero adapters, so the k/v adapters of the prefix matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    out = {}
    for share in (False, True):
        model.zero_grad()
        loss = trained_positions_loss(model, batch, share_prefix=share)
        loss.backward()
        out[share] = (loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert abs(out[True][0] - out[False][0]) < 1e-5
    assert out[True][1].keys() == out[False][1].keys() and len(out[True][1]) == 420  # 210 adapted layers x A, B
    for name, g in out[False][1].items():
        assert torch.allclose(out[True][1][name], g, atol=1e-6, rtol=1e-4), name
