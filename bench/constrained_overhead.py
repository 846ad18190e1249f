"""Per-token cost of xgrammar-constrained JSON decoding versus free decoding in the embedded server's engine.

Runs the embedded default (SmolLM2-135M-Instruct) on CPU through `tuneloop.serve.generation.Engine`, one request
at a time, on the same prompts: free text, then json_schema-constrained. Reports ms per generated token for each
and the overhead of constrained decoding (target ≤ 10 %).

Usage: HF_HUB_OFFLINE=1 .venv/bin/python bench/constrained_overhead.py [--model default] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

SCHEMA = {
    "type": "object",
    "properties": {
        "intent": {"type": "string", "enum": ["refund", "delivery", "complaint", "other"]},
        "order_id": {"type": ["string", "null"]},
        "urgency": {"type": "string", "enum": ["low", "medium", "high"]},
        "items": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "quantity": {"type": "integer"}}, "required": ["name", "quantity"]}},
        "summary": {"type": "string"},
    },
    "required": ["intent", "order_id", "urgency", "items", "summary"],
}
PROMPTS = [
    "My order A12345 with two phone cases never arrived and I want a refund now.",
    "Where is my parcel B77? It was one pair of shoes and it's a week late.",
    "The blender I got (order C9) is broken, please send a replacement soon.",
    "I was charged twice for order D443: three notebooks. Fix it.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from tuneloop.models import load_causal_lm
    from tuneloop.serve.generation import Engine, GenerationRequest

    torch.set_num_threads(args.threads)
    model, tokenizer = load_causal_lm(args.model, dtype=torch.float32, device="cpu")
    engine = Engine(model, tokenizer)
    system = "Extract the support ticket as JSON with intent, order_id, urgency, items and summary."
    prompts = [engine.encode_chat([{"role": "system", "content": system}, {"role": "user", "content": p}])
               for p in PROMPTS]
    response_format = {"type": "json_schema", "json_schema": {"name": "ticket", "schema": SCHEMA}}
    engine.grammars.compile(response_format)  # compile once, as the server's cache does
    engine.generate([GenerationRequest(prompts[0], max_tokens=4, temperature=0)])  # warm-up

    def run(constrained: bool) -> tuple[float, int, list[str]]:
        seconds, tokens, texts = 0.0, 0, []
        for prompt in prompts:
            request = GenerationRequest(prompt, max_tokens=args.max_tokens, temperature=0,
                                        response_format=response_format if constrained else None)
            started = time.perf_counter()
            result = engine.generate([request])[0]
            seconds += time.perf_counter() - started
            tokens += max(1, result.completion_tokens + (result.finish_reason == "stop"))
            texts.append(result.text)
        return seconds * 1000 / tokens, tokens, texts

    free, constrained = [], []
    for _ in range(args.rounds):  # interleaved so machine noise hits both sides alike
        free.append(run(False))
        constrained.append(run(True))
    free_ms = statistics.median(r[0] for r in free)
    constrained_ms = statistics.median(r[0] for r in constrained)
    valid = sum(1 for text in constrained[-1][2] if _valid(text))
    print(json.dumps({
        "model": args.model, "threads": args.threads, "max_tokens": args.max_tokens, "prompts": len(prompts),
        "free_ms_per_token": round(free_ms, 2), "constrained_ms_per_token": round(constrained_ms, 2),
        "overhead_pct": round(100 * (constrained_ms / free_ms - 1), 1),
        "free_tokens": free[-1][1], "constrained_tokens": constrained[-1][1],
        "constrained_schema_valid": f"{valid}/{len(prompts)}", "example": constrained[-1][2][0],
    }, ensure_ascii=False, indent=2))


def _valid(text: str) -> bool:
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), SCHEMA)
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


if __name__ == "__main__":
    main()
