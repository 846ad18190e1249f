"""Best-of-N with rejection sampling: N sampled answers per prompt, judged, turned into SFT positives and DPO pairs.

```
samples ──to_messages──▶ backend (local batched | OpenAI-compatible endpoint), N samples per prompt, temperature T
        ──▶ every candidate: the rewards (train/rewards.py, weighted) and eval's validators (metrics.score_answer)
        ──▶ per sample, by what it brings:
   a reference answer (golden, generic, boundary)  a failing candidate ─▶ pair: chosen = the reference,
                                                                          rejected = the worst failing candidate
                                                   none fails          ─▶ nothing new (the model already does it)
   no reference (a prompt only)                    best valid candidate ─▶ SFT positive (+ the worst failing as
                                                                          rejected, when one fails)
   a negative without `rejected` (its answer is    chosen = its golden twin's answer (same seed or prompt), else
   the wrong one)                                  the best valid candidate ─▶ pair with rejected = the negative's
```
A row that carries `rejected` already (a negative's included: its answer is then the right one) is a pair as it is
and comes along unchanged; it is sampled too, like any row with a reference: a failing candidate is the model's own
mistake, a second pair beside the row's own.
A candidate passes when eval would count it `ok` against the reference (JSON, schema, every field, refusal, not
cut by the length limit); without a reference, when its format passes (strict JSON, schema, no noise, refusal
where the row must refuse, not cut). With a reference, only the reference is chosen: a candidate that disagrees
with it is wrong, and one that agrees adds only a second copy of the same answer.

A pair is one Sample row (output = chosen, rejected = the worse answer) that descends from its parent's seed
(`lineage.source_id`), so it can never sit on the other side of a split from its parent; lineage says
`augment_type: rejection_sampling` and `parent_id`, and the `best_of_n` field keeps the reward scores.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.answers import parse_json
from tuneloop.eval.backends import Generation
from tuneloop.eval.metrics import canonical, score_answer
from tuneloop.eval.runner import SampleValidators
from tuneloop.llm_client import max_tokens_for
from tuneloop.records import Lineage, Sample, content_hash, to_messages
from tuneloop.train.rewards import sample_columns, score

AUGMENT_TYPE = "rejection_sampling"


class BestOfNError(ValueError):
    """A best-of-N run that cannot give data (failed requests, nothing to sample), naming what to do."""


@dataclass
class Candidate:
    """One sampled answer with its rewards, its total and whether it passes."""

    text: str
    finish_reason: str | None
    rewards: dict[str, float | None]
    total: float
    passes: bool
    problems: list[str]

    def brief(self) -> dict[str, Any]:
        return {"total": self.total, "passes": self.passes, "problems": self.problems, "rewards": self.rewards,
                "finish_reason": self.finish_reason}


@dataclass
class Outcome:
    """What one input sample gave: its outcome name, the row written (if any) and its candidates."""

    sample_id: str
    outcome: str  # pair | positive | all_passed | no_valid
    row: Sample | None
    candidates: list[Candidate] = field(default_factory=list)
    brought: Sample | None = None  # the sample itself when it carries `rejected`: a pair already

    @property
    def rows(self) -> list[Sample]:
        return [r for r in (self.brought, self.row) if r is not None]


@dataclass
class BestOfNResult:
    outcomes: list[Outcome]
    n: int
    model: str
    weights: dict[str, float]
    max_new_tokens: int
    max_new_tokens_reason: str

    @property
    def rows(self) -> list[Sample]:
        return [row for outcome in self.outcomes for row in outcome.rows]

    def counts(self) -> dict[str, int]:
        counts = {name: 0 for name in ("pair", "positive", "all_passed", "no_valid")}
        for outcome in self.outcomes:
            counts[outcome.outcome] += 1
        counts["samples"] = len(self.outcomes)
        counts["brought"] = sum(1 for o in self.outcomes if o.brought is not None)
        counts["rows"] = len(self.rows)
        counts["dpo_pairs"] = sum(1 for r in self.rows if r.rejected is not None)
        counts["candidates"] = sum(len(o.candidates) for o in self.outcomes)
        counts["candidates_passing"] = sum(c.passes for o in self.outcomes for c in o.candidates)
        return counts


def has_reference(sample: Sample) -> bool:
    """The sample's answer is a right one to compare candidates with: a negative's is the wrong one, unless the
    negative carries its wrong one in `rejected`."""
    return bool(sample.output.strip()) and (sample.sample_type != "negative" or sample.rejected is not None)


def wrong_answer_row(sample: Sample) -> bool:
    """A negative whose `output` is the wrong answer (no `rejected`): it needs a right answer to pair with."""
    return sample.sample_type == "negative" and sample.rejected is None


def candidate_problems(scores: dict[str, Any], with_reference: bool, must_refuse: bool = False) -> list[str]:
    """Why a candidate fails, from eval's scores (empty: it passes). Against a reference it passes exactly when
    eval counts it `ok`; a sample that must refuse needs only a refusal, in JSON or in prose, as eval counts it."""
    if with_reference and scores["ok"]:
        return []
    problems = []
    if scores["truncated"]:
        problems.append("cut by the length limit")
    if must_refuse:
        return problems + (["answered a prompt it must refuse"] if scores.get("refusal_ok") is False else [])
    if not scores["json_valid"]:
        problems.append("not strict JSON" + (f" ({', '.join(scores['noise'])})" if scores.get("noise") else ""))
    if scores.get("schema_valid") is False:
        problems.append("schema: " + "; ".join(scores.get("schema_errors") or []))
    if scores.get("refusal_ok") is False:
        problems.append("refused an answerable prompt" if scores["refused"] else "answered a prompt it must refuse")
    if with_reference and scores.get("fields"):
        wrong = [path for path, (_, normalized) in scores["fields"].items() if not normalized]
        if wrong and scores["json_valid"]:
            problems.append("fields differ from the reference: " + ", ".join(wrong))
    if with_reference and not problems and not scores["ok"]:
        problems.append("differs from the reference")
    return problems


def judge_candidates(sample: Sample, generations: Sequence[Generation], weights: dict[str, float],
                     validator: Any, task_schema: dict[str, Any] | None) -> list[Candidate]:
    """Every candidate of one sample with its weighted rewards and eval's verdict."""
    reference = has_reference(sample)
    texts = [g.text for g in generations]
    columns = {name: [value] * len(texts) for name, value in sample_columns(sample).items()}
    columns["output"] = [sample.output if reference else ""] * len(texts)
    columns["truncated"] = [g.finish_reason == "length" for g in generations]
    scored = score(texts, weights, task_schema=task_schema, **columns)
    judged = sample if reference else sample.model_copy(update={"output": ""})
    candidates = []
    for generation, rewards in zip(generations, scored):
        problems = candidate_problems(score_answer(judged, generation.text, generation.finish_reason, validator),
                                      reference, sample.expected == "refuse")
        candidates.append(Candidate(generation.text, generation.finish_reason, rewards["rewards"], rewards["total"],
                                    not problems, problems))
    return candidates


