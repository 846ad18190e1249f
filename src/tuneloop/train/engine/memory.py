"""How much of a step's activations to keep: a default measured per recompute path, or the user's budget.

```
planned peak(keep) = weights + gradients + optimizer + LM head        (train/plan.py, from the config alone)
                   + every layer recomputed (layer inputs + one layer's activations)
                   + keep × (activations kept without recompute − that floor)
keep = the largest share in [0, 1] with planned peak(keep) ≤ train.memory_budget_gib
```
Without a budget the GPU default is DEFAULT_KEEP for the path `runtime.apply_recompute` takes (one H200,
Qwen2.5 shapes, 8,192-token steps; docs/benchmarks.md, "engine"):
- partitioner (compiled layers, no random ops, e.g. full fine-tuning): keep 0.25 cost 0.8 % of tokens/s and halved
  the memory beyond the weights (0.5B full: 95.3k → 94.5k tokens/s, 10.6 → 5.1 GiB);
- layers (LoRA dropout, or eager): keep 0.5 checkpoints every other layer (7B LoRA: 15.8k → 13.2k tokens/s,
  55.0 → 30.9 GiB), which is what keeps a 7B LoRA step under half of TRL's memory.
A budget replaces the default both ways: a roomy one recomputes nothing (the fastest step), a tight one more.
On the CPU memory is not what binds the step, so nothing is recomputed unless asked.
`train.gradient_checkpointing: true` is keep = 0.
"""

from __future__ import annotations

from typing import Any

from tuneloop.train.engine.runtime import bench_knob, recompute_path

DEFAULT_KEEP = {"partitioner": 0.25, "layers": 0.5}


def choose_recompute(model_config: Any, method: str, tokens: int, budget_gib: float | None,
                     gradient_checkpointing: bool, cuda: bool, compiled: bool, random_layers: bool) -> tuple[float, str]:
    """(keep, the reason in words) for micro-steps of `tokens` tokens."""
    from tuneloop.train.plan import estimate, shape_from_config

    knob = bench_knob("keep", "")
    if knob:
        return float(knob), f"benchmark knob keep={knob}"
    if gradient_checkpointing:
        return 0.0, "train.gradient_checkpointing: every layer recomputed"
    path = recompute_path(compiled, random_layers)
    if budget_gib is None:
        if not cuda:
            return 1.0, "CPU: nothing recomputed (set train.memory_budget_gib to trade speed for memory)"
        keep = DEFAULT_KEEP[path]
        return keep, (f"default for the {path} path: keep {keep:.0%} of the activations "
                      "(train.memory_budget_gib chooses by budget instead)")
    plan = estimate(shape_from_config(model_config), method, seq_len=tokens, batch=1, compiled=compiled)
    fixed = plan.total_gib - plan.parts["activations"]
    floor, full = plan.checkpointed_activations_gib, plan.parts["activations"]
    if fixed + full <= budget_gib:
        return 1.0, f"planned {fixed + full:.1f} GiB fits train.memory_budget_gib {budget_gib:g}: nothing recomputed"
    keep = max(0.0, min(1.0, (budget_gib - fixed - floor) / max(1e-9, full - floor)))
    planned = fixed + floor + keep * (full - floor)
    note = "" if planned <= budget_gib + 1e-6 else " (over the budget even with every layer recomputed: shorten max_length)"
    return keep, (f"train.memory_budget_gib {budget_gib:g}: keep {keep:.0%} of {full:.1f} GiB activations, "
                  f"planned peak {planned:.1f} GiB{note}")
