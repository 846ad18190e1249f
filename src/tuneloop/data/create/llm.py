"""LLM clone variants: paraphrases and scenario rewrites of a seed's input that state exactly the same facts.

One request per seed and kind asks for N rewrites as a JSON array of strings; the facts the answer depends on are
listed in the prompt and must be kept verbatim. What comes back is only a candidate input: the answer is the
seed's, and `contract.contract_violations` rejects a rewrite that lost or altered a fact.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from tuneloop.llm_client import LLMClient, LLMError, max_tokens_for
from tuneloop.progress import progress_bar, say
from tuneloop.records import Sample

KINDS = ("paraphrase", "scenario")

SYSTEM = (
    "You write training data variants. You rewrite a user's message without changing what it asks or states. "
    "Answer with a JSON array of strings and nothing else."
)

ASK = {
    "paraphrase": "Paraphrase the message below in {n} different ways: other words and sentence order, same meaning.",
    "scenario": "Rewrite the message below as {n} messages from different situations (channel, mood, context) "
    "that ask exactly the same thing and state exactly the same facts.",
}


def variant_prompt(sample: Sample, kind: str, n: int, keep: Sequence[str]) -> list[dict[str, str]]:
    """The chat request for `n` rewrites of `sample.input`; `keep` are the spans that must appear verbatim."""
    lines = [ASK[kind].format(n=n), "Write in the same language as the message. Do not add or drop any fact."]
    if keep:
        lines.append("Keep these exactly as written: " + "; ".join(json.dumps(k, ensure_ascii=False) for k in keep) + ".")
    lines.append(f"Message:\n{sample.input}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.MULTILINE)


def parse_rewrites(text: str) -> list[str]:
    """The strings of a JSON array answer (code fences tolerated); ValueError says what came back instead."""
    cleaned = FENCE.sub("", text.strip())
    start, end = cleaned.find("["), cleaned.rfind("]")
    try:
        value = json.loads(cleaned[start:end + 1]) if start >= 0 and end > start else None
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"the LLM answer is not a JSON array of strings: {text[:120]!r}")
    return [v.strip() for v in value if v.strip()]


@dataclass
class Rewrites:
    """What the endpoint gave for one seed: candidate inputs per kind, answers that were not rewrites (`errors`,
    quarantined as reasons), and requests that got no answer at all (`failed`: an error of the run, not data)."""

    seed_id: str
    texts: list[tuple[str, str]]  # (kind, rewritten input)
    errors: list[str]
    failed: list[str] = field(default_factory=list)


def rewrite_budget(seeds: Sequence[Sample], n: int) -> tuple[int, str]:
    """max_tokens of one rewrite request: the answer is a JSON array of `n` restatements of the seed's input.

    >>> rewrite_budget([Sample(id="a", input="cancel order P1")], 2)[0]  # 2 x (15 bytes + 4) + 2 = 40, + 32
    72
    """
    lengths = [n * (len(seed.input.encode("utf-8")) + 4) + 2 for seed in seeds]  # quotes, comma, space; brackets
    longest = max((len(seed.input.encode("utf-8")) for seed in seeds), default=0)
    budget, reason = max_tokens_for(lengths, "UTF-8 bytes")
    return budget, (f"n={n} rewrites of the longest seed input ({longest} bytes) as a JSON array: {reason}; bytes bound "
                    "the tokens of a byte-level tokenizer, the endpoint's is not at hand")


def request_rewrites(
    client: LLMClient, seeds: Sequence[Sample], keep: Sequence[Sequence[str]], n: int,
    kinds: Sequence[str] = KINDS, temperature: float = 0.8, progress: bool = False,
) -> list[Rewrites]:
    """Rewrites for every seed (one request per seed and kind, run with the client's bounded concurrency).

    Each answer is cached as it arrives, so a rerun after a kill asks only for the rest. A request that failed
    after the client's retries is listed in its seed's `failed` (the caller stops: see `raise_failed`); a
    configuration error of the endpoint (EndpointConfigError) stops the run at once.
    """
    jobs = [(i, kind) for i in range(len(seeds)) for kind in kinds]
    max_tokens, reason = rewrite_budget(seeds, n)
    with progress_bar(progress) as bar:
        if progress:
            say(f"asking {client.model} for {n} rewrites x {len(kinds)} kinds of {len(seeds)} seeds; "
                f"max_tokens {max_tokens}: {reason}")
        answers = client.complete_many(
            [variant_prompt(seeds[i], kind, n, keep[i]) for i, kind in jobs], progress=bar("augment --llm", len(jobs)),
            temperature=temperature, max_tokens=max_tokens,
        )
    results = [Rewrites(seed.id, [], []) for seed in seeds]
    for (i, kind), answer in zip(jobs, answers):
        if isinstance(answer, LLMError):
            results[i].failed.append(f"llm:{kind}: {answer}")
            continue
        try:
            results[i].texts.extend((kind, text) for text in parse_rewrites(answer))
        except ValueError as err:
            results[i].errors.append(f"llm:{kind}: {err}")
    return results


def raise_failed(results: Sequence[Rewrites]) -> None:
    """Stop when any rewrite request got no answer: the variants would silently lack it. The answers that did
    arrive are cached, so running the same command again asks only for the failed ones."""
    failed = [reason for r in results for reason in r.failed]
    if failed:
        total = sum(len(r.failed) for r in results)
        raise LLMError(f"{total} rewrite requests failed after retries (first: {failed[0]}); the other answers are "
                       "cached: run the same command again to retry only the failed ones.")
