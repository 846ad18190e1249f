"""LoRA dropout with one mask per distinct input of a decoder layer (CPU): 4 masks per layer instead of PEFT's 7.

PEFT gives every LoRA module its own `nn.Dropout`, so one decoder layer draws 7 masks per forward pass:
```
  x_attn ──▶ q_proj ─┐                         PEFT: dropout(x_attn) three times (3 masks)
         ──▶ k_proj  ├─ the very same tensor    here: dropout(x_attn) once, its result given to all three
         ──▶ v_proj ─┘
  attn   ──▶ o_proj                             one mask (a different input)
  x_mlp  ──▶ gate_proj ─┬─ the same tensor      one mask for both
         ──▶ up_proj  ──┘
  act    ──▶ down_proj                          one mask
```
One mask per distinct input is what LoRA on a fused qkv or gate-up projection does (PEFT applies one dropout to a
fused projection's input), so each LoRA module still sees standard dropout at rate p. On the 2-core CPU the masks
were 16 % of a step (docs/benchmarks.md, "CPU: engine vs TRL on the demo").

The layer's shared module keeps the last (input, dropped input) pair, keyed on the input tensor's identity (a held
reference, so no other tensor can take its id); a forward hook on the decoder layer drops the pair when the layer
returns. Under activation checkpointing the recompute replays the layer with the RNG state it started with and new
input objects, so it draws the same masks in the same order.

The mask comes from 15 random bits per element, two elements to each 31-bit draw of `random_` on int32 (measured
2.7x faster than `bernoulli_` on the CPU, docs/benchmarks.md): an element is dropped when its bits fall under
round(p * 32768), so the rate is p rounded to a multiple of 2**-15 (off by at most 1.5e-5: 0.05 becomes
0.0499878), and kept elements are scaled by 1 / (1 - that rate), so the expectation is exactly the input.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

BITS = 15  # per element: int32 `random_()` gives 31 uniform bits; each 16-bit half keeps its low 15
LEVELS = 1 << BITS


class SharedInputDropout(nn.Module):
    """Dropout at rate `p` that gives every caller of one input tensor the same dropped tensor."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout rate {p} is outside [0, 1)")
        self.p = p
        # bits are uniform over [0, 2**15): dropped where bits < threshold
        self.threshold = round(p * LEVELS)
        self.rate = round(p * LEVELS) / LEVELS
        self.scale = 1.0 / (1.0 - self.rate)
        self._input: torch.Tensor | None = None
        self._output: torch.Tensor | None = None
        self.draws = 0  # masks drawn (tests and the profile read it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        if self._input is x:
            return self._output
        words = torch.empty((x.numel() + 1) // 2, dtype=torch.int32, device=x.device).random_()
        bits = (words.view(torch.int16)[: x.numel()] & (LEVELS - 1)).view(x.shape)
        keep = (bits >= self.threshold).to(x.dtype).mul_(self.scale)
        out = x * keep
        self._input, self._output = x, out
        self.draws += 1
        return out

    def release(self) -> None:
        self._input = self._output = None

    def extra_repr(self) -> str:
        return f"p={self.p}, rate={self.rate:.10f}, one mask per distinct input"


def share_lora_dropout(model: Any, layers: Any) -> int:
    """Put one SharedInputDropout per decoder layer in place of the layer's PEFT LoRA dropouts (adapter `default`).

    Returns the number of LoRA modules rewired (0 when the model has no LoRA dropout, e.g. rate 0 or full tuning).
    """
    rewired = 0
    for layer in layers:
        shared: SharedInputDropout | None = None
        for module in layer.modules():
            dropouts = getattr(module, "lora_dropout", None)
            if not isinstance(dropouts, nn.ModuleDict) or not isinstance(dropouts["default"] if "default" in dropouts
                                                                         else None, nn.Dropout):
                continue
            p = dropouts["default"].p
            if shared is None:
                shared = SharedInputDropout(p)
                layer.register_forward_hook(lambda mod, args, out, s=shared: s.release())
            elif shared.p != p:
                raise ValueError(f"LoRA dropout rates differ inside one layer ({shared.p} and {p})")
            shared.train(dropouts["default"].training)
            dropouts["default"] = shared
            rewired += 1
    return rewired
