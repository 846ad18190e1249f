"""CPU precision: fp32 unless `train.cpu_precision: bf16` asks for bf16 autocast.

`auto` (the default) is fp32, by measurement of the whole step: on the 2-core AMX CPU the bf16 product alone
measured about 5x faster than fp32 ([256 x 576] @ [576 x 576]: 0.11 vs 0.53 ms), yet the demo's LoRA step ran
slower under bf16 autocast (172 vs 186 tokens/s, alternated runs, 2026-12-02) and its loss drifted 3-6 % from
TRL's, where fp32 stays within 1 % (docs/benchmarks.md, "CPU: engine vs TRL on the demo"). `bf16` remains a
setting for CPUs and shapes where a user measures it faster. Under bf16 autocast the LoRA weights (the master copy
the optimizer updates) and the frozen base weights stay fp32; only the products run in bf16, attention in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

AUTO_REASON = ("auto: fp32, measured faster per whole LoRA step than bf16 autocast on the CPU and within 1 % of "
               "TRL's loss (bf16: 3-6 % off)")


@dataclass
class CpuPrecision:
    dtype: str                  # fp32 | bf16
    setting: str                # auto | fp32 | bf16

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"setting": self.setting, "chosen": self.dtype}
        if self.setting == "auto":
            info["reason"] = AUTO_REASON
        return info


def choose_cpu_precision(setting: str) -> CpuPrecision:
    if setting in ("fp32", "bf16"):
        return CpuPrecision(setting, setting)
    if setting != "auto":
        raise ValueError(f"train.cpu_precision is {setting!r}; use auto, fp32 or bf16")
    return CpuPrecision("fp32", "auto")


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

