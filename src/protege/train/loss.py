"""The fast training path: loss only on trained positions, never materialising the full logits.

Why ours: a causal LM's forward computes logits for EVERY position (SmolLM2: 49,152 vocab x 4 bytes =
192 KiB per token, plus as much again for the softmax gradient), although the loss needs only the
positions whose next token is trained (about half of them in Alpaca-style data: prompts are untrained,
padding is untrained). TRL's chunked output layer scores every position, also computes entropy and
accuracy, and recomputes in backward (+40% measured in training-calibration.md). Here we run the
backbone, gather the hidden states of the trained positions only, and compute cross-entropy AND its
gradient chunk by chunk inside one autograd Function (the "fused linear cross-entropy" of Liger kernel,
which needs Triton/GPU, so it is not available on CPU; on CUDA `train.fused_loss` picks liger-kernel's
when installed: `liger_linear_cross_entropy_sum`). Each chunk's logits live only while that chunk is
processed: peak extra memory is `chunk x vocab x 4` bytes instead of `batch x seq x vocab x 4 x ~3`.
Loss and gradients equal the HF model's `labels=` loss (tests/test_train.py checks this).
"""

from __future__ import annotations

from typing import Any

from protege.train.data import IGNORE

# Model types whose CausalLM forward is exactly `lm_head(final hidden states)` (no logit scaling or
# soft-capping), so our loss equals theirs. Others fall back to the model's own loss.
FAST_LOSS_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3", "olmo2"}
LOGIT_CHUNK = 512  # rows per chunk on CPU: 512 x 49,152 x 4 B = 96 MiB of logits at a time
# Logit bytes per chunk: on CPU small chunks stay in cache-friendly sizes; on a GPU, small chunks leave
# the matmuls too small to fill the device, so chunks there hold up to 1 GiB of fp32 logits.
CHUNK_BYTES = {"cpu": 96 * 2**20, "cuda": 2**30}


