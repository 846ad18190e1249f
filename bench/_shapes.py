"""Model shapes and synthetic data the training benchmarks share (random weights: no download, same FLOPs)."""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

SHAPES = {
    # Qwen2.5-0.5B / 7B as published in their config.json
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
}
WORDS = ("order refund parcel arrived help where ticket urgent amount dollars please customer phone broken "
         "delivery address invoice number account payment card late damaged").split()


def qwen_config(shape: str):
    from transformers import Qwen2Config

    return Qwen2Config(max_position_embeddings=32768, **SHAPES[shape])


def build_random_model(shape: str, folder: Path, device: str = "cpu") -> Path:
    """A random-initialised model of `shape` with the tiny test tokenizer (ids stay inside the vocabulary)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tuneloop.testing.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = qwen_config(shape)
    config.eos_token_id, config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    return folder


def write_samples(path: Path, count: int, words: tuple[int, int], seed: int = 0) -> Path:
    """JSON-extraction samples with inputs of `words` (min, max) words."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words)))
            answer = {"intent": rng.choice(["refund", "delivery", "complaint"]), "order_id": f"A{rng.randint(10000, 99999)}"}
            row = {"id": f"b{seed}-{i}", "instruction": "Extract the ticket fields as JSON.", "input": text,
                   "output": json.dumps(answer)}
            handle.write(json.dumps(row) + "\n")
    return path


def work_folder(path: str | None, prefix: str) -> Path:
    """The benchmark's scratch folder: the one asked for, else a fresh temporary one."""
    folder = Path(path or tempfile.mkdtemp(prefix=prefix))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def parameter_count(shape: str, method: str = "full") -> tuple[int, int]:
    """(parameters, of which the matmul N of the 6N/4N FLOP rule): the input embedding is a lookup, not a
    product, so it is left out of N unless tied to the LM head. Counted on the meta device: nothing allocated."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(qwen_config(shape))
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    return total, total if SHAPES[shape]["tie_word_embeddings"] else total - embedding
