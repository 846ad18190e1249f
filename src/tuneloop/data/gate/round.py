"""The data gate: every data revision passes it before training, and it writes one round folder.

```
sources ─▶ validate (license, prompt/answer, JSON Schema, tokens) ─▶ redact PII ─▶ dedup ─▶ split (frozen
val/test reused) ─▶ leakage ─▶ mix ─▶ data/rounds/rNNNN/  train.jsonl val.jsonl test.jsonl quarantine.jsonl
                                                          review.jsonl report.html manifest.json (sha256 per
                                                          file, counts, settings, frozen val/test ids + hashes)
```
The folder is built under a temporary name and swapped in (`files.atomic_dir`): a killed gate leaves the old
rounds or the complete new one. A failed gate writes `rNNNN-failed/` instead, which is never taken as a round.
Before the swap a final scan checks that no file holds detected personal data.

Every row in = accepted (train/val/test) + quarantined (read, check, held-out variants of frozen items)
+ removed (duplicates with the same answer, rows the mix left out) + sent to review (label conflicts: the same
prompt with other answers, within the sources or against a frozen val/test item); all of them are counted,
the identity is checked (`COUNT_IDENTITY`) and every row is listed in the manifest or a file of the round.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.data.gate.checks import CheckResult, TokenCounter, approximate_tokens, check_sources, tokenizer_counter
import numpy as np

from tuneloop.data.gate.dedup import dedup
from tuneloop.data.io.formats import write_quarantine, write_samples
from tuneloop.data.gate.leakage import LeakageReport, find_leaks, overlap_pairs
from tuneloop.data.gate.mix import mix
from tuneloop.data.gate.pii import Redactor, recognizers, scan_value
from tuneloop.data.gate.report import build_manifest, build_report
from tuneloop.data.gate.run import COUNT_IDENTITY, GateRun
from tuneloop.data.gate.split import FrozenSplits, SplitResult, split_samples
from tuneloop.files import atomic_dir, remove_dead_temps, write_text
from tuneloop.manifest import write_manifest
from tuneloop.progress import Advance, progress_bar
from tuneloop.project import DataConfig, Project
from tuneloop.records import QuarantinedRow

SPLIT_FILES = ("train", "val", "test")
GATE_STAGES = 6  # validate, redact, dedup, split, leakage, mix: one step of the bar each
ROUND_NAME = r"r\d{4}(?:-failed)?"
IDENTIFIER_KEYS = frozenset({"id", "sample_id", "source_id", "parent_id", "kept_id", "train_id", "eval_id",
                             "members", "kept", "content_hash", "old_hash", "new_hash", "sha256", "source_file",
                             "path", "round", "previous_round", "mix_dropped", "over_length", "frozen",
                             "conflicts_with"})


class GateError(RuntimeError):
    """The gate could not write a trustworthy round (a bug or a broken environment), with what to do."""


@dataclass
class GateResult:
    round_dir: Path
    counts: dict[str, int]
    passed: bool
    failures: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def report(self) -> Path:
        return self.round_dir / "report.html"


def project_token_counter(project: Project) -> tuple[TokenCounter, str]:
    """The project model's tokenizer when it is on this machine; else the approximate count (and why)."""
    from tuneloop.models import ModelError, resolve_model

    try:
        from transformers import AutoTokenizer

        location = resolve_model(project.config.model, pull=False)
        tokenizer = AutoTokenizer.from_pretrained(location)
    except (ModelError, OSError, ValueError) as err:
        return approximate_tokens, f"approximate (no tokenizer: {str(err).splitlines()[0][:160]})"
    return tokenizer_counter(tokenizer), f"tokenizer of {project.config.model}"