def chunk_rows(vocab: int, device_type: str) -> int:
    """Rows of logits per chunk for this vocabulary and device (at least 256, at most 16,384)."""
    budget = CHUNK_BYTES.get(device_type, CHUNK_BYTES["cpu"])
    return max(256, min(16_384, budget // (vocab * 4)))


def _fused_ce():  # type: ignore[no-untyped-def]
    import torch

    class FusedLinearCrossEntropy(torch.autograd.Function):
        """sum_i CE(h_i @ W^T, t_i), with dL/dh and dL/dW computed in the forward pass, per chunk."""

        @staticmethod
        def forward(ctx, h, weight, targets, chunk, dtype):  # type: ignore[no-untyped-def]
            # `dtype`: the matmul dtype, the autocast dtype when the caller runs under autocast. Autocast is
            # turned off inside and h / W are cast ONCE: under autocast every matmul below would cast W
            # (vocab x hidden) again, three times per chunk, and W of a frozen LoRA head is never cached.
            need_h = ctx.needs_input_grad[0]
            need_w = ctx.needs_input_grad[1]
            with torch.autocast(h.device.type, enabled=False):
                w = weight.to(dtype)
                hd = h.to(dtype)
                total = torch.zeros((), dtype=torch.float32, device=h.device)
                grad_h = torch.empty_like(h) if need_h else None
                grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if need_w else None
                # Logits are built transposed (vocab x rows, `w @ h.T`): on the measured CPU that matmul ran
                # at 81 GFLOP/s against 62 for `h @ w.T` (row-major 49k-wide output), and the whole chunked
                # loss + gradients took 0.53 s instead of 0.76 s for 400 trained tokens.
                for s in range(0, h.shape[0], chunk):
                    hc, tc = hd[s:s + chunk], targets[s:s + chunk]
                    rows = torch.arange(tc.shape[0], device=h.device)
                    logits_t = (w @ hc.T).float()  # vocab x rows
                    lse = torch.logsumexp(logits_t, dim=0)
                    total += (lse - logits_t[tc, rows]).sum()
                    if need_h or need_w:
                        probs = logits_t.sub_(lse[None, :]).exp_()  # softmax, in place: no second buffer
                        probs[tc, rows] -= 1.0  # d CE / d logits (transposed)
                        p = probs.to(dtype)
                        if need_h:
                            grad_h[s:s + chunk] = p.T @ w
                        if need_w:
                            grad_w += (p @ hc).float()
                    del logits_t
            ctx.save_for_backward(*(t for t in (grad_h, grad_w) if t is not None))
            ctx.has = (need_h, need_w)
            ctx.w_dtype = weight.dtype
            return total

        @staticmethod
        def backward(ctx, grad_out):  # type: ignore[no-untyped-def]
            saved = list(ctx.saved_tensors)
            need_h, need_w = ctx.has
            gh = gw = None
            if need_h:
                g = saved.pop(0)
                gh = g * grad_out.to(g.dtype)
            if need_w:
                gw = (saved.pop(0) * grad_out).to(ctx.w_dtype)
            return gh, gw, None, None, None

    return FusedLinearCrossEntropy


_FN = None


def matmul_dtype(t: Any) -> Any:
    """The dtype matmuls on `t` run in here: the autocast dtype when autocast is on for its device."""
    import torch

    dev = t.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else t.dtype


def fused_linear_cross_entropy_sum(h: Any, weight: Any, targets: Any, chunk: int = LOGIT_CHUNK) -> Any:
    """Sum of token cross-entropies of `h @ weight.T` against `targets` (N x H, V x H, N).

    Matmuls run in `matmul_dtype(h)` (bf16 under bf16 autocast), softmax and the sums in fp32.
    """
    global _FN
    if _FN is None:
        _FN = _fused_ce()
    return _FN.apply(h, weight, targets, chunk, matmul_dtype(h))


_LIGER: dict[str, Any] = {}


def liger_linear_cross_entropy_sum(h: Any, weight: Any, targets: Any) -> Any:
    """The same sum through liger-kernel's fused linear cross-entropy (Triton; CUDA only).

    Run outside autocast on one dtype (the autocast dtype, else the head's): its logits buffer is written
    with `torch.mm(out=...)`, which autocast does not allow. Weight gradients accumulate in fp32.
    """
    import torch

    if "fn" not in _LIGER:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        _LIGER["fn"] = LigerFusedLinearCrossEntropyLoss(reduction="sum", accum_dtype=torch.float32)
    dtype = matmul_dtype(h) if torch.is_autocast_enabled(h.device.type) else weight.dtype
    with torch.autocast(h.device.type, enabled=False):
        return _LIGER["fn"](weight.to(dtype), h.to(dtype), targets).float()


def backbone_and_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder backbone, lm_head) of a (PEFT-wrapped) causal LM when our fast loss applies, else None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    if getattr(cfg, "model_type", None) not in FAST_LOSS_MODEL_TYPES:
        return None
    backbone = getattr(base, "model", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if backbone is None or head is None or getattr(head, "bias", None) is not None:
        return None
    return backbone, head


# Shared-prefix computation: chat-templated rows of a batch usually start with the same tokens (the
# template's default system prompt and the user header: 24 of SmolLM2's ~105 tokens per Alpaca example;
# far more with Orca-style system prompts). Those positions have identical hidden states in every row
# (causal attention: a prefix depends only on itself), so they are computed once and their keys/values
# expanded to the batch; autograd sums the rows' gradients through the expansion, so loss and gradients
# are those of the plain path (tests/test_train.py checks both). Used from this many shared tokens on,
# on CPU in fp32 only (the cpu preset's `Plan.share_prefix`): +8 % on Alpaca batches on 2 EPYC cores, even
# on 8 Xeon cores; under bf16 autocast on that Xeon (AMX) it made steps 1.1-1.4x SLOWER: the prefix is an
# extra 1-row backbone pass (twice the ops per step) whose fixed per-op cost outweighs the cheap bf16
# matmuls it saves (issue 14). Never run on a GPU yet.
MIN_SHARED_PREFIX = 8


def shared_prefix_len(input_ids: Any, attention_mask: Any) -> int:
    """Tokens every row starts with (real tokens only, at least one real token left in each row)."""
    if input_ids.shape[0] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(dim=0) & attention_mask.bool().all(dim=0)
    n = int(same.long().cumprod(0).sum())
    shortest = int(attention_mask.sum(dim=1).min())
    return min(n, shortest - 1)


def _backbone_hidden(backbone: Any, input_ids: Any, mask: Any, prefix: int) -> Any:
    """Last hidden states (B x T x H) of the backbone, the first `prefix` positions computed once."""
    if prefix < MIN_SHARED_PREFIX:
        # A batch without padding needs no mask: attention then runs as plain causal (flash kernels on
        # GPU, no materialised seq x seq mask on CPU). With padding the real mask is passed.
        out = backbone(input_ids=input_ids, attention_mask=None if bool(mask.all()) else mask, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    from transformers import DynamicCache

    import torch

    b = input_ids.shape[0]
    cache = DynamicCache(config=backbone.config)
    kw = _cache_kwarg(backbone)
    head = backbone(input_ids=input_ids[:1, :prefix], use_cache=True, **{kw: cache})
    cache.batch_repeat_interleave(b)  # differentiable copy: each row's gradient flows back to the prefix
    rest = backbone(input_ids=input_ids[:, prefix:], attention_mask=mask, use_cache=True, **{kw: cache})
    return torch.cat([head.last_hidden_state.expand(b, -1, -1), rest.last_hidden_state], dim=1)


def _cache_kwarg(backbone: Any) -> str:
    """transformers >= 5.2x names the cache argument `cache` (`past_key_values` is deprecated)."""
    import inspect

    return "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"


def trained_positions_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None,
                           chunk: int | None = None, share_prefix: bool | None = None,
                           kernel: str = "protege") -> Any:
    """The causal-LM loss over trained positions: sum / num_items_in_batch (or mean when None).

    Same normalisation as transformers' `ForCausalLMLoss`, so gradient accumulation behaves the same.
    `share_prefix` computes the batch's common prefix once (default: on CPU; the trainer passes the plan's
    choice, which is off under bf16).
    `kernel`: "protege" (ours, chunked, any device) or "liger" (liger-kernel, CUDA). The caller enters
    the training autocast (the Trainer's `accelerator.autocast()`): this path calls the backbone directly,
    so the autocast accelerate wraps around `model.forward` does not apply here.
    """
    parts = backbone_and_head(model)
    assert parts is not None, "trained_positions_loss needs a supported decoder (see FAST_LOSS_MODEL_TYPES)"
    backbone, head = parts
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    if share_prefix is None:
        share_prefix = ids.device.type == "cpu"
    prefix = shared_prefix_len(ids, mask) if share_prefix and not getattr(backbone, "gradient_checkpointing",
                                                                              False) else 0
    hidden = _backbone_hidden(backbone, ids, mask, prefix)
    target = inputs["labels"][:, 1:]
    keep = target != IGNORE
    h = hidden[:, :-1][keep]
    t = target[keep]
    if kernel == "liger":
        total = liger_linear_cross_entropy_sum(h, head.weight, t)
    else:
        chunk = chunk or chunk_rows(head.weight.shape[0], h.device.type)
        total = fused_linear_cross_entropy_sum(h, head.weight, t, chunk)
    denom = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    if hasattr(denom, "to"):
        denom = denom.to(total.device)
    return total / denom
