"""CPU precision: `mixed` where the CPU multiplies bf16 natively, fp32 elsewhere; `fp32` and `bf16` can be forced.

`mixed` (what `auto` picks on a CPU with avx512_bf16 or AMX): the frozen base weights of a LoRA run multiply in
bf16, from a bf16 copy made once, and their sums come back as fp32. LoRA adapters, norms, attention, the residual
stream, the loss and the optimizer stay fp32:
```
x (fp32) ─ to bf16 ─▶ x16 · W16ᵀ (the frozen base, bf16) ─ to fp32 ─▶ base ──┐
x (fp32) ─ LoRA A, B (PEFT, fp32) ─────────────────────────────────▶ delta ──┴─ + (fp32) ─▶ y
```
Measured on the demo (docs/benchmarks.md, "CPU: mixed precision"): the step about 1.4x and the evaluation 2x
faster than fp32, with the loss within 0.2 % of fp32's at every step (the tiny model over 50 steps: a test).

`bf16` is torch's autocast: every product and its output in bf16. It was measured slower per whole step than
fp32 and 3-6 % off TRL's loss: a small LoRA update added to a bf16 base output is lost to rounding, which is what
`mixed` avoids by keeping that sum in fp32. Under `bf16` attention stays fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

AUTO_REASONS = {
    "mixed": "auto: mixed (frozen base products in bf16, sums and all else fp32): this CPU multiplies bf16 natively; "
             "measured faster than fp32 per step and evaluation, loss within 0.2 %",
    "fp32": "auto: fp32, this CPU has no native bf16 products (avx512_bf16 or AMX)",
}
SETTINGS = ("fp32", "bf16", "mixed")


@dataclass
class CpuPrecision:
    dtype: str                  # fp32 | bf16 | mixed
    setting: str                # auto | fp32 | bf16 | mixed

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"setting": self.setting, "chosen": self.dtype}
        if self.setting == "auto":
            info["reason"] = AUTO_REASONS[self.dtype]
        return info


def choose_cpu_precision(setting: str) -> CpuPrecision:
    if setting in SETTINGS:
        return CpuPrecision(setting, setting)
    if setting != "auto":
        raise ValueError(f"train.cpu_precision is {setting!r}; use auto, fp32, bf16 or mixed")
    return CpuPrecision("mixed" if native_bf16() else "fp32", "auto")


def native_bf16() -> bool:
    """The CPU multiplies bf16 in hardware (avx512_bf16 or AMX); elsewhere a bf16 product is emulated and slower."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


FP32_ATTENTION = "tuneloop_sdpa_fp32"


def _sdpa_fp32(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any):
    """transformers' SDPA attention with autocast off and fp32 inputs (its output goes on to the next product)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    with torch.autocast(query.device.type, enabled=False):
        return sdpa_attention_forward(module, query.float(), key.float(), value.float(), *args, **kwargs)


def use_fp32_attention(model: Any) -> None:
    """Attention in fp32 under CPU bf16 autocast: the bf16 SDPA backward was measured slower than fp32 on the CPU."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(FP32_ATTENTION, _sdpa_fp32)
    ALL_MASK_ATTENTION_FUNCTIONS.register(FP32_ATTENTION, sdpa_mask)  # the same masks as sdpa (packed documents)
    model.set_attn_implementation(FP32_ATTENTION)


def _bf16_base_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    out = torch.nn.functional.linear(x.to(torch.bfloat16), self.tuneloop_bf16_weight).to(x.dtype)
    return out if self.bias is None else out + self.bias


def use_bf16_base(layers: torch.nn.Module) -> int:
    """Frozen `nn.Linear`s in `layers` multiply in bf16 (a bf16 copy of the weight), output in the input's dtype.

    Trainable ones (LoRA adapters, full fine-tuning) keep their fp32 product; returns how many were changed. The
    copy is a non-persistent buffer, so nothing of it reaches a saved adapter or model.
    """
    count = 0
    for module in layers.modules():
        if type(module) is torch.nn.Linear and not module.weight.requires_grad:
            module.register_buffer("tuneloop_bf16_weight", module.weight.detach().to(torch.bfloat16), persistent=False)
            module.forward = _bf16_base_forward.__get__(module)
            count += 1
    return count