def _canonical(text: str) -> str:
    """An answer as compared for sameness: canonical JSON (eval's), else the stripped text."""
    ok, value = parse_json(text)
    return canonical(value) if ok else text.strip()


def golden_twins(samples: Sequence[Sample]) -> dict[str, Sample]:
    """For each negative without `rejected`: the golden row of its seed (or of its exact prompt), by negative id."""
    by_seed: dict[str, Sample] = {}
    by_prompt: dict[str, Sample] = {}
    for sample in samples:
        if sample.sample_type == "golden" and sample.output.strip():
            by_seed.setdefault(sample.lineage.source_id or sample.id, sample)
            by_prompt.setdefault(sample.prompt_key_text.strip(), sample)
    twins = {}
    for sample in samples:
        if wrong_answer_row(sample):
            twin = by_prompt.get(sample.prompt_key_text.strip()) or by_seed.get(sample.lineage.source_id or sample.id)
            if twin is not None and _canonical(twin.output) != _canonical(sample.output):
                twins[sample.id] = twin
    return twins


def derived_row(parent: Sample, chosen: str, rejected: str | None, record: dict[str, Any], model: str) -> Sample:
    """A row made from `parent` by rejection sampling: same prompt and seed, a new id, the scores kept."""
    lineage = Lineage(source_id=parent.lineage.source_id, augment_type=AUGMENT_TYPE,
                      augment_round=parent.lineage.augment_round, parent_id=parent.id)
    meta = parent.meta.model_copy(update={"source": f"best-of-n:{model}"})
    update: dict[str, Any] = {
        "id": content_hash(parent.id, AUGMENT_TYPE, chosen, rejected), "output": chosen, "rejected": rejected,
        "lineage": lineage, "meta": meta,
    }
    if wrong_answer_row(parent):  # the row now holds a right answer: it is no negative any more
        update.update(sample_type="golden", expected="answer")
    row = parent.model_copy(update=update, deep=True)
    return Sample.model_validate({**row.model_dump(mode="json"), "best_of_n": record})


