"""What makes a training step fast on a GPU without changing what it computes.

- `compile_decoder_layers`: regional `torch.compile`, i.e. `nn.Module.compile()` on each decoder layer
  (the module classes the model names in `_no_split_modules`, as FSDP's auto-wrap does), so one compiled
  graph is reused by all identical layers: compile time is one layer's, not the whole model's, and the
  loss, PEFT wrappers and Trainer stay eager. This is the recipe PyTorch documents as "regional
  compilation"; transformers has no training-side switch for it (`TrainingArguments.torch_compile`
  compiles the whole model, which recompiles for every new batch shape and takes minutes on 1B models).
- `master_weight_adamw`: AdamW that steps fp32 master copies of bf16 parameters. Why ours: a full
  fine-tune with bf16 weights (what makes SDPA take its flash kernels and halves weight/gradient/
  activation memory) needs an optimizer whose update is not rounded away. torch.optim.AdamW on bf16
  weights adds `lr * update` in bf16: with lr 1e-5 and weights of size ~0.02 (bf16 spacing there:
  1.2e-4) every update is below half a spacing and the weights do not move at all
  (tests/test_train_gpu_options.py shows it). torchao's bf16 stochastic rounding and optimi's Kahan
  summation fix this too, but neither is in the image we measure on nor a dependency of ours; the
  transformers Trainer has no master-weight option outside DeepSpeed/FSDP mixed precision. The cost is
  4 bytes/parameter of fp32 master copy (AdamW's two moments are fp32 either way) and one fp32 grad copy
  during the step; the step itself is torch's fused (or foreach) AdamW on the fp32 copies.
"""

from __future__ import annotations

from typing import Any


def decoder_layers(model: Any) -> list[Any]:
    """The model's repeated decoder-layer modules (by `_no_split_modules` class name), PEFT-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def compile_decoder_layers(model: Any, backend: str | None = None) -> int:
    """`torch.compile` each decoder layer in place (regional compilation); returns how many were compiled.

    `backend=None` is inductor (Triton kernels on GPU, C++ on CPU); tests pass "eager" to check the wiring
    without a compiler.
    """
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(**({"backend": backend} if backend else {}))
    return len(layers)


def is_compiled(module: Any) -> bool:
    """True when `module.compile()` was applied (nn.Module keeps the compiled call in `_compiled_call_impl`)."""
    return getattr(module, "_compiled_call_impl", None) is not None


def master_weight_adamw():  # type: ignore[no-untyped-def]
    """The `MasterWeightAdamW` class (built lazily: torch must not be imported at CLI start)."""
    import torch

    class MasterWeightAdamW(torch.optim.AdamW):
        """torch AdamW over fp32 master copies of the (bf16) model parameters it is given.

        Each `step()`: the model parameters' gradients are cast to fp32 onto the masters, AdamW (fused or
        foreach, as configured) updates the masters, and the masters are copied back into the model
        parameters (rounded to nearest). fp32 parameters are stepped in place (no copy). The masters are
        part of `state_dict()`, so a resumed run continues from the exact fp32 values.
        """

        def __init__(self, params: Any, **kw: Any) -> None:
            groups = list(params)
            if groups and not isinstance(groups[0], dict):
                groups = [{"params": groups}]
            self.model_params: list[Any] = []
            self.masters: list[Any] = []
            master_groups = []
            for g in groups:
                ps = list(g["params"])
                ms = [p if p.dtype == torch.float32 else p.detach().to(torch.float32) for p in ps]
                self.model_params += ps
                self.masters += ms
                master_groups.append({**g, "params": ms})
            super().__init__(master_groups, **kw)

        def _pairs(self) -> tuple[list[Any], list[Any]]:
            low, high = [], []
            for p, m in zip(self.model_params, self.masters):
                if p is not m:
                    low.append(p)
                    high.append(m)
            return low, high

        @torch.no_grad()
        def step(self, closure: Any = None) -> Any:  # type: ignore[override]
            low, high = self._pairs()
            for p, m in zip(low, high):
                m.grad = None if p.grad is None else p.grad.to(torch.float32)
            loss = super().step(closure)
            if low:
                torch._foreach_copy_(low, high)
            for m in high:
                m.grad = None
            return loss

        def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
            sd = super().state_dict()
            sd["master_weights"] = self._pairs()[1]  # saved as they are (torch.save copies)
            return sd

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
            sd = dict(state_dict)
            saved = sd.pop("master_weights", None)
            super().load_state_dict(sd)
            low, high = self._pairs()
            if saved is not None and len(saved) == len(high):
                with torch.no_grad():
                    for m, s in zip(high, saved):
                        m.copy_(s)
                    if low:
                        torch._foreach_copy_(low, high)

    return MasterWeightAdamW


# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) from the vendors' datasheets, matched against
# torch.cuda.get_device_name(); only these cards get an MFU in the metrics (tokens/s are always logged).
PEAK_BF16_FLOPS = [
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("GH200", 989e12), ("H20", 148e12),
    ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
    ("A10", 125e12),
]


def peak_bf16_flops(device_name: str) -> float | None:
    """The card's dense bf16 peak, or None for a card not in `PEAK_BF16_FLOPS`."""
    for key, flops in PEAK_BF16_FLOPS:
        if key in device_name:
            return flops
    return None


def train_flops_per_token(model: Any) -> float:
    """Matmul FLOPs one trained token costs: 2N forward + 2N input gradients + 2N' weight gradients.

    N = weights of every nn.Linear (the LM head included, the input embedding not: it is a lookup), N' =
    those being trained. A full fine-tune gives the usual 6N; LoRA about 4N (frozen weights need no
    weight gradient). Attention-score FLOPs are not counted (the usual MFU convention).
    """
    import torch

    n = n_trained = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            n += m.weight.numel()
            n_trained += m.weight.numel() if m.weight.requires_grad else 0
    return float(4 * n + 2 * n_trained)
