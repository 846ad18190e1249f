"""How much GPU memory a training run needs, from the model's config alone (no weights are read).

```
per GPU =  weights            full: 2 B/param (bf16)       lora: 2 B/param      qlora: ~0.56 B/param (NF4 + scales)
        +  gradients          full: 2 B/param              lora/qlora: 4 B per LoRA param (fp32 adapters)
        +  optimizer (AdamW)  full: 4 B/param (2 moments)  lora/qlora: 8 B per LoRA param
        +  LoRA weights       4 B per LoRA param
        +  activations        tokens × layers × bytes/token/layer    (checkpointing: tokens × layers × 2·hidden
                                                                       + one layer's activations)
        +  LM head            tokens × hidden × 8 (fp32 hidden grad; the fused head never builds full logits)
full fine-tuning on N GPUs shards weights, gradients and optimizer states N ways (FSDP2); LoRA replicates (DDP).
```
The shape comes from the model's config.json: a local folder's, the hub's, or, for the common families at the sizes
teams fine-tune (Qwen2.5, Qwen3, Llama 3.x, Mistral 7B, Gemma 2/3, SmolLM2; `model_configs/*.json`, each citing
its source), the published config shipped with tuneloop, so planning needs no network.

The bytes per token per layer count what autograd keeps for a Llama/Qwen-style block in bf16: the two RMSNorms
(fp32 inside), q/k/v before and after rotary, the attention output, the MLP's gate/up/act/product, and with LoRA
the dropout copies of each adapted layer's input.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

GIB = 2**30
CARDS = ((24, "one 24 GB card (RTX 4090 / L4 / A10-class)"), (48, "one 48 GB card (L40S / A6000)"),
         (80, "one 80 GB card (A100 / H100)"), (141, "one 141 GB H200"))
HEADROOM = 0.9  # leave 10 % for the CUDA context, allocator fragmentation and spikes
CONFIG_DIR = Path(__file__).with_name("model_configs")


@dataclass
class ModelShape:
    name: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool
    source: str = ""  # where the config came from: a config.json path, a hub id, or a shipped config's URL
    max_positions: int | None = None

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def params(self) -> int:
        attention = self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_dim * 2
        mlp = 3 * self.hidden * self.intermediate
        per_layer = attention + mlp + 2 * self.hidden
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * per_layer + embeddings + self.hidden

    def lora_params(self, rank: int) -> int:
        """A and B of every linear layer (q, k, v, o, gate, up, down)."""
        q_out = self.heads * self.head_dim
        pairs = [(self.hidden, q_out), (self.hidden, self.kv_dim), (self.hidden, self.kv_dim), (q_out, self.hidden),
                 (self.hidden, self.intermediate), (self.hidden, self.intermediate), (self.intermediate, self.hidden)]
        return self.layers * sum(rank * (i + o) for i, o in pairs)


def shape_from_config(config: Any, name: str = "", source: str = "") -> ModelShape:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return ModelShape(name=name or getattr(text, "_name_or_path", ""), vocab=text.vocab_size, hidden=text.hidden_size,
                      layers=text.num_hidden_layers, heads=heads, kv_heads=getattr(text, "num_key_value_heads", None) or heads,
                      head_dim=head_dim, intermediate=text.intermediate_size,
                      tied=bool(getattr(text, "tie_word_embeddings", False)), source=source,
                      max_positions=getattr(text, "max_position_embeddings", None))


@functools.cache
def shipped_configs() -> dict[str, dict[str, Any]]:
    """The configs shipped in model_configs/, by lower-cased hub id (each file lists the ids that share it)."""
    table: dict[str, dict[str, Any]] = {}
    for path in sorted(CONFIG_DIR.glob("*.json")):
        config = json.loads(path.read_text(encoding="utf-8"))
        for model_id in config["ids"]:
            table[model_id.lower()] = config
    return table


def shipped_shape(model: str) -> ModelShape | None:
    """The shape of a model whose published config ships with tuneloop (hub ids match case-insensitively)."""
    config = shipped_configs().get(model.lower())
    if config is None:
        return None
    return shape_from_config(SimpleNamespace(**config), source=config["source"], name=model)


def shipped_families() -> str:
    """The shipped configs by family, e.g. `qwen2.5 0.5b/1.5b/3b`, for error messages."""
    sizes: dict[str, list[str]] = {}
    for path in sorted(CONFIG_DIR.glob("*.json"), key=lambda p: _size_key(p.stem)):
        family, size = _family_and_size(path.stem)
        sizes.setdefault(family, []).append(size)
    listed = ", ".join(f"{family} {'/'.join(found)}" for family, found in sorted(sizes.items()))
    return f"{listed} (base and instruct ids, e.g. Qwen/Qwen2.5-7B-Instruct)"


def _family_and_size(stem: str) -> tuple[str, str]:
    match = re.match(r"^(.*?)-(\d+(?:\.\d+)?[bm])(.*)$", stem)
    return (match.group(1), match.group(2) + match.group(3)) if match else (stem, "")


def _size_key(stem: str) -> float:
    size = _family_and_size(stem)[1]
    number = re.match(r"[\d.]+", size)
    return float(number.group()) * (1e-3 if size[len(number.group()):].startswith("m") else 1) if number else 0.0


def read_shape(model: str) -> ModelShape:
    """The model's shape from its config only: a local folder, `default` or a shipped id (offline), or the hub.

    A hub id that is neither shipped nor cached fails at once when the hub cannot be reached (models.resolve_model).
    """
    from tuneloop.models import DEFAULT_HUB_ID, DEFAULT_NAME, ModelError, resolve_model

    folder = Path(model).expanduser()
    if not folder.exists():
        shipped = shipped_shape(DEFAULT_HUB_ID if model == DEFAULT_NAME else model)
        if shipped is not None:
            shipped.name = model
            return shipped
    try:
        path = resolve_model(model, pull=False)
    except ModelError as err:
        if folder.exists() or model == DEFAULT_NAME:
            raise
        raise ModelError(f"{err} Offline, `tuneloop plan` knows: {shipped_families()}.") from None
    adapter = Path(path) / "adapter_config.json"
    if not (Path(path) / "config.json").exists() and adapter.exists():  # a LoRA run folder: plan its base model
        return read_shape(json.loads(adapter.read_text(encoding="utf-8"))["base_model_name_or_path"])
    from transformers import AutoConfig

    source = str(Path(path) / "config.json") if Path(path).exists() else f"hub: {path}"
    return shape_from_config(AutoConfig.from_pretrained(path), name=model, source=source)


def activation_bytes_per_token_layer(shape: ModelShape, method: str) -> float:
    h, kv, inter = shape.hidden, shape.kv_dim, shape.intermediate
    q = shape.heads * shape.head_dim
    norms = 2 * (2 * h + 4 * h + 2 * h)          # bf16 in, fp32 normalised, bf16 out — twice per block
    attention = 2 * ((q + 2 * kv) + (q + kv) + q)  # q/k/v, rotated q/k, attention output (flash/SDPA keeps no L×L)
    mlp = 2 * (4 * inter + h)                     # gate, up, act(gate), act·up; residual
    lora = 3 * (3 * h + q + 2 * h + inter) if method in ("lora", "qlora") else 0  # dropout copy (bf16) + mask per input
    return norms + attention + mlp + lora


def compiled_activation_bytes_per_token_layer(shape: ModelShape, method: str, lora_dropout: bool = True) -> float:
    """What a `torch.compile`d block keeps for backward (its partitioner recomputes the other element-wise ops):
    the block's input and mid-block residual, both normalised matmul inputs, two fp32 RMS factors, rotated
    q/k/v, the attention output and its fp32 log-sum-exp per head, the MLP's gate, up and product; with LoRA
    dropout, each adapted layer's dropped input. Measured on one H200 at 8,192 tokens (docs/benchmarks.md,
    engine): 42.9 KB/token/layer for Qwen2.5-0.5B full (this gives 40.5), 254.6 for 7B LoRA (this gives 239.7)."""
    h, kv, inter = shape.hidden, shape.kv_dim, shape.intermediate
    q = shape.heads * shape.head_dim
    kept = 2 * (4 * h) + 2 * 4 + 2 * (q + 2 * kv) + 2 * q + 4 * shape.heads + 2 * (3 * inter)
    lora = 2 * (3 * h + q + 2 * h + inter) if method in ("lora", "qlora") and lora_dropout else 0
    return kept + lora


@dataclass
class Plan:
    shape: ModelShape
    method: str
    seq_len: int
    batch: int
    gpus: int
    parts: dict[str, float] = field(default_factory=dict)  # GiB per GPU
    checkpointed_activations_gib: float = 0.0
    recommendation: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def params_b(self) -> float:
        return self.shape.params / 1e9

    @property
    def total_gib(self) -> float:
        return sum(self.parts.values())

    @property
    def total_checkpointed_gib(self) -> float:
        return self.total_gib - self.parts["activations"] + self.checkpointed_activations_gib

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.shape.name, "params_b": round(self.params_b, 3), "method": self.method,
                "seq_len": self.seq_len, "batch": self.batch, "gpus": self.gpus,
                "parts_gib": {k: round(v, 3) for k, v in self.parts.items()},
                "total_gib": round(self.total_gib, 2), "total_checkpointed_gib": round(self.total_checkpointed_gib, 2),
                "recommendation": self.recommendation, "config_source": self.shape.source,
                "warnings": self.warnings}


def estimate(shape: ModelShape, method: str, seq_len: int, batch: int = 1, gpus: int = 1, lora_rank: int = 16,
             compiled: bool = False) -> Plan:
    """Memory per GPU for one training step, and the smallest setup that holds it (`compiled`: the engine's
    compiled layers on a GPU, which keep fewer activations than eager autograd)."""
    params = shape.params
    lora = shape.lora_params(lora_rank) if method != "full" else 0
    shards = gpus if method == "full" else 1
    embeddings = shape.vocab * shape.hidden * (1 if shape.tied else 2)
    weight_bytes = {"full": 2 * params, "lora": 2 * params,
                    "qlora": 0.5625 * (params - embeddings) + 2 * embeddings}[method]
    tokens = seq_len * batch
    per_layer = (compiled_activation_bytes_per_token_layer if compiled else activation_bytes_per_token_layer)(shape, method)
    plan = Plan(shape, method, seq_len, batch, gpus)
    plan.parts = {
        "weights": weight_bytes / shards / GIB,
        "gradients": (2 * params / shards if method == "full" else 4 * lora) / GIB,
        "optimizer": (4 * params / shards if method == "full" else 8 * lora) / GIB,
        "lora_weights": 4 * lora / GIB,
        "activations": tokens * shape.layers * per_layer / GIB,
        "lm_head": tokens * shape.hidden * 8 / GIB,
    }
    plan.checkpointed_activations_gib = tokens * (shape.layers * 2 * shape.hidden + per_layer) / GIB
    plan.recommendation = recommend(plan)
    if shape.max_positions and seq_len > shape.max_positions:
        plan.warnings.append(f"--seq-len {seq_len} is longer than the model's max_position_embeddings "
                             f"({shape.max_positions}); it was not trained on rows that long.")
    return plan


def recommend(plan: Plan) -> str:
    need, need_ckpt = plan.total_gib, plan.total_checkpointed_gib
    for size, card in CARDS:
        if need <= size * HEADROOM:
            return f"{card}" + (f" per process ({plan.gpus} GPUs)" if plan.gpus > 1 else "")
        if need_ckpt <= size * HEADROOM:
            return f"{card} with gradient checkpointing" + (f" per process ({plan.gpus} GPUs)" if plan.gpus > 1 else "")
    if plan.method == "full":
        states = (plan.parts["weights"] + plan.parts["gradients"] + plan.parts["optimizer"]) * plan.gpus
        room = 80 * HEADROOM - plan.checkpointed_activations_gib - plan.parts["lm_head"]
        if room > 0:
            return f"{math.ceil(states / room)} × 80 GB GPUs with FSDP2 and gradient checkpointing (--gpus N)"
    if plan.method == "lora":
        return "too large for one card with LoRA: use --method qlora, or full fine-tuning sharded over several GPUs"
    return "too large for one 141 GB card even in 4-bit: shorten --seq-len or use more GPUs with FSDP2"