def run_gate(project: Project, sources: list[Path] | None = None, progress: bool = True,
             tokenizer: Any = "project", extra_sources: Sequence[Path] = ()) -> GateResult:
    """The gate over a project's `data.sources` (or `sources`, licensed `internal`) plus `extra_sources` (files the
    loop adds, licensed `internal`); writes data/rounds/rNNNN/. The project's own sources include its relabeled
    traffic (`Project.relabeled_file`) once `tuneloop loop` accepted some: those rows stay in every later round."""
    config = project.config.data
    if sources is None:
        pairs = [(project.path(s.path), s.license, s.format, s.dataset) for s in config.sources]
        traffic = project.relabeled_file
        if traffic.exists() and all(Path(p).resolve() != traffic.resolve() for p in extra_sources):
            extra_sources = [*extra_sources, traffic]
    else:
        pairs = [(Path(p), "internal") for p in sources]
    pairs += [(Path(p), "internal") for p in extra_sources]
    if not pairs:
        raise GateError("no data sources: list them under data.sources in tuneloop.yaml "
                        "(e.g. `sources: [{path: data/raw/seed.jsonl, license: internal}]`).")
    if tokenizer == "project":
        count_tokens, token_source = project_token_counter(project)
    elif tokenizer is None:
        count_tokens, token_source = approximate_tokens, "approximate (no tokenizer given)"
    else:
        count_tokens, token_source = tokenizer_counter(tokenizer), "tokenizer given"
    max_tokens = config.max_tokens or project.config.train.max_length
    return gate(pairs, project.rounds_dir, config, project.schema(), count_tokens, token_source, max_tokens, progress)


def run_gate_on(sources: Sequence[Path | tuple], rounds_dir: Path, config: DataConfig | None = None,
                schema: dict[str, Any] | None = None, tokenizer: Any = None, max_tokens: int | None = None,
                progress: bool = False) -> GateResult:
    """The gate outside a project: files, or (path, license[, format, dataset]) tuples, into `rounds_dir`/rNNNN/."""
    pairs = [(Path(s[0]), *s[1:]) if isinstance(s, tuple) else (Path(s), "internal") for s in sources]
    count_tokens = approximate_tokens if tokenizer is None else tokenizer_counter(tokenizer)
    source = "approximate (no tokenizer given)" if tokenizer is None else "tokenizer given"
    return gate(pairs, Path(rounds_dir), config or DataConfig(), schema, count_tokens, source, max_tokens, progress)


def round_dirs(rounds_dir: Path) -> list[Path]:
    """Complete rounds, oldest first (the same rule as `Project.rounds`)."""
    if not rounds_dir.exists():
        return []
    return sorted(p for p in rounds_dir.iterdir() if re.fullmatch(r"r\d{4}", p.name) and (p / "manifest.json").exists())


