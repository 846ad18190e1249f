"""Throughput of tuneloop's local eval backend against naive batch-1 `generate`, on one GPU.

A randomly initialised model with Qwen2.5-0.5B's shape (built from a config: nothing is downloaded) answers
N prompts of varied length with exactly `--new-tokens` new tokens each (EOS is suppressed with min_new_tokens, so
early stopping cannot flatter either side). Naive batch-1 `generate` runs on a subset and its per-token rate is
extrapolated; the batched backend (length-sorted, left-padded, bf16, sdpa) runs on all prompts.

    python bench/eval_throughput.py                       # H200: 1,000 prompts x 256 new tokens
    python bench/eval_throughput.py --tiny --prompts 32   # CPU smoke run on a tiny shape

Prints one JSON object (also written to --out) with tokens/s of each variant and the speed-up over batch-1.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                  rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True)
WORDS = ("order refund parcel late broken phone ticket urgent invoice account password shipping address "
         "订单 退款 快递 手机 发票 账户 please help where is my amount 59.9 A12345").split()


def build(shape: dict, device: str, dtype_name: str):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tuneloop.testing.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = Qwen2Config(**shape, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None, attn_implementation="sdpa")
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def make_prompts(backend, count: int, seed: int = 0) -> list[str]:
    """Chat-rendered prompts of 20-300 words, like a test set of tickets of varied length."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 300)))
        messages = [{"role": "system", "content": "You extract ticket fields as JSON."},
                    {"role": "user", "content": f"Extract the ticket fields as JSON.\n{text}"}]
        prompts.append(backend.render(messages))
    return prompts


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def naive_rate(model, tokenizer, prompts: list[str], new_tokens: int) -> dict:
    """Batch-1 `model.generate`, one prompt at a time: what a hand-written eval loop does."""
    import torch

    device = next(model.parameters()).device
    ids = [tokenizer(p, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device) for p in prompts]
    with torch.inference_mode():
        model.generate(ids[0], max_new_tokens=8, min_new_tokens=8, do_sample=False)  # warm-up
    synchronize()
    started = time.perf_counter()
    produced = 0
    with torch.inference_mode():
        for prompt_ids in ids:
            out = model.generate(prompt_ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            produced += out.shape[1] - prompt_ids.shape[1]
    synchronize()
    seconds = time.perf_counter() - started
    return {"prompts": len(prompts), "tokens": produced, "seconds": round(seconds, 3), "tokens_per_s": produced / seconds}


def batched_rate(model, tokenizer, prompts: list[str], new_tokens: int, batch_size: int, cache: str | None) -> dict:
    from tuneloop.eval.backends import LocalBackend

    warm_up = LocalBackend(model, tokenizer, batch_size=8, max_new_tokens=4, ignore_eos=True, cache_implementation=cache)
    warm_up.generate(prompts[:8])  # kernels and allocator, kept out of the timing
    backend = LocalBackend(model, tokenizer, batch_size=batch_size, max_new_tokens=new_tokens, ignore_eos=True,
                           cache_implementation=cache)
    synchronize()
    started = time.perf_counter()
    done = 0

    def report_batch(count: int) -> None:  # partial figures survive a run cut short by a time limit
        nonlocal done
        done += count
        print(json.dumps({"batch_size": batch_size, "cache": cache or "dynamic", "prompts_done": done,
                          "seconds": round(time.perf_counter() - started, 2)}), flush=True)

    generations = backend.generate(prompts, progress=report_batch)
    synchronize()
    seconds = time.perf_counter() - started
    produced = sum(g.completion_tokens for g in generations)
    if produced != len(prompts) * new_tokens:
        raise RuntimeError(f"expected {len(prompts) * new_tokens} new tokens, got {produced}: EOS was not suppressed")
    return {"batch_size": batch_size, "cache": cache or "dynamic", "prompts": len(prompts), "tokens": produced,
            "seconds": round(seconds, 3), "tokens_per_s": produced / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--naive-subset", type=int, default=2, help="Prompts run through batch-1 generate.")
    parser.add_argument("--variants", default="1000:dynamic,256:dynamic,256:static",
                        help="Comma-separated BATCH:CACHE pairs of the backend (cache: dynamic or static).")
    parser.add_argument("--tiny", action="store_true", help="Tiny shape, for a CPU smoke run.")
    parser.add_argument("--out", default="eval_throughput.json")
    args = parser.parse_args()

    import torch
    import transformers

    from tuneloop.files import write_json

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = build(TINY if args.tiny else QWEN25_05B, device, "bfloat16" if device == "cuda" else "float32")
    from tuneloop.eval.backends import LocalBackend

    prompts = make_prompts(LocalBackend(model, tokenizer), args.prompts)
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    report = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "shape": "tiny" if args.tiny else "Qwen2.5-0.5B (random init)", "prompts": args.prompts,
        "new_tokens": args.new_tokens, "prompt_tokens": {"min": min(lengths), "max": max(lengths), "mean": sum(lengths) / len(lengths)},
    }
    report["naive_batch1"] = naive_rate(model, tokenizer, prompts[: args.naive_subset], args.new_tokens)
    naive = report["naive_batch1"]["tokens_per_s"]
    print(json.dumps({"naive_batch1": report["naive_batch1"]}), flush=True)
    report["naive_batch1"]["extrapolated_seconds_all"] = round(args.prompts * args.new_tokens / naive, 1)
    report["batched"] = []
    for variant in args.variants.split(","):
        batch_text, _, cache = variant.partition(":")
        batch_size = int(batch_text)
        try:
            row = batched_rate(model, tokenizer, prompts, args.new_tokens, batch_size, None if cache in ("", "dynamic") else cache)
        except Exception as err:  # one failing variant (e.g. out of memory) must not hide the others' figures
            row = {"batch_size": batch_size, "cache": cache, "error": f"{type(err).__name__}: {err}"[:300]}
        if "tokens_per_s" in row:
            row["speedup_vs_batch1"] = round(row["tokens_per_s"] / naive, 1)
        report["batched"].append(row)
        print(json.dumps(row), flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    best = max((r for r in report["batched"] if "tokens_per_s" in r), key=lambda r: r["tokens_per_s"], default=None)
    report["best_speedup"] = best["speedup_vs_batch1"] if best else None
    write_json(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
