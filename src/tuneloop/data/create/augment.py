"""Clone augmentation: each seed becomes 3-8 variants that keep its answer contract, with lineage on every one.

```
seed ──▶ candidates (LLM rewrites first, then offline rules, sometimes two stacked) ──▶ contract check
             │                                                                            ├─ holds  → variant
             │                                                                            └─ broken → quarantine (reasons)
variant.lineage = {source_id: seed's source_id, parent_id: seed.id, augment_type: "tone" | "typo+whitespace"
                   | "llm:paraphrase" ..., augment_round: seed's round + 1}
```

Randomness is seeded per seed id, so a rerun on the same seeds gives the same variants in any order.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop import html
from tuneloop.data.create.llm import Rewrites
from tuneloop.data.create.rules import RULES, Edit, RuleContext
from tuneloop.answers import parse_json
from tuneloop.data.create.contract import contract_violations, replace_in_answer, stated_values
from tuneloop.data.io.formats import sample_to_dict, write_quarantine, write_samples
from tuneloop.files import write_jsonl, write_text
from tuneloop.progress import progress_bar
from tuneloop.records import Lineage, QuarantinedRow, Sample, content_hash

STACK_SHARE = 0.25  # share of rule variants that stack a second rule
ATTEMPTS_PER_VARIANT = 6


@dataclass
class AugmentResult:
    variants: list[Sample] = field(default_factory=list)
    quarantined: list[QuarantinedRow] = field(default_factory=list)
    accepted: Counter = field(default_factory=Counter)  # augment_type -> variants kept
    rejected: Counter = field(default_factory=Counter)  # augment_type -> variants quarantined
    short_seeds: list[str] = field(default_factory=list)  # seeds that got fewer variants than asked


def parse_per_seed(text: str | int) -> tuple[int, int]:
    """`3` or `3..8` as an inclusive range; ValueError naming the accepted forms."""
    raw = str(text).strip()
    low, _, high = raw.partition("..")
    try:
        bounds = (int(low), int(high or low))
    except ValueError:
        raise ValueError(f"--per-seed {raw!r}: expected a number like 3 or a range like 3..8") from None
    if not 1 <= bounds[0] <= bounds[1] <= 8:
        raise ValueError(f"--per-seed {raw!r}: variants per seed must lie between 1 and 8 (3-8 is the practice)")
    return bounds


def rule_context(sample: Sample, pools: Mapping[str, Sequence[str]]) -> RuleContext:
    """What the rules may not touch (answer values the input states) and which fields have entity pools."""
    _, answer = parse_json(sample.output)
    protected = tuple(s for _, spellings in stated_values(answer) for s in spellings if s in sample.input) if answer is not None else ()
    strings = {k: v for k, v in answer.items() if isinstance(v, str)} if isinstance(answer, dict) else {}
    return RuleContext(text=sample.input, protected=protected, answer_strings=strings, pools=pools)


def make_variant(seed: Sample, edit: Edit, augment_type: str) -> Sample:
    """The seed with a new input, the answer (and rejected answer) following its entity replacements, and lineage."""
    round_ = (seed.lineage.augment_round or 0) + 1
    data = seed.model_dump()
    data.update(
        id=f"{seed.id}~{content_hash(edit.text, augment_type, length=8)}",
        input=edit.text,
        output=replace_in_answer(seed.output, edit.replacements),
        rejected=replace_in_answer(seed.rejected, edit.replacements) if seed.rejected is not None else None,
        lineage=Lineage(source_id=seed.lineage.source_id or seed.id, augment_type=augment_type,
                        augment_round=round_, parent_id=seed.id).model_dump(),
    )
    return Sample.model_validate(data)


def rule_candidate(ctx: RuleContext, rule_names: Sequence[str], rng: random.Random) -> tuple[str, Edit] | None:
    names = [rng.choice(rule_names)]
    others = [n for n in rule_names if n not in names]
    if others and rng.random() < STACK_SHARE:
        names.append(rng.choice(others))
    text, replacements, applied = ctx.text, {}, []
    for name in names:
        edit = RULES[name](RuleContext(text, ctx.protected + tuple(replacements.values()), ctx.answer_strings, ctx.pools), rng)
        if edit is None:
            continue
        replacements = {**replacements, **edit.replacements}
        text = edit.text
        applied.append(name)
    return ("+".join(applied), Edit(text, replacements)) if applied else None


def augment_samples(
    seeds: Sequence[Sample],
    per_seed: int | tuple[int, int] = 3,
    rules: Sequence[str] | None = None,
    pools: Mapping[str, Sequence[str]] | None = None,
    seed: int = 0,
    rewrites: Mapping[str, Rewrites] | None = None,
    source_file: str = "",
    progress: bool = False,
) -> AugmentResult:
    """Variants of every seed that hold its answer contract; candidates that break it are quarantined with reasons."""
    rule_names = list(rules or RULES)
    unknown = [r for r in rule_names if r not in RULES]
    if unknown:
        raise ValueError(f"unknown augment rules {unknown}; choose from {sorted(RULES)}")
    low, high = per_seed if isinstance(per_seed, tuple) else (per_seed, per_seed)
    result = AugmentResult()
    with progress_bar(progress) as bar:
        advance = bar("augment", len(seeds))
        for sample in seeds:
            _augment_seed(sample, seed, low, high, pools, rewrites, rule_names, source_file, result)
            advance(1)
    return result


def _augment_seed(sample: Sample, seed: int, low: int, high: int, pools: Mapping[str, Sequence[str]] | None,
                  rewrites: Mapping[str, Rewrites] | None, rule_names: list[str], source_file: str,
                  result: AugmentResult) -> None:
    """The variants of one seed into `result` (randomness seeded by the seed's id)."""
    rng = random.Random(f"{seed}:{sample.id}")
    want = rng.randint(low, high)
    ctx = rule_context(sample, pools or {})
    seen = {sample.input}
    kept = 0
    llm = rewrites.get(sample.id) if rewrites else None
    if llm:
        for error in llm.errors:
            result.quarantined.append(QuarantinedRow(
                source_file=source_file, sample_id=sample.id, stage="augment", reason=error, raw=None))
    candidates: list[tuple[str, Edit]] = [(f"llm:{kind}", Edit(text)) for kind, text in (llm.texts if llm else [])]
    attempts = 0
    while kept < want and (candidates or attempts < want * ATTEMPTS_PER_VARIANT):
        if candidates:
            made: tuple[str, Edit] | None = candidates.pop(0)
        else:
            attempts += 1
            made = rule_candidate(ctx, rule_names, rng)
        if made is None or made[1].text in seen:
            continue
        kind, edit = made
        seen.add(edit.text)
        variant = make_variant(sample, edit, kind)
        reasons = contract_violations(sample, variant, edit.replacements)
        if reasons:
            result.rejected[kind] += 1
            result.quarantined.append(QuarantinedRow(
                source_file=source_file, sample_id=variant.id, stage="augment",
                reason="answer contract broken: " + "; ".join(reasons), raw=sample_to_dict(variant),
            ))
            continue
        result.variants.append(variant)
        result.accepted[kind] += 1
        kept += 1
    if kept < want:
        result.short_seeds.append(sample.id)


def spot_check(variants: Sequence[Sample], seeds: Sequence[Sample], k: int, seed: int = 0) -> list[dict[str, Any]]:
    """A random sample of variants beside their seeds, with an empty `verdict` for a human to fill (ok / wrong)."""
    parents = {s.id: s for s in seeds}
    chosen = random.Random(seed).sample(list(variants), min(k, len(variants)))
    return [
        {
            "variant_id": v.id, "augment_type": v.lineage.augment_type,
            "seed_input": parents[v.lineage.parent_id].input if v.lineage.parent_id in parents else None,
            "variant_input": v.input, "seed_output": parents[v.lineage.parent_id].output if v.lineage.parent_id in parents else None,
            "variant_output": v.output, "verdict": "",
        }
        for v in chosen
    ]


def output_paths(out: str | Path) -> dict[str, Path]:
    out = Path(out)
    stem = out.name.removesuffix(".jsonl")
    return {
        "variants": out,
        "quarantine": out.with_name(f"{stem}.quarantine.jsonl"),
        "spot_check": out.with_name(f"{stem}.spotcheck.jsonl"),
        "spot_check_html": out.with_name(f"{stem}.spotcheck.html"),
    }


def write_augment_outputs(out: str | Path, result: AugmentResult, checks: Sequence[dict[str, Any]]) -> dict[str, Path]:
    """Variants, quarantine, and the spot-check sample (JSONL to mark up, HTML to read), each written atomically."""
    paths = output_paths(out)
    write_samples(paths["variants"], result.variants)
    write_quarantine(paths["quarantine"], result.quarantined)
    write_jsonl(paths["spot_check"], checks)
    summary = [{"augment_type": t, "kept": result.accepted[t], "quarantined": result.rejected[t]}
               for t in sorted(set(result.accepted) | set(result.rejected))]
    write_text(paths["spot_check_html"], html.page(
        "Augmentation spot check",
        [
            html.section("Variants by type", html.table(summary)),
            html.section("Random sample for a human", html.paragraph(
                f"Read each variant beside its seed; mark wrong ones in {paths['spot_check'].name} (verdict: wrong).")),
            html.table(checks, columns=["augment_type", "seed_input", "variant_input", "variant_output"]),
        ],
        subtitle=f"{len(result.variants)} variants kept, {len(result.quarantined)} quarantined",
    ))
    return paths
