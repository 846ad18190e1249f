"""CPU precision, chosen by measurement at run start: bf16 autocast where the CPU's bf16 products are clearly faster.

CPUs with bf16 matrix units (Intel AMX, AVX512-BF16) multiply bf16 several times faster than fp32; CPUs without
them emulate bf16 and run it slower than fp32. So `train.cpu_precision: auto` times the run's typical product,
[tokens x hidden] @ [hidden x hidden], in fp32 and in bf16 for a fraction of a second and takes bf16 only when it
is at least BF16_MIN_SPEEDUP times faster; `fp32` / `bf16` force one. The choice and both timings go into the
run's engine description (run.json, run card). Under bf16 autocast the LoRA weights (the master copy the optimizer
updates) and the frozen base weights stay fp32; only the products run in bf16.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

BF16_MIN_SPEEDUP = 1.5   # a product must be this much faster for a whole step to gain (the step is not all products)
MEASURE_S = 0.15         # seconds of timing per precision


@dataclass
class CpuPrecision:
    dtype: str                  # fp32 | bf16
    setting: str                # auto | fp32 | bf16
    fp32_ms: float | None = None
    bf16_ms: float | None = None
    shape: tuple[int, int] | None = None

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"setting": self.setting, "chosen": self.dtype}
        if self.fp32_ms is not None:
            info.update(fp32_ms=self.fp32_ms, bf16_ms=self.bf16_ms, product=f"[{self.shape[0]} x {self.shape[1]}] @ "
                        f"[{self.shape[1]} x {self.shape[1]}]", rule=f"bf16 when >= {BF16_MIN_SPEEDUP}x faster")
        return info


def product_ms(tokens: int, hidden: int, dtype: torch.dtype, seconds: float = MEASURE_S) -> float:
    """Best time of one [tokens x hidden] @ [hidden x hidden] product in `dtype`, in milliseconds."""
    generator = torch.Generator().manual_seed(0)  # the run's own RNG stream stays untouched
    a = torch.randn(tokens, hidden, generator=generator).to(dtype)
    b = torch.randn(hidden, hidden, generator=generator).to(dtype)
    a @ b  # first call: kernel selection, packing
    best, spent = float("inf"), 0.0
    while spent < seconds:
        start = time.perf_counter()
        a @ b
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
    return best * 1000


def choose_cpu_precision(setting: str, tokens: int, hidden: int) -> CpuPrecision:
    if setting in ("fp32", "bf16"):
        return CpuPrecision(setting, setting)
    if setting != "auto":
        raise ValueError(f"train.cpu_precision is {setting!r}; use auto, fp32 or bf16")
    tokens = max(16, tokens)
    fp32 = product_ms(tokens, hidden, torch.float32)
    bf16 = product_ms(tokens, hidden, torch.bfloat16)
    dtype = "bf16" if bf16 * BF16_MIN_SPEEDUP <= fp32 else "fp32"
    return CpuPrecision(dtype, "auto", round(fp32, 3), round(bf16, 3), (tokens, hidden))


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

