"""Per-token cost of xgrammar-constrained JSON decoding versus free decoding in the embedded server's engine.

Runs the embedded default (SmolLM2-135M-Instruct) on CPU through `tuneloop.decoding.engine.Engine`, one request
at a time, greedy, on the same prompts for both arms:

```
warm-up     constrained run per prompt → its step count n (greedy: the same every time); free run per prompt
rounds      per prompt, free and constrained back to back, order alternating (A B, then B A), so load from
            other processes hits both arms alike
free arm    max_tokens = min_tokens = n: stop tokens masked, so both arms run exactly n model steps per prompt
result      per round and arm: ms per step (prefill included, same prompts and steps in both arms);
            medians over rounds, overhead = constrained / free − 1; 1-minute load average before and after
```

Usage: HF_HUB_OFFLINE=1 .venv/bin/python bench/constrained_overhead.py [--max-tokens 64] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os
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
SYSTEM = "Extract the support ticket as JSON with intent, order_id, urgency, items and summary."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from tuneloop.models import load_causal_lm
    from tuneloop.decoding.engine import Engine, GenerationRequest
    from tuneloop.train.templates import prompt_ids

    torch.set_num_threads(args.threads)
    model, tokenizer = load_causal_lm(args.model, dtype=torch.float32, device="cpu")
    engine = Engine(model, tokenizer)
    prompts = [prompt_ids(tokenizer, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}])
               for p in PROMPTS]
    response_format = {"type": "json_schema", "json_schema": {"name": "ticket", "schema": SCHEMA}}

    def request(index: int, constrained: bool, steps: int = args.max_tokens) -> GenerationRequest:
        if constrained:
            return GenerationRequest(prompts[index], max_tokens=args.max_tokens, temperature=0,
                                     response_format=response_format)
        return GenerationRequest(prompts[index], max_tokens=steps, min_tokens=steps, temperature=0)

    def timed(req: GenerationRequest) -> tuple[float, int, str]:
        started = time.perf_counter()
        result = engine.generate([req])[0]
        seconds = time.perf_counter() - started
        return seconds, result.completion_tokens + (result.finish_reason == "stop"), result.text

    # warm-up, which also fixes each prompt's step count (the constrained answer's length, stop token included)
    answers = [timed(request(i, True)) for i in range(len(prompts))]
    steps = [a[1] for a in answers]
    for i in range(len(prompts)):
        timed(request(i, False, steps[i]))

    load_before = os.getloadavg()
    per_round = {"free": [], "constrained": []}
    for round_index in range(args.rounds):
        totals = {"free": [0.0, 0], "constrained": [0.0, 0]}
        for i in range(len(prompts)):
            arms = ["free", "constrained"] if (round_index + i) % 2 == 0 else ["constrained", "free"]
            for arm in arms:
                seconds, taken, _ = timed(request(i, arm == "constrained", steps[i]))
                if taken != steps[i]:
                    raise SystemExit(f"prompt {i}: the {arm} arm ran {taken} steps, expected {steps[i]}; "
                                     "the arms would not be comparable.")
                totals[arm][0] += seconds
                totals[arm][1] += taken
        for arm, (seconds, taken) in totals.items():
            per_round[arm].append(1000 * seconds / taken)
    load_after = os.getloadavg()

    free_ms = statistics.median(per_round["free"])
    constrained_ms = statistics.median(per_round["constrained"])
    paired = [100 * (c / f - 1) for f, c in zip(per_round["free"], per_round["constrained"])]
    print(json.dumps({
        "model": args.model, "threads": args.threads, "max_tokens": args.max_tokens, "rounds": args.rounds,
        "prompts": len(prompts), "steps_per_prompt": steps,
        "free_ms_per_token": round(free_ms, 2), "constrained_ms_per_token": round(constrained_ms, 2),
        "overhead_pct": round(100 * (constrained_ms / free_ms - 1), 1),
        "paired_overhead_pct": {"median": round(statistics.median(paired), 1),
                                "min": round(min(paired), 1), "max": round(max(paired), 1)},
        "free_ms_per_round": [round(x, 1) for x in per_round["free"]],
        "constrained_ms_per_round": [round(x, 1) for x in per_round["constrained"]],
        "load_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "constrained_schema_valid": f"{sum(_valid(a[2]) for a in answers)}/{len(prompts)}",
        "example": answers[0][2],
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