def decide(sample: Sample, candidates: list[Candidate], twin: Sample | None, n: int, model: str) -> Outcome:
    """The row one sample gives (see the module docstring), from its judged candidates."""
    passing = [c for c in candidates if c.passes]
    failing = [c for c in candidates if not c.passes]
    best = max(passing, key=lambda c: c.total) if passing else None
    worst = min(failing, key=lambda c: c.total) if failing else None
    record: dict[str, Any] = {"model": model, "n": n, "passing": len(passing),
                              "totals": [c.total for c in candidates]}
    if wrong_answer_row(sample):
        if twin is not None:
            chosen, source = twin.output, "golden_twin"
        else:
            # a candidate equal to the negative's own wrong answer is no better than it
            right = [c for c in passing if _canonical(c.text) != _canonical(sample.output)]
            if not right:
                return Outcome(sample.id, "no_valid", None, candidates)
            chosen_candidate = max(right, key=lambda c: c.total)
            chosen, source = chosen_candidate.text, "best_candidate"
            record["chosen"] = chosen_candidate.brief()
        record.update(chosen_from=source, rejected_from="negative")
        return Outcome(sample.id, "pair", derived_row(sample, chosen, sample.output, record, model), candidates)
    if has_reference(sample):
        if worst is None:
            return Outcome(sample.id, "all_passed", None, candidates)
        record.update(chosen_from="reference", rejected_from="candidate", rejected=worst.brief())
        return Outcome(sample.id, "pair", derived_row(sample, sample.output, worst.text, record, model), candidates)
    if best is None:
        return Outcome(sample.id, "no_valid", None, candidates)
    record.update(chosen_from="best_candidate", chosen=best.brief())
    if worst is not None:
        record.update(rejected_from="candidate", rejected=worst.brief())
    row = derived_row(sample, best.text, worst.text if worst else None, record, model)
    return Outcome(sample.id, "pair" if worst else "positive", row, candidates)


def build_revision(samples: Sequence[Sample], generations: Sequence[Sequence[Generation]], weights: dict[str, float],
                   task_schema: dict[str, Any] | None, n: int, model: str, max_new_tokens: int = 0,
                   max_new_tokens_reason: str = "") -> BestOfNResult:
    """The revision from samples and their candidates (`generations[i]` for `samples[i]`)."""
    validators = SampleValidators(task_schema)
    twins = golden_twins(samples)
    outcomes = []
    for sample, generated in zip(samples, generations, strict=True):
        candidates = judge_candidates(sample, generated, weights, validators.of(sample), task_schema)
        outcome = decide(sample, candidates, twins.get(sample.id), n, model)
        outcome.brought = sample if sample.rejected is not None else None
        outcomes.append(outcome)
    return BestOfNResult(outcomes, n, model, dict(weights), max_new_tokens, max_new_tokens_reason)


