"""Where the step runs: threads for the cores this process really has, precision, attention, compilation.

Choices, each measured (docs/benchmarks.md, "Training"):
- CPU threads = the cores in this process's affinity mask (a container or `taskset` gives fewer than
  `os.cpu_count()`), one inter-op thread, so OpenMP never runs more threads than cores.
- CPU precision fp32: bf16 autocast was measured slower on CPUs without bf16 matrix units (see the benchmark).
- GPU: bf16 weights and autocast; attention through `flex_attention` with a per-document BlockMask (blocks
  across documents are skipped, not masked), each decoder layer compiled with `torch.compile` (switch: train.compile).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from tuneloop.train.engine.batches import MicroBatch

CPU_AUTOCAST_BF16 = os.environ.get("TUNELOOP_CPU_BF16", "0") == "1"  # measurement knob for the benchmark only


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
class Runtime:
    device: torch.device
    flex: bool
    compiled: bool
    threads: int | None

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=CPU_AUTOCAST_BF16)

    def describe(self) -> dict[str, Any]:
        return {"engine": "tuneloop", "device": self.device.type,
                "attention": "flex_attention (document BlockMask)" if self.flex else "sdpa (position_ids restart)",
                "compiled": self.compiled, "cpu_threads": self.threads,
                "precision": "bf16" if self.device.type == "cuda" or CPU_AUTOCAST_BF16 else "fp32"}


def prepare_runtime(model: Any, cuda: bool, compile_mode: str) -> Runtime:
    """Set attention and compilation on `model` (the decoder inside, when a PEFT wrapper holds it)."""
    if not cuda:
        return Runtime(torch.device("cpu"), flex=False, compiled=False, threads=set_cpu_threads())
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    flex = _flex_available()
    if flex:
        model.set_attn_implementation("flex_attention")
    compiled = compile_mode == "on" or (compile_mode == "auto" and flex)
    if compiled:
        for layer in decoder_of(model).layers:
            layer.compile(dynamic=False)
    return Runtime(device, flex=flex, compiled=compiled, threads=None)


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