def process(pairs: Sequence[tuple], config: DataConfig, schema: dict[str, Any] | None,
            count_tokens: TokenCounter, token_source: str, max_tokens: int | None, previous: Path | None,
            progress: Advance | None = None) -> GateRun:
    """Run every check in order and return what each found (no files written); `progress(1, label)` as each
    stage ends (a `tuneloop.progress` bar's advance)."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()
        if progress is not None:
            progress(1, label=f"gate: {name}")

    check = check_sources(pairs, config.license_allowlist, schema, count_tokens, max_tokens)
    lap("validate")
    redactor = Redactor(mode=config.pii.mode, extra_patterns=config.pii.extra_patterns)
    accepted = [redactor.sample(s) for s in check.accepted]
    quarantine = [q.model_copy(update={"raw": redactor.row(q.raw), "reason": redactor.text(q.reason)})
                  for q in check.quarantined]
    lap("redact")
    deduped = dedup(accepted, config.dedup)
    lap("dedup")
    # rows that would leak, and template siblings (same frame, other answers), stay on one side of the split
    related = np.concatenate([overlap_pairs(deduped.kept, config.leakage, config.dedup), deduped.sibling_pairs])
    frozen = FrozenSplits.from_round(previous)
    split = split_samples(deduped.kept, config.split, frozen, related)
    review = [_placed(row, check) for row in deduped.review]
    conflicting = {id(sample): (name, frozen_id) for sample, name, frozen_id in split.conflicts}
    for sample, reason in split.held_out:
        if id(sample) in conflicting:
            review.append(_placed(QuarantinedRow(
                source_file=sample.meta.source or "", sample_id=sample.id, stage="split", reason="label_conflict",
                raw=sample.model_dump(mode="json"), conflicts_with=[conflicting[id(sample)][1]],
                fix=f"the prompt of a frozen {conflicting[id(sample)][0]} item (conflicts_with) with another answer: "
                    "decide which answer is right; a corrected frozen item keeps its id (a relabel)"), check))
            continue
        quarantine.append(QuarantinedRow(source_file=sample.meta.source or "", sample_id=sample.id, stage="split",
                                         reason=reason, raw=sample.model_dump(mode="json")))
    lap("split")
    leakage = find_leaks(split.train, {"val": split.val, "test": split.test}, config.leakage, config.dedup)
    quarantine += hold_out_copies_of_frozen(split, leakage, frozen)
    lap("leakage")
    mixed = mix(split.train, config.mix, config.mix_max_drop, config.mix_resample, config.split.seed)
    lap("mix")
    return GateRun(check, dict(redactor.counts), deduped, split, leakage, mixed, quarantine, review, token_source,
                   timings)


def hold_out_copies_of_frozen(split: SplitResult, leakage: LeakageReport, frozen: FrozenSplits) -> list[QuarantinedRow]:
    """Train rows that overlap a frozen val/test item (exact, near-duplicate or n-gram) leave train for quarantine.

    The split already holds out a frozen item's relatives by id, lineage and prompt, and keeps overlapping rows with
    the frozen item when it is still in the sources; a copy whose frozen item is carried over (or a relabeled
    traffic row that repeats it in other words) is only found here. Such a row is a variant of a frozen item, not a
    broken round: held out so val/test stay unseen, and its hits leave the leakage report.
    """
    frozen_ids = {s.id for samples in frozen.splits.values() for s in samples}
    hits = {}
    for hit in leakage.hits:
        if hit.eval_id in frozen_ids:
            hits.setdefault(hit.train_id, hit)
    if not hits:
        return []
    rows = []
    kept = []
    for sample in split.train:
        hit = hits.get(sample.id)
        if hit is None:
            kept.append(sample)
            continue
        reason = (f"near-identical to frozen {hit.eval_split} item {hit.eval_id} ({hit.kind}, similarity "
                  f"{hit.similarity:.2f}): kept out of train so {hit.eval_split} stays unseen; no action needed")
        split.held_out.append((sample, reason))
        rows.append(QuarantinedRow(source_file=sample.meta.source or "", sample_id=sample.id, stage="split",
                                   reason=reason, raw=sample.model_dump(mode="json")))
    split.train = kept
    leakage.hits = [h for h in leakage.hits if h.train_id not in hits]
    return rows


def _placed(row: QuarantinedRow, check: CheckResult) -> QuarantinedRow:
    """The row with the file and line it was read from, so a reviewer can fix it at its source."""
    origin = check.seen_ids.get(row.sample_id or "")
    return row.model_copy(update={"source_file": origin[1], "line": origin[2]}) if origin else row


def counts_of(run: GateRun) -> dict[str, int]:
    """The round's counts; raises when `COUNT_IDENTITY` does not hold (a row lost or counted twice)."""
    accepted = len(run.mix.train) + len(run.split.val) + len(run.split.test) - run.split.carried_over
    counts = {
        "rows_in": run.check.rows_in,
        "accepted": accepted,
        "quarantined": len(run.quarantine),
        "removed": len(run.dedup.removed) + len(run.mix.dropped),
        "sent_to_review": len(run.review),
        "quarantined_check": len(run.check.quarantined),
        "held_out_variants": len(run.split.held_out) - len(run.split.conflicts),
        "duplicates_removed": len(run.dedup.removed),
        "mix_dropped": len(run.mix.dropped),
        "label_conflicts": len(run.dedup.conflicts) + len(run.split.conflicts),
        "template_siblings": run.dedup.sibling_rows,
        "train": len(run.mix.train),
        "val": len(run.split.val),
        "test": len(run.split.test),
        "carried_over": run.split.carried_over,
        "groups_too_large_for_val_test": run.split.oversized,
        "relabeled": len(run.split.relabeled),
        "dpo_pairs": run.mix.dpo_pairs,
        "leak_hits": len(run.leakage.hits),
        "pii_redacted": sum(run.pii.values()),
    }
    accounted = counts["accepted"] + counts["quarantined"] + counts["removed"] + counts["sent_to_review"]
    if accounted != counts["rows_in"]:
        raise GateError(f"row accounting is off: {counts['rows_in']} rows in, {accounted} accounted for "
                        f"({COUNT_IDENTITY}; {counts}); this is a bug in tuneloop, please report it with the manifest.")
    return counts


