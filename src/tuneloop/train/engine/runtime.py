"""Where the step runs: threads for the cores this process really has, precision, attention, compilation.

Choices, each measured (docs/benchmarks.md, "Training"):
- CPU threads = the cores in this process's affinity mask (a container or `taskset` gives fewer than
  `os.cpu_count()`), one inter-op thread, so OpenMP never runs more threads than cores.
- CPU precision (`train.cpu_precision: auto|fp32|bf16|mixed`, `engine.precision`): `mixed` where the CPU has
  native bf16 products (the frozen base multiplies in bf16, all sums in fp32; `engine/precision.py`), else fp32.
- CPU LoRA dropout: one mask per distinct input of a decoder layer (`engine.dropout`), 4 masks per layer, not 7.
- GPU: bf16 weights and autocast; attention through `flex_attention` with a per-document BlockMask (blocks
  across documents are skipped, not masked), each decoder layer compiled with `torch.compile` (switch: train.compile);
  the caching allocator grows segments in place (`expandable_segments`), so reserved memory stays near what is used.
- Activation recompute (selective checkpointing), from the share of activations the memory planner keeps
  (`engine.memory.choose_recompute`): compiled layers without random ops get torch's partitioner budget
  (`activation_memory_budget`: it recomputes the cheapest ops first, element-wise before matrix products);
  otherwise (eager, or LoRA dropout, whose masks the partitioner cannot replay) that share of the layers is
  checkpointed whole, spread evenly over the depth.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from tuneloop.train.engine.batches import MicroBatch
from tuneloop.train.engine.precision import CpuPrecision


def bench_knob(name: str, default: str) -> str:
    """A measurement knob of bench/train_throughput.py (TUNELOOP_ENGINE_KNOBS="loss=chunked,keep=0.5"), never a setting."""
    for item in os.environ.get("TUNELOOP_ENGINE_KNOBS", "").split(","):
        key, _, value = item.partition("=")
        if key.strip() == name:
            return value.strip()
    return default


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def set_cpu_threads() -> int:
    cores = usable_cores()
    torch.set_num_threads(cores)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already fixed by earlier parallel work in this process
        pass
    return cores


@dataclass
class Recompute:
    """What the backward pass recomputes instead of keeping: `keep` is the share of activations kept."""

    keep: float = 1.0
    how: str = "none"        # none | partitioner | layers
    layers: int = 0          # layers checkpointed whole (how == layers)
    reason: str = ""

    def describe(self) -> dict[str, Any]:
        return {"keep": round(self.keep, 3), "how": self.how, "layers": self.layers, "reason": self.reason}


@dataclass
class Runtime:
    device: torch.device
    flex: bool
    compiled: bool
    threads: int | None
    recompute: Recompute = field(default_factory=Recompute)
    cpu_precision: CpuPrecision | None = None
    fp32_attention: bool = False     # attention outside bf16 autocast (CPU)
    bf16_base: int = 0               # frozen linear layers multiplying in bf16 (CPU, `mixed`)
    shared_dropout: int = 0          # LoRA modules whose dropout shares one mask per distinct input (CPU)

    @property
    def bf16(self) -> bool:
        return self.device.type == "cuda" or (self.cpu_precision is not None and self.cpu_precision.dtype == "bf16")

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def describe(self) -> dict[str, Any]:
        attention = "flex_attention (document BlockMask)" if self.flex else "sdpa (position_ids restart)"
        info = {"engine": "tuneloop", "device": self.device.type,
                "attention": attention + (", fp32 under bf16 autocast" if self.fp32_attention else ""),
                "compiled": self.compiled, "cpu_threads": self.threads,
                "precision": "bf16" if self.bf16 else "mixed" if self.bf16_base else "fp32",
                "recompute": self.recompute.describe()}
        if self.cpu_precision is not None:
            info["cpu_precision"] = self.cpu_precision.describe()
        if self.bf16_base:
            info["bf16_base_layers"] = self.bf16_base
        if self.shared_dropout:
            info["lora_dropout"] = f"one mask per distinct layer input ({self.shared_dropout} LoRA modules)"
        if self.device.type == "cuda":
            info["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
        return info


def prepare_runtime(model: Any, cuda: bool, compile_mode: str, keep: float = 1.0, random_layers: bool = False,
                    reason: str = "", cpu_precision: str = "auto") -> Runtime:
    """Set attention, compilation and activation recompute on `model` (the decoder inside a PEFT wrapper).

    `keep` is the share of activations to keep (1: recompute nothing, 0: every layer checkpointed);
    `random_layers` says the layers draw random numbers in training (LoRA dropout); on the CPU,
    `cpu_precision` (auto | fp32 | bf16) is the CPU's precision (`engine.precision`).
    """
    if not cuda:
        return prepare_cpu_runtime(model, keep, random_layers, reason, cpu_precision)
    if bench_knob("expandable", "1") == "1":
        # one private entry point or the other, by torch version (the older one warns on newer torch)
        settings = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or torch.cuda.memory._set_allocator_settings
        settings("expandable_segments:True")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    flex = _flex_available()
    if flex:
        model.set_attn_implementation("flex_attention")
    compiled = compile_mode == "on" or (compile_mode == "auto" and flex)
    recompute = apply_recompute(model, keep, compiled, random_layers, reason)
    if compiled:
        for layer in decoder_of(model).layers:
            layer.compile(dynamic=False)
    return Runtime(device, flex=flex, compiled=compiled, threads=None, recompute=recompute)


def prepare_cpu_runtime(model: Any, keep: float, random_layers: bool, reason: str, cpu_precision: str) -> Runtime:
    from tuneloop.train.engine.dropout import share_lora_dropout
    from tuneloop.train.engine.precision import choose_cpu_precision, use_bf16_base, use_fp32_attention

    threads = set_cpu_threads()
    precision = choose_cpu_precision(cpu_precision)
    runtime = Runtime(torch.device("cpu"), flex=False, compiled=False, threads=threads, cpu_precision=precision)
    if runtime.bf16:
        use_fp32_attention(model)
        runtime.fp32_attention = True
    elif precision.dtype == "mixed":
        runtime.bf16_base = use_bf16_base(decoder_of(model).layers)
    runtime.shared_dropout = share_lora_dropout(model, decoder_of(model).layers)
    runtime.recompute = apply_recompute(model, keep, compiled=False, random_layers=random_layers, reason=reason)
    return runtime


def apply_recompute(model: Any, keep: float, compiled: bool, random_layers: bool, reason: str = "") -> Recompute:
    """Selective activation checkpointing for the kept share `keep` (see the module docstring)."""
    keep = min(1.0, max(0.0, keep))
    partitioner = recompute_path(compiled, random_layers) == "partitioner"
    if compiled:
        import torch._functorch.config as functorch_config

        # a process-wide setting, read when each compiled layer's backward is partitioned (its first call):
        # every layer gets the budget; set on every compiled run so an earlier run's value never lingers
        functorch_config.activation_memory_budget = keep if partitioner else 1.0
    if keep >= 1.0:
        return Recompute(reason=reason)
    if partitioner:
        return Recompute(keep, "partitioner", reason=reason)
    layers = decoder_of(model).layers
    count = round((1.0 - keep) * len(layers))
    if count == 0:
        return Recompute(reason=reason)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    chosen = spread(len(layers), count)
    for index, layer in enumerate(layers):
        layer.gradient_checkpointing = index in chosen
    return Recompute(1.0 - count / len(layers), "layers", count, reason)


def recompute_path(compiled: bool, random_layers: bool) -> str:
    """`partitioner` where compiled layers draw no random numbers, else `layers` (bench knob recompute= forces one)."""
    forced = bench_knob("recompute", "")
    if forced in ("partitioner", "layers"):
        return forced if compiled or forced == "layers" else "layers"
    return "partitioner" if compiled and not random_layers else "layers"


def spread(total: int, count: int) -> set[int]:
    """`count` of `total` layer indices, evenly spaced over the depth (spread(8, 2) == {3, 7})."""
    return {i for i in range(total) if (i + 1) * count // total > i * count // total}


def _flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import create_block_mask  # noqa: F401
    except ImportError:
        return False
    return True


def decoder_of(model: Any) -> Any:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


def lm_head_of(model: Any) -> Any:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_output_embeddings()


def document_mask(batch: MicroBatch):
    """Causal attention inside each document of the flat row, as a BlockMask (cross-document blocks skipped)."""
    from torch.nn.attention.flex_attention import create_block_mask

    docs = batch.doc_ids

    def same_document_causal(b, h, q, kv):
        return (docs[q] == docs[kv]) & (q >= kv)

    length = docs.shape[0]
    # eager construction: the compiled one (`_compile=True`) was measured no faster (56.6k vs 60.7k tokens/s, 0.5B)
    return create_block_mask(same_document_causal, None, None, length, length, device=docs.device)


def hidden_states(model: Any, runtime: Runtime, batch: MicroBatch) -> torch.Tensor:
    """Last hidden states [L, d] of the flat row (final norm applied), under the runtime's precision."""
    decoder = decoder_of(model)
    kwargs = {"attention_mask": document_mask(batch)} if runtime.flex else {}
    with runtime.autocast():
        out = decoder(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False, **kwargs)
    return out.last_hidden_state[0]
