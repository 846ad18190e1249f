"""`tuneloop data import|export|register|verify`: data in and out of tuneloop, and the content-hash registry."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer

from tuneloop.cli.apps import data_app
from tuneloop.cli.common import UserError, console, err_console, find_project, friendly_errors

FORMAT_HELP = "auto | alpaca | sharegpt | openai | csv | parquet (auto: from the file name and the first row)."


FORCE_HELP = "Replace output files that already exist (an input is never written over)."
Force = Annotated[bool, typer.Option("--force", help=FORCE_HELP)]


def quarantine_path(out: Path) -> Path:
    """OUT.jsonl → OUT.quarantine.jsonl, beside it."""
    return beside(out, "quarantine")


def beside(out: Path, kind: str) -> Path:
    """OUT.jsonl → OUT.<kind>.jsonl, beside it: where a command writes the rows it did not keep."""
    return out.with_name(f"{out.name.removesuffix('.jsonl')}.{kind}.jsonl")


def folder_refused(path: Path) -> str:
    return (f"{path}: a folder, where this command reads files; import a LLaMA-Factory folder first "
            f"(`tuneloop data import {path} --out FILE.jsonl`)")


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return a.samefile(b)  # hard links and symlinks too
    return a.resolve() == b.resolve()


def guard_outputs(inputs: Iterable[Path | None], outputs: Iterable[Path | None], force: bool) -> None:
    """Refuse before anything is written: an output that is an input, one file given for two outputs, or an
    existing file without --force. Nothing the user brought is modified, and nothing is replaced by surprise."""
    sources = [Path(p) for p in inputs if p is not None]
    targets = [Path(p) for p in outputs if p is not None]
    for target in targets:
        source = next((s for s in sources if s.is_file() and _same_file(target, s)), None)
        if source is not None:
            raise UserError(f"{target}: this output is also an input ({source}); tuneloop never writes over the "
                            "data it reads: choose another --out")
    seen: dict[Path, Path] = {}
    for target in targets:
        first = seen.setdefault(target.resolve(), target)
        if first is not target:
            raise UserError(f"{target}: given for two outputs of one command; give each its own file")
    existing = [t for t in targets if t.exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more of this command's outputs)" if len(existing) > 1 else ""
        raise UserError(f"{existing[0]} already exists{more}: pass --force to replace it, or choose another --out")


def print_counts(rows_in: int, parts: dict[str, int], where: str = "") -> None:
    """`rows: N in = a accepted + q quarantined + ...`: every data command's count line, which must add up."""
    if sum(parts.values()) != rows_in:
        raise RuntimeError(f"row accounting is off: {rows_in} rows in, {parts}; this is a bug in tuneloop, "
                           "please report it")
    console.print(f"rows: {rows_in} in = " + " + ".join(f"{n} {name}" for name, n in parts.items()) + where,
                  highlight=False, soft_wrap=True)  # one line, whatever the terminal's width: scripts read it


def parse_mapping(items: list[str]) -> dict[str, str]:
    """`--map question=instruction` items as {field: column}."""
    mapping = {}
    for item in items:
        column, sep, field = item.partition("=")
        if not sep or not column or not field:
            raise UserError(f"--map {item!r}: write COLUMN=FIELD, e.g. --map question=instruction --map answer=output")
        mapping[field.strip()] = column.strip()
    return mapping


def write_result(result, out: Path, label: str) -> None:
    """Write accepted samples and the quarantine beside them; print counts that add up to the rows read."""
    from tuneloop.data.io.formats import write_quarantine, write_samples

    write_samples(out, result.samples)
    bad = write_quarantine(quarantine_path(out), result.quarantined)
    console.print(f"{label}: {result.total} rows → [green]{len(result.samples)} accepted[/] → {out}, "
                  f"[yellow]{len(result.quarantined)} quarantined[/]" + (f" → {bad}" if result.quarantined else ""))
    print_counts(result.total, {"accepted": len(result.samples), "quarantined": len(result.quarantined)}, f" ({label})")


