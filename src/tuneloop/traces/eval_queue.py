"""Eval failures into the relabel queue as new rows: a variant of each failed test item, never the item itself.

A test item must never reach train, yet what the model got wrong on it is exactly what the next round should teach.
So each failure becomes a new message made by the project's clone rules (data/create: a changed entity, another
tone, a greeting, an unrelated sentence, stacked), checked by the answer contract, and queued for a relabeler:

```
failed test item ─▶ clone-rule candidates (seeded per item) ─▶ answer contract holds? ─▶ the candidate whose
prompt is least like the test item ─▶ does it repeat the test item or any frozen val/test item (traces/frozen.py:
the prompt by MinHash at data.dedup.threshold, and the gate's own leakage check)?
    yes ─▶ not queued (counted: `near_frozen`): the next gate would hold it out of train anyway
    no  ─▶ queued: id and lineage.source_id its own ("evalvar-<hash>"), output "" (the relabeler decides),
           proposal = the reference answer under the same entity replacements (proposed_by "clone rule ..."),
           rejected = the model's wrong answer under them, meta.source "eval:<eval folder>" (no difficulty: a
           "hard" row would go to val, and this one is made for train),
           failure = {"eval_item": <test id>, "eval", "mode", "kinds", "model", "variant"}  (audit only)
```
The test item's id and source id appear nowhere but `failure.eval_item`, and its extra fields are not copied: the
gate's split (id, source id, prompt) and this module's prompt check keep every relabeled variant away from the
frozen item it came from.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tuneloop.data.create.augment import make_variant, rule_candidate, rule_context
from tuneloop.data.create.contract import contract_violations
from tuneloop.data.create.rules import RULES, Edit, RuleContext
from tuneloop.eval.bad_cases import failed, failure_kinds
from tuneloop.project import DedupConfig, LeakageConfig
from tuneloop.records import EvalResult, Lineage, Meta, Sample, content_hash
from tuneloop.traces.frozen import FrozenMatch, frozen_matches, prompt_similarity
from tuneloop.traces.queue import RelabelQueue

# rules that change the words of a message (whitespace and punctuation vanish under the gate's normalization)
WORD_RULES = ("entity_swap", "tone", "length", "irrelevant_sentence", "typo")
ATTEMPTS = 16  # candidates tried per failure; the least similar one that keeps the contract is kept
STACK = 3  # rules stacked per candidate


@dataclass
class EvalQueueResult:
    failures: int = 0
    queued: int = 0
    already_queued: int = 0
    near_frozen: list[tuple[str, FrozenMatch]] = field(default_factory=list)  # (test id, the frozen item it matches)
    no_variant: list[str] = field(default_factory=list)  # test ids no rule could vary within the answer contract

    def summary(self) -> str:
        return (f"failures {self.failures} = queued {self.queued} + already queued {self.already_queued} + "
                f"near-identical to a frozen item {len(self.near_frozen)} + no variant {len(self.no_variant)}")


def variant_of(test: Sample, raw: str, rules: Sequence[str], pools: Mapping[str, Sequence[str]], seed: int,
               config: DedupConfig) -> tuple[Sample, str, float] | None:
    """(variant, rules applied, prompt similarity to the test item) of the least similar candidate that keeps the
    answer contract; None when no candidate does. The variant still carries the test item's lineage (callers
    replace it); its output is the reference answer, its rejected the model's answer, both under the replacements."""
    names = [n for n in WORD_RULES if n in rules] or [n for n in rules if n in RULES]
    rng = random.Random(f"{seed}:{test.id}")
    ctx = rule_context(test, pools)
    best: tuple[Sample, str, float] | None = None
    for _ in range(ATTEMPTS):
        text, replacements, applied = ctx.text, {}, []
        for _ in range(STACK):  # stacked draws move the text further from the test item
            made = rule_candidate(RuleContext(text, ctx.protected + tuple(replacements.values()), ctx.answer_strings,
                                              ctx.pools), names, rng)
            if made is not None:
                applied.append(made[0])
                replacements = {**replacements, **made[1].replacements}
                text = made[1].text
        if not applied or text == test.input:
            continue
        kind = "+".join(applied)
        candidate = make_variant(test.model_copy(update={"rejected": raw}), Edit(text, replacements), kind)
        if contract_violations(test, candidate, replacements):
            continue
        similarity = prompt_similarity(candidate, test, config)
        if best is None or similarity < best[2]:
            best = (candidate, kind, similarity)
    return best