# -- sampling ---------------------------------------------------------------------------------------------------

Progress = Callable[[int], None]


def sample_local(model: str, samples: Sequence[Sample], n: int, temperature: float, max_new_tokens: int | None,
                 default_system: str = "", seed: int = 0, batch_size: int = 16,
                 progress: Progress | None = None) -> tuple[list[list[Generation]], int, str]:
    """N sampled answers per sample from a local model (the eval's batched backend); with the budget and why."""
    from tuneloop.eval.backends import LocalBackend
    from tuneloop.models import load_causal_lm

    lm, tokenizer = load_causal_lm(model)
    if max_new_tokens is None:
        lengths = [len(tokenizer(s.output, add_special_tokens=False)["input_ids"]) for s in samples if has_reference(s)]
        max_new_tokens, reason = max_tokens_for(lengths, "tokens")
    else:
        reason = "set by the user (align.sample_max_new_tokens or --max-new-tokens)"
    backend = LocalBackend(lm, tokenizer, batch_size=batch_size, max_new_tokens=max_new_tokens, seed=seed,
                           do_sample=True, temperature=temperature)
    rendered = [backend.render(to_messages(s, default_system, with_answer=False)) for s in samples]
    # each prompt n times in one call: the backend batches the copies together and samples each row on its own
    flat = backend.generate([prompt for prompt in rendered for _ in range(n)], progress=progress)
    return [flat[i * n:(i + 1) * n] for i in range(len(samples))], max_new_tokens, reason


def sample_endpoint(base_url: str, model: str, samples: Sequence[Sample], n: int, temperature: float,
                    max_new_tokens: int | None, default_system: str = "", seed: int = 0, api_key: str | None = None,
                    concurrency: int = 8, progress: Progress | None = None) -> tuple[list[list[Generation]], int, str]:
    """N sampled answers per sample from an OpenAI-compatible endpoint (vLLM, the embedded server), one round of
    requests per candidate with its own seed, so the N answers are N draws and not one answer N times."""
    from tuneloop.eval.backends import EndpointBackend

    if max_new_tokens is None:
        max_new_tokens, reason = max_tokens_for([len(s.output.encode("utf-8")) for s in samples if has_reference(s)],
                                                "UTF-8 bytes")
        reason += "; bytes bound the tokens of a byte-level tokenizer, the endpoint's is not at hand"
    else:
        reason = "set by the user (align.sample_max_new_tokens or --max-new-tokens)"
    backend = EndpointBackend(base_url, model, api_key=api_key, concurrency=concurrency, max_tokens=max_new_tokens,
                              temperature=temperature, seed=seed)
    conversations = [to_messages(s, default_system, with_answer=False) for s in samples]
    rounds = []
    for k in range(n):
        backend.seed = seed + k
        rounds.append(backend.generate_chats(conversations, progress=progress))
    return [[rounds[k][i] for k in range(n)] for i in range(len(samples))], max_new_tokens, reason


def raise_failed(samples: Sequence[Sample], generations: Sequence[Sequence[Generation]]) -> None:
    """A failed request is an error, never a failing candidate: stop before any row is written."""
    failed = [(s.id, g.error) for s, gs in zip(samples, generations) for g in gs if g.error]
    if failed:
        sample_id, error = failed[0]
        raise BestOfNError(f"{len(failed)} candidate requests failed after retries (first: sample {sample_id}: "
                           f"{error}); nothing was written: fix the endpoint and run the same command again.")


# -- the run and its files --------------------------------------------------------------------------------------