@data_app.command("import")
@friendly_errors
def import_command(
    src: Annotated[str, typer.Argument(help="A data file, a LLaMA-Factory data folder, or a Hugging Face data set id.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="tuneloop JSONL to write (a folder's entries go beside it).")],
    dataset: Annotated[str | None, typer.Option(help="Entry of the folder's dataset_info.json to import.")] = None,
    format: Annotated[str, typer.Option("--format", "-f", help=FORMAT_HELP)] = "auto",
    mapping: Annotated[list[str], typer.Option("--map", help="COLUMN=FIELD, e.g. question=instruction.")] = [],  # noqa: B006
    split: Annotated[str, typer.Option(help="Split of a Hugging Face data set.")] = "train",
    config: Annotated[str | None, typer.Option(help="Configuration (subset) of a Hugging Face data set.")] = None,
    force: Force = False,
) -> None:
    """Import data into tuneloop JSONL; bad rows go to OUT.quarantine.jsonl with file, line and reason.

    Example: tuneloop data import data/llamafactory --dataset alpaca_en_demo --out data/raw/alpaca.jsonl
    """
    from tuneloop.data.io import hub
    from tuneloop.data.io.formats import FORMATS, read_file
    from tuneloop.data.io.shapes import Columns

    if format not in FORMATS:
        raise UserError(f"--format {format}: use one of {', '.join(FORMATS)}")
    columns = Columns().with_mapping(parse_mapping(mapping)) if mapping else Columns()
    path = Path(src)
    if path.is_dir():
        if mapping:
            raise UserError("--map applies to files and data set ids; a LLaMA-Factory entry takes its columns "
                            "from dataset_info.json")
        import_folder(path, out, dataset, force)
    elif path.is_file():
        guard_outputs([path], [out, quarantine_path(out)], force)
        write_result(read_file(path, format, columns), out, str(path))
    elif hub.looks_like_hub_id(src):
        guard_outputs([], [out, quarantine_path(out)], force)
        try:
            result = hub.read_hub(src, split=split, config=config, format=format, columns=columns)
        except hub.HubUnavailable as err:
            raise UserError(str(err)) from None
        write_result(result, out, f"hf:{src}")
    else:
        raise UserError(f"{src}: no such file or folder, and not a Hugging Face data set id (owner/name)")


def import_folder(folder: Path, out: Path, dataset: str | None, force: bool = False) -> None:
    from tuneloop.data.io.llamafactory import DATASET_INFO, entry_files, read_dataset_info
    from tuneloop.data.io.llamafactory import import_folder as read_folder

    outcomes = read_folder(folder, [dataset] if dataset else None)
    out_dir = out if (out.is_dir() or not out.suffix) else out.parent
    targets = {o.name: out if dataset else out_dir / f"{o.name}.jsonl" for o in outcomes if o.result is not None}
    inputs = [folder / DATASET_INFO, *(p for e in read_dataset_info(folder).values() for p in entry_files(folder, e))]
    guard_outputs(inputs, [p for target in targets.values() for p in (target, quarantine_path(target))], force)
    for outcome in outcomes:
        if outcome.result is not None:
            write_result(outcome.result, targets[outcome.name], outcome.name)
    for outcome in outcomes:
        if outcome.status == "missing":
            err_console.print(f"[yellow]missing:[/] {outcome.name}: {outcome.detail}", highlight=False)
    skipped_names = [o.name for o in outcomes if o.status == "skipped"]
    if skipped_names:
        err_console.print(f"[yellow]skipped[/] (hub-only entries; import each by its id when online): "
                          f"{', '.join(skipped_names)}", highlight=False)
    imported = sum(1 for o in outcomes if o.status == "imported")
    missing = sum(1 for o in outcomes if o.status == "missing")
    skipped = sum(1 for o in outcomes if o.status == "skipped")
    console.print(f"{imported} entries imported, {missing} missing files, {skipped} hub-only skipped")
    if not imported:
        raise typer.Exit(1)


@data_app.command("export")
@friendly_errors
def export_command(
    src: Annotated[Path, typer.Argument(help="Samples to export (tuneloop JSONL or any importable file).")],
    to: Annotated[str, typer.Option("--to", help="llamafactory | alpaca | sharegpt | openai.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder (llamafactory) or file (.jsonl, .json, .csv, .parquet).")],
    name: Annotated[str | None, typer.Option(help="dataset_info.json entry name (default: the input's file name).")] = None,
    carry: Annotated[bool, typer.Option(help="Add the tuneloop column (ids, meta, lineage) for lossless re-import.")] = True,
    style: Annotated[str, typer.Option(help="llamafactory rows: auto (sharegpt for conversations) | alpaca | "
                                            "sharegpt; pairs become `ranking: true` entries either way.")] = "auto",
    force: Force = False,
) -> None:
    """Export samples as LLaMA-Factory files plus dataset_info.json, or as one Alpaca/ShareGPT/OpenAI file.

    Example: tuneloop data export data/rounds/r0001/train.jsonl --to llamafactory --out lf_data
    """
    from tuneloop.data.io.formats import SHAPES, read_samples, write_file
    from tuneloop.data.io.llamafactory import export_llamafactory

    if to not in ("llamafactory", *SHAPES):
        raise UserError(f"--to {to}: use llamafactory, {', '.join(SHAPES)}")
    if src.is_dir():
        raise UserError(folder_refused(src))
    result = read_samples(src, stage="export")
    if result.quarantined:
        bad = result.quarantined[0]
        raise UserError(f"{bad.source_file}, line {bad.line}: {bad.reason}. Import the file first "
                        f"(`tuneloop data import {src} --out clean.jsonl`) and export the clean samples.")
    if to == "llamafactory":
        from tuneloop.data.io.llamafactory import DATASET_INFO, entry_names
        from tuneloop.files import read_json

        names = entry_names(result.samples, name or src.name.split(".")[0])
        info = out / DATASET_INFO
        taken = [n for n in names if n in (read_json(info) if info.is_file() else {})]
        if taken and not force:
            raise UserError(f"{info} already has the entry {taken[0]}: pass --force to replace it, or give --name")
        guard_outputs([src], [out / f"{n}.json" for n in names], force)
        try:
            entries = export_llamafactory(result.samples, out, name or src.name.split(".")[0], carry=carry, style=style)
        except ValueError as err:
            raise UserError(f"--style {style}: {err}") from None
        for entry, info in entries.items():
            console.print(f"{entry}: {out / info['file_name']} ({info['formatting']}"
                          f"{', ranking' if info.get('ranking') else ''}) sha1 {info['file_sha1'][:12]}")
        console.print(f"{len(result.samples)} samples → {out / 'dataset_info.json'}")
    else:
        guard_outputs([src], [out], force)
        try:
            path = write_file(out, result.samples, to, carry=carry)
        except ValueError as err:
            raise UserError(str(err)) from None
        console.print(f"{len(result.samples)} samples → {path} ({to})")


def default_manifest(manifest: Path | None) -> Path:
    from tuneloop.data.io.registry import MANIFEST

    if manifest is not None:
        return manifest
    project = find_project(required=False)
    return (project.root if project else Path.cwd()) / MANIFEST


@data_app.command("register")
@friendly_errors
def register_command(
    name: Annotated[str, typer.Argument(help="Data set name, e.g. seed.")],
    files: Annotated[list[Path], typer.Argument(help="Files the data set is made of.")],
    manifest: Annotated[Path | None, typer.Option(help="Manifest (default: data/registry.json of the project).")] = None,
) -> None:
    """Record files with sha256, sha1 (file_sha1) and row counts, so later stages can refuse changed data.

    Example: tuneloop data register seed data/raw/seed.jsonl data/raw/extra.csv
    """
    from tuneloop.data.io.registry import register

    path = default_manifest(manifest)
    guard_outputs(files, [path], force=True)  # the manifest is updated in place; it must not be a registered file
    entry = register(path, name, files)
    for record in entry["files"]:
        rows = "-" if record["rows"] is None else record["rows"]
        console.print(f"{record['path']}: {rows} rows, sha256 {record['sha256'][:16]}…, sha1 {record['file_sha1'][:12]}…")
    console.print(f"registered '{name}' ({len(entry['files'])} files) in {path}")


@data_app.command("verify")
@friendly_errors
def verify_command(
    names: Annotated[list[str] | None, typer.Argument(help="Data sets to verify (default: all).")] = None,
    manifest: Annotated[Path | None, typer.Option(help="Manifest (default: data/registry.json of the project).")] = None,
) -> None:
    """Check every registered file against its hash; exit 1 naming each changed file, expected and actual hash.

    Example: tuneloop data verify --manifest data/registry.json
    """
    from tuneloop.data.io.registry import load_manifest, verify_manifest

    path = default_manifest(manifest)
    mismatches = verify_manifest(path, names or None)
    if mismatches:
        for mismatch in mismatches:
            err_console.print(f"[bold red]changed:[/] {mismatch}", highlight=False)
        raise typer.Exit(1)
    datasets = load_manifest(path)["datasets"]
    count = sum(len(datasets[n]["files"]) for n in (names or datasets))
    console.print(f"{count} registered files unchanged ({path})")