def failures_of(run: GateRun, counts: dict[str, int], config: DataConfig) -> list[str]:
    failures = []
    share = run.check.rejected_share
    if share > config.max_rejected_share:
        top = ", ".join(f"{reason} ({n})" for reason, n in list(run.check.reasons().items())[:3])
        failures.append(f"{len(run.check.quarantined)} of {run.check.rows_in} rows ({share:.1%}) were quarantined, over "
                        f"data.max_rejected_share {config.max_rejected_share:.0%} (top reasons: {top}): fix the rows "
                        "listed in quarantine.jsonl or raise the bound")
    if not run.leakage.passed:
        kinds = ", ".join(f"{k} {n}" for k, n in run.leakage.counts().items())
        failures.append(f"{len(run.leakage.hits)} train/val/test overlaps ({kinds}): remove or rewrite the train rows "
                        "listed under 'Leakage' in report.html, or set data.leakage.allow: true")
    if not counts["train"]:
        failures.append("no rows are left for train: add data to the sources (see the counts in report.html)")
    return failures


def gate(pairs: Sequence[tuple], rounds_dir: Path, config: DataConfig, schema: dict[str, Any] | None,
         count_tokens: TokenCounter, token_source: str, max_tokens: int | None, progress: bool = False) -> GateResult:
    """Run the gate and write the round folder atomically."""
    rounds_dir = Path(rounds_dir)
    remove_dead_temps(rounds_dir, ROUND_NAME)  # what a killed gate left half-built, of any round number
    existing = round_dirs(rounds_dir)
    previous = existing[-1] if existing else None
    number = int(previous.name[1:]) + 1 if previous else 1
    with progress_bar(progress, transient=True) as bar:
        run = process(pairs, config, schema, count_tokens, token_source, max_tokens, previous,
                      bar("gate: validate", GATE_STAGES))
    counts = counts_of(run)
    failures = failures_of(run, counts, config)
    name = f"r{number:04d}" if not failures else f"r{number:04d}-failed"
    target = rounds_dir / name
    with atomic_dir(target) as staging:
        for split_name, samples in (("train", run.mix.train), ("val", run.split.val), ("test", run.split.test)):
            write_samples(staging / f"{split_name}.jsonl", samples)
        write_quarantine(staging / "quarantine.jsonl", run.quarantine)
        write_quarantine(staging / "review.jsonl", run.review)
        manifest = build_manifest(run, counts, failures, config, name, previous, max_tokens)
        write_text(staging / "report.html", build_report(run, manifest))
        write_manifest(staging, manifest)  # sha256 of every file written above
        final_scan(staging, config.pii.extra_patterns, identifiers_of(run))
    return GateResult(round_dir=target, counts=counts, passed=not failures, failures=failures, manifest=manifest)


def identifiers_of(run: GateRun) -> set[str]:
    """Every row id and source id the round names: identifiers, not text, so the final scan skips them."""
    rows = [*run.check.accepted, *run.split.val, *run.split.test, *run.mix.train]
    return {q.sample_id for q in run.quarantine if q.sample_id} | {s.id for s in rows} | {
        s.lineage.source_id for s in rows if s.lineage.source_id}


def final_scan(folder: Path, extra_patterns: dict[str, str] | None = None, identifiers: set[str] | None = None) -> None:
    """Raise if any file of the round holds detected personal data (ids and hashes are not text, so skipped)."""
    active = recognizers(extra_patterns)
    identifiers = identifiers or set()
    for path in sorted(folder.iterdir()):
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as handle:
                for number, line in enumerate(handle, start=1):
                    found = scan_value(json.loads(line), active, IDENTIFIER_KEYS)
                    if found:
                        raise GateError(f"{path.name}, line {number}: {found[0].kind} survived redaction; "
                                        "this is a bug in tuneloop's redaction, please report it (nothing was written).")
        elif path.suffix == ".json":
            found = scan_value(json.loads(path.read_text(encoding="utf-8")), active, IDENTIFIER_KEYS)
            if found:
                raise GateError(f"{path.name}: {found[0].kind} in the manifest; please report it (nothing was written).")
        elif path.suffix == ".html":
            text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", path.read_text(encoding="utf-8"))
            text = re.sub(r"<[^>]+>", " ", text)
            text = re.sub(r"[^\s<>\"']+", lambda m: " " if m.group() in identifiers else m.group(), text)
            found = scan_value(text, active)
            if found:
                raise GateError(f"{path.name}: {found[0].kind} in the report; please report it (nothing was written).")