def preference_rows(rows: Sequence[Sample], default_system: str = "") -> list[dict[str, Any]]:
    """TRL's conversational preference rows (prompt / chosen / rejected) of the rows that are pairs."""
    from tuneloop.train.prefs import preference_pair

    pairs = (preference_pair(row, default_system) for row in rows)
    return [pair.trl_row() for pair in pairs if pair is not None]


def write_revision(result: BestOfNResult, out_dir: str | Path, default_system: str = "") -> dict[str, Path]:
    """The revision's files (see `run_best_of_n`); each written whole, atomically."""
    from tuneloop.data.io.formats import write_samples
    from tuneloop.data.io.llamafactory import export_llamafactory
    from tuneloop.files import write_json, write_jsonl

    out = Path(out_dir)
    rows = result.rows
    paths = {
        "samples": write_samples(out / "samples.jsonl", rows),
        "preferences": write_jsonl(out / "preferences.jsonl", preference_rows(rows, default_system)),
        "candidates": write_jsonl(out / "candidates.jsonl", (
            {"sample_id": o.sample_id, "outcome": o.outcome, "row_id": o.row.id if o.row else None,
             "brought": o.brought is not None,
             "candidates": [{"text": c.text, **c.brief()} for c in o.candidates]} for o in result.outcomes)),
    }
    # the folder is this run's alone: an entry an earlier run wrote (another kind of rows) must not outlive it
    shutil.rmtree(out / "llamafactory", ignore_errors=True)
    if rows:
        export_llamafactory(rows, out / "llamafactory", "best_of_n")
        paths["llamafactory"] = out / "llamafactory" / "dataset_info.json"
    paths["summary"] = write_json(out / "summary.json", {
        "kind": "best-of-n", "model": result.model, "n": result.n, "weights": result.weights,
        "max_new_tokens": result.max_new_tokens, "max_new_tokens_reason": result.max_new_tokens_reason,
        "counts": result.counts()})
    return paths


def run_best_of_n(samples: Sequence[Sample], model: str, out_dir: str | Path, weights: dict[str, float],
                  task_schema: dict[str, Any] | None = None, n: int = 8, temperature: float = 0.8,
                  max_new_tokens: int | None = None, default_system: str = "", base_url: str | None = None,
                  api_key: str | None = None, seed: int = 0, batch_size: int = 16, concurrency: int = 8,
                  progress: bool = True) -> tuple[BestOfNResult, dict[str, Path]]:
    """Sample, judge and write a revision into `out_dir`:

    ```
    samples.jsonl      the revision: pairs (output = chosen, rejected) and SFT positives, tuneloop Samples
                       with lineage (rejection_sampling, parent_id) and their scores (`best_of_n`); the gate reads it
    preferences.jsonl  the pairs in TRL's conversational preference format (prompt / chosen / rejected)
    llamafactory/      the same rows as LLaMA-Factory entries (pairs `ranking: true`) with dataset_info.json
    candidates.jsonl   every candidate of every sample with its rewards and problems (why it passed or failed)
    summary.json       counts, model, N, reward weights, the answer budget and why
    ```
    """
    from tuneloop.progress import progress_bar, say

    samples = list(samples)
    if not samples:
        raise BestOfNError("no samples to sample from: pass a file with rows (or a round with a train.jsonl)")
    with progress_bar(progress) as bar:
        advance = bar(f"best-of-{n}", len(samples) * n)
        if base_url:
            generated, budget, reason = sample_endpoint(base_url, model, samples, n, temperature, max_new_tokens,
                                                        default_system, seed, api_key, concurrency, advance)
        else:
            generated, budget, reason = sample_local(model, samples, n, temperature, max_new_tokens, default_system,
                                                     seed, batch_size, advance)
    if progress:
        say(f"max_tokens {budget}: {reason}")
    raise_failed(samples, generated)
    label = Path(model).name if Path(model).exists() else model
    result = build_revision(samples, generated, weights, task_schema, n, label, budget, reason)
    return result, write_revision(result, out_dir, default_system)