def queued_sample(test: Sample, variant: Sample, kind: str, result: EvalResult, eval_name: str) -> Sample:
    """The row to queue: the variant's prompt, its own identity, nothing of the test item but `failure.eval_item`."""
    variant_id = "evalvar-" + content_hash(eval_name, test.id, variant.input, length=16)
    # no difficulty: the gate keeps "hard" rows in val, and this row is made to be trained on
    meta = Meta(task_type=test.meta.task_type, domain=test.meta.domain, version=test.meta.version,
                source=f"eval:{eval_name}")
    return Sample(
        id=variant_id, instruction=test.instruction, input=variant.input, system=test.system, history=test.history,
        output="", rejected=variant.rejected, sample_type=test.sample_type, expected=test.expected,
        output_schema=test.output_schema, meta=meta,
        lineage=Lineage(source_id=variant_id, augment_type=f"eval-variant:{kind}"),
        failure={"eval_item": test.id, "eval": eval_name, "mode": result.mode, "kinds": failure_kinds(result.scores),
                 "model": result.model, "variant": kind},
    )


def queue_eval_failures(queue: RelabelQueue, results: Sequence[EvalResult], eval_dir: str | Path,
                        mode: str | None = "unconstrained", frozen: Mapping[str, Sequence[Sample]] | None = None,
                        rules: Sequence[str] = tuple(RULES), pools: Mapping[str, Sequence[str]] | None = None,
                        seed: int = 0, config: DedupConfig | None = None,
                        leakage: LeakageConfig | None = None) -> EvalQueueResult:
    """Queue a variant of every failed test item, in one mode (all modes when None: one variant per item).

    `frozen`: the latest round's val/test items; every test item of this eval is compared as well."""
    config = config or DedupConfig()
    name = Path(eval_dir).resolve().name
    # a test item that failed in both modes gets one new message (with the first mode's reasons)
    first: dict[str, EvalResult] = {}
    for result in failed(list(results), mode):
        first.setdefault(result.sample_id, result)
    bad = list(first.values())
    tests = {r.sample_id: Sample.model_validate(r.sample) for r in results}
    guard = {k: list(v) for k, v in (frozen or {}).items()}
    known = {s.id for items in guard.values() for s in items}
    guard["eval test"] = [t for t in tests.values() if t.id not in known]  # an eval of another test file
    outcome = EvalQueueResult(failures=len(bad))
    made: list[tuple[Sample, Sample, str, EvalResult]] = []
    for result in bad:
        test = Sample.model_validate(result.sample)
        found = variant_of(test, result.raw, rules, pools or {}, seed, config) if test.input.strip() else None
        if found is None:
            outcome.no_variant.append(test.id)
            continue
        made.append((test, *found[:2], result))
    rows = [queued_sample(test, variant, kind, result, name) for test, variant, kind, result in made]
    matches = frozen_matches(rows, guard, config, leakage)
    keep: list[int] = []
    for index, (test, *_rest) in enumerate(made):
        if index in matches:
            outcome.near_frozen.append((test.id, matches[index]))
        else:
            keep.append(index)
    samples = [rows[i] for i in keep]
    proposals = [(made[i][1].output, f"clone rule {made[i][2]} on the reference answer of an eval item")
                 if made[i][1].output.strip() else None for i in keep]
    added = queue.add_samples(samples, f"eval:{name}", [r.failure["kinds"] for r in samples], proposals)
    outcome.queued, outcome.already_queued = added, len(samples) - added
    return outcome
