"""`tuneloop data check|dedup|leakage|redact|split|mix|gate`: the quality gate, stage by stage and whole.

In a project directory the commands read `data.sources` and the data settings of tuneloop.yaml; elsewhere they
take explicit files and use the default settings. Heavy imports live inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tuneloop.cli.apps import data_app
from tuneloop.cli.common import UserError, console, find_project, friendly_errors
from tuneloop.cli.data.io import Force, beside, folder_refused, guard_outputs, print_counts, quarantine_path

FILES_HELP = "tuneloop JSONL files (default: data.sources of the project here)."
InputFiles = Annotated[list[Path], typer.Argument(help="tuneloop JSONL files.")]


def _settings() -> tuple[Any, Any]:
    """The project here (or None) and its data settings (defaults outside a project)."""
    from tuneloop.project import DataConfig

    project = find_project(required=False)
    return project, (project.config.data if project else DataConfig())


def _sources(files: list[Path] | None, project: Any) -> list[tuple]:
    if files:
        return [(Path(f), "internal") for f in files]
    if project is None or not project.config.data.sources:
        raise UserError("no input files: pass FILES, or run in a project whose tuneloop.yaml lists data.sources.")
    return [(project.path(s.path), s.license, s.format, s.dataset) for s in project.config.data.sources]


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:  # JSONL of plain rows
    from tuneloop.files import write_jsonl

    write_jsonl(path, rows)


def _read(files: list[Path], quarantine: Path | None) -> tuple[list[Any], int]:
    """Samples of the files and how many rows were unreadable; those go to `quarantine` (always written, so a
    stale one never lingers), or, where a command cannot leave rows out (`quarantine` None), stop it naming the first."""
    from tuneloop.data.io.formats import read_samples, write_quarantine

    samples, bad = [], []
    for path in files:
        if not Path(path).exists():
            raise UserError(f"{path}: no such file; pass tuneloop JSONL files (`tuneloop data import` converts others).")
        if Path(path).is_dir():
            raise UserError(folder_refused(Path(path)))
        result = read_samples(path)
        samples.extend(result.samples)
        bad.extend(result.quarantined)
    if quarantine is None and bad:
        first = bad[0]
        raise UserError(f"{first.source_file}, line {first.line}: {first.reason} ({len(bad)} unreadable rows); "
                        f"import the file first (`tuneloop data import {first.source_file} --out clean.jsonl`)")
    if quarantine is not None:
        write_quarantine(quarantine, bad)
        if bad:
            console.print(f"[yellow]{len(bad)} unreadable rows[/] → {quarantine}")
    return samples, len(bad)


@data_app.command("check")
@friendly_errors
def check_command(
    files: Annotated[list[Path] | None, typer.Argument(help=FILES_HELP)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Accepted rows (JSONL); rejected go beside it.")] = Path("checked.jsonl"),
    schema: Annotated[Path | None, typer.Option(help="JSON Schema of the answer (default: task.schema).")] = None,
    license: Annotated[str, typer.Option(help="License of FILES, screened against data.license_allowlist.")] = "internal",
    force: Force = False,
) -> None:
    """Validate rows: prompt and answer present, JSON answer fits the schema, license allowed, token counts.

    Rejected rows go to OUT.quarantine.jsonl with file, line, id and reason; the exit code is 1 when the
    rejected share is over data.max_rejected_share.

    Example: tuneloop data check data/raw/seed.jsonl --schema schemas/ticket.json --out checked.jsonl
    """
    from tuneloop.data.gate.checks import approximate_tokens, check_sources
    from tuneloop.data.io.formats import write_quarantine, write_samples
    from tuneloop.data.gate.round import project_token_counter
    from tuneloop.files import read_json

    project, config = _settings()
    sources = [(p, license) for p, *_ in _sources(files, project)] if files else _sources(files, project)
    task_schema = read_json(schema) if schema else (project.schema() if project else None)
    max_tokens = config.max_tokens or (project.config.train.max_length if project else None)
    guard_outputs([Path(p) for p, *_ in sources], [out, quarantine_path(out)], force)
    count_tokens, counted_with = project_token_counter(project) if project else (approximate_tokens, "approximate")
    result = check_sources(sources, config.license_allowlist, task_schema, count_tokens, max_tokens)
    write_samples(out, result.accepted)
    write_quarantine(quarantine_path(out), result.quarantined)
    console.print(f"{result.rows_in} rows → [green]{len(result.accepted)} accepted[/] → {out}, "
                  f"[yellow]{len(result.quarantined)} quarantined[/] → {quarantine_path(out)}")
    print_counts(result.rows_in, {"accepted": len(result.accepted), "quarantined": len(result.quarantined)})
    for reason, count in result.reasons().items():
        console.print(f"  {count:>6}  {reason}")
    console.print(f"token counts: {counted_with}; {len(result.over_length)} rows over max_tokens {max_tokens}")
    if result.rejected_share > config.max_rejected_share:
        console.print(f"[red]rejected share {result.rejected_share:.1%} is over data.max_rejected_share "
                      f"{config.max_rejected_share:.0%}[/]: fix the quarantined rows or raise the bound.")
        raise typer.Exit(1)


@data_app.command("dedup")
@friendly_errors
def dedup_command(
    files: InputFiles,
    out: Annotated[Path, typer.Option("--out", "-o", help="Rows kept (JSONL).")],
    removed: Annotated[Path | None, typer.Option(help="Removed duplicates, each whole with the id it duplicates "
                                                       "(default: OUT.removed.jsonl).")] = None,
    threshold: Annotated[float | None, typer.Option(help="Near-duplicate Jaccard (default: data.dedup.threshold).")] = None,
    force: Force = False,
) -> None:
    """Remove exact and near duplicates (MinHash LSH, verified by exact Jaccard), keeping the best copy.

    Every row lands in OUT (kept), OUT.removed.jsonl (a copy of a kept row, with its id), OUT.review.jsonl (a label
    conflict: the same prompt with other answers, for a person to decide) or OUT.quarantine.jsonl (unreadable).

    Example: tuneloop data dedup data/raw/seed.jsonl --out deduped.jsonl --removed duplicates.jsonl
    """
    from tuneloop.data.gate.dedup import dedup
    from tuneloop.data.io.formats import sample_to_dict, write_quarantine, write_samples

    _, config = _settings()
    settings = config.dedup.model_copy(update={"threshold": threshold} if threshold is not None else {})
    removed = removed or beside(out, "removed")
    review = beside(out, "review")
    guard_outputs(files, [out, removed, review, quarantine_path(out)], force)
    samples, unreadable = _read(files, quarantine_path(out))
    result = dedup(samples, settings)
    write_samples(out, result.kept)
    _write_rows(removed, [{"id": r.sample.id, "kept_id": r.kept_id, "kind": r.kind, "similarity": r.similarity,
                           "sample": sample_to_dict(r.sample)} for r in result.removed])
    write_quarantine(review, result.review)
    console.print(f"{len(samples)} rows → [green]{len(result.kept)} kept[/] → {out}, "
                  f"{len(result.removed)} duplicates in {len(result.clusters)} clusters → {removed} "
                  f"(cluster sizes: {result.cluster_sizes}), {len(result.review)} rows of {len(result.conflicts)} "
                  f"label conflicts → {review}; {result.sibling_rows} template siblings (other answers) kept in "
                  f"{len(result.siblings)} families")
    print_counts(len(samples) + unreadable, {"kept": len(result.kept), "removed": len(result.removed),
                                             "sent to review": len(result.review), "quarantined": unreadable})


@data_app.command("leakage")
@friendly_errors
def leakage_command(
    train: Annotated[Path, typer.Option(help="Train rows (JSONL).")],
    eval: Annotated[list[Path], typer.Option("--eval", help="Val/test rows (JSONL); repeat for several.")],
    report: Annotated[Path | None, typer.Option(help="Write every hit pair here (JSONL).")] = None,
    force: Force = False,
) -> None:
    """Find train rows that overlap val/test: exact hash, near-duplicate, prompt/answer n-gram overlap.

    The exit code is 1 when there is any hit (unless data.leakage.allow).

    Example: tuneloop data leakage --train train.jsonl --eval val.jsonl --eval test.jsonl --report leaks.jsonl
    """
    from tuneloop.data.gate.leakage import find_leaks

    _, config = _settings()
    guard_outputs([train, *eval], [report], force)
    # a leak may hide in an unreadable row, so any such row stops the check instead of being left out
    found = find_leaks(_read([train], None)[0], {p.stem: _read([p], None)[0] for p in eval}, config.leakage,
                       config.dedup)
    if report:
        _write_rows(report, [hit.as_row() for hit in found.hits])
    for hit in found.hits[:20]:
        console.print(f"  {hit.kind:<13} train {hit.train_id} ↔ {hit.eval_split} {hit.eval_id}  ({hit.similarity:.2f})")
    if len(found.hits) > 20:
        console.print(f"  … {len(found.hits) - 20} more" + (f" in {report}" if report else " (use --report)"))
    console.print(("[green]no leakage[/]" if not found.hits else f"[red]{len(found.hits)} hits[/] {found.counts()}"))
    if not found.passed:
        raise typer.Exit(1)


@data_app.command("redact")
@friendly_errors
def redact_command(
    files: InputFiles,
    out: Annotated[Path, typer.Option("--out", "-o", help="Redacted rows (JSONL).")],
    mode: Annotated[str | None, typer.Option(help="placeholder ([PHONE_1]) or fake (default: data.pii.mode).")] = None,
    force: Force = False,
) -> None:
    """Redact personal data: phones, resident IDs, bank cards, e-mails, IPs (JSON answers stay valid JSON).

    Example: tuneloop data redact data/raw/traces.jsonl --out redacted.jsonl --mode placeholder
    """
    from tuneloop.data.io.formats import write_samples
    from tuneloop.data.gate.pii import redact_samples

    _, config = _settings()
    chosen = mode or config.pii.mode
    if chosen not in ("placeholder", "fake"):
        raise UserError(f"--mode {chosen}: use placeholder or fake.")
    guard_outputs(files, [out, quarantine_path(out)], force)
    samples, unreadable = _read(files, quarantine_path(out))
    redacted, counts = redact_samples(samples, chosen, config.pii.extra_patterns)
    write_samples(out, redacted)
    console.print(f"{len(samples)} rows → {out}; redacted: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing found"))
    print_counts(len(samples) + unreadable, {"redacted rows written": len(redacted), "quarantined": unreadable})


@data_app.command("split")
@friendly_errors
def split_command(
    files: InputFiles,
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Folder for train/val/test.jsonl.")],
    previous: Annotated[Path | None, typer.Option(help="Earlier round folder whose val/test stay frozen.")] = None,
    force: Force = False,
) -> None:
    """Split by lineage.source_id (variants of one seed stay together); frozen val/test of --previous are kept.

    Example: tuneloop data split deduped.jsonl --out-dir split/ --previous data/rounds/r0001
    """
    from tuneloop.data.io.formats import write_quarantine, write_samples
    from tuneloop.data.gate.split import FrozenSplits, split_samples
    from tuneloop.records import QuarantinedRow

    _, config = _settings()
    outputs = [out_dir / f"{name}.jsonl" for name in ("train", "val", "test", "held_out", "quarantine")]
    frozen = sorted(previous.glob("*.jsonl")) if previous is not None and previous.is_dir() else []
    guard_outputs([*files, *frozen], outputs, force)
    samples, unreadable = _read(files, out_dir / "quarantine.jsonl")
    result = split_samples(samples, config.split, FrozenSplits.from_round(previous))
    for name in ("train", "val", "test"):
        write_samples(out_dir / f"{name}.jsonl", result.split(name))
    held = [QuarantinedRow(source_file=s.meta.source or "", sample_id=s.id, stage="split", reason=r,
                           raw=s.model_dump(mode="json")) for s, r in result.held_out]
    write_quarantine(out_dir / "held_out.jsonl", held)
    console.print(f"train {len(result.train)}, val {len(result.val)}, test {len(result.test)} → {out_dir}; "
                  f"{len(held)} variants of frozen items held out, {len(result.relabeled)} frozen items relabeled")
    print_counts(len(samples) + unreadable + result.carried_over,
                 {"train": len(result.train), "val": len(result.val), "test": len(result.test), "held out": len(held),
                  "quarantined": unreadable},
                 f" (the rows in include {result.carried_over} frozen val/test rows carried over from --previous)")


@data_app.command("mix")
@friendly_errors
def mix_command(
    file: Annotated[Path, typer.Argument(help="Train rows (JSONL).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Train rows after the mix (JSONL); the rows it leaves out "
                                                            "go to OUT.dropped.jsonl.")],
    force: Force = False,
) -> None:
    """Compare the sample-type mix with data.mix, down-sample over-represented types, pair negatives for DPO.

    Example: tuneloop data mix split/train.jsonl --out train.mixed.jsonl
    """
    from tuneloop.data.io.formats import write_samples
    from tuneloop.data.gate.mix import mix

    _, config = _settings()
    dropped = beside(out, "dropped")
    guard_outputs([file], [out, dropped, quarantine_path(out)], force)
    samples, unreadable = _read([file], quarantine_path(out))
    result = mix(samples, config.mix, config.mix_max_drop, config.mix_resample, config.split.seed)
    write_samples(out, result.train)
    write_samples(dropped, result.dropped)
    for row in result.table():
        console.print(f"  {row['type']:<9} target {row['target']:>5.0%}  before {row['before']:>6} "
                      f"({row['before_share']:.0%})  after {row['after']:>6} ({row['after_share']:.0%})  "
                      f"still needed {row['still_needed']}")
    console.print(f"{len(result.train)} rows → {out}; {len(result.dropped)} left out by the mix → {dropped}, "
                  f"{result.pairs} DPO pairs from negative twins")
    print_counts(len(samples) + unreadable, {"kept": len(result.train), "left out by the mix": len(result.dropped),
                                             "quarantined": unreadable})


@data_app.command("gate")
@friendly_errors
def gate_command(
    files: Annotated[list[Path] | None, typer.Argument(help=FILES_HELP)] = None,
    out: Annotated[Path | None, typer.Option(help="Rounds folder outside a project (rounds go to OUT/rNNNN).")] = None,
    no_tokenizer: Annotated[bool, typer.Option(help="Approximate token counts instead of loading the tokenizer.")] = False,
) -> None:
    """Run every check and write data/rounds/rNNNN/ (train/val/test/quarantine, manifest.json, report.html).

    The exit code is 1 when the gate fails (too many rejected rows, leakage, no train rows).

    Example: tuneloop data gate            (in a project)   |   tuneloop data gate a.jsonl b.jsonl --out rounds
    """
    from tuneloop.data.gate.round import run_gate, run_gate_on

    project = find_project(required=False)
    if project is not None and out is None:
        result = run_gate(project, sources=files or None, progress=True, tokenizer=None if no_tokenizer else "project")
    else:
        if not files or out is None:
            raise UserError("outside a project pass FILES and --out ROUNDS_DIR, e.g. `tuneloop data gate a.jsonl --out rounds`.")
        result = run_gate_on(files, out, progress=True)
    console.print(", ".join(f"{k} {v}" for k, v in result.counts.items()))
    console.print(f"report: {result.report}")
    if result.passed:
        console.print(f"[green]gate passed[/] → {result.round_dir}")
        return
    for failure in result.failures:
        console.print(f"[red]✗[/] {failure}")
    raise typer.Exit(1)
