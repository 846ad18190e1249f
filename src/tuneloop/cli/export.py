"""`tuneloop export merge|llamafactory`: a run as a merged, verified model, or as LLaMA-Factory files."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from tuneloop.cli.apps import export_app
from tuneloop.cli.common import console, err_console, friendly_errors


@export_app.command("llamafactory")
@friendly_errors
def export_llamafactory(
    run: Path = typer.Option(..., "--run", help="Run folder written by `tuneloop train sft` (holds config.json)."),
    out: Path = typer.Option(..., "--out", help="Folder for dataset_info.json, data files and the YAML configs."),
    template: str = typer.Option(None, "--template", help="LLaMA-Factory template name (default: guessed from the model)."),
) -> None:
    """Write the same training as LLaMA-Factory files: data + dataset_info.json, training YAML, export YAML.

    Example: tuneloop export llamafactory --run runs/r0001-lora-1a2b3c4d --out lf/
    """
    from tuneloop.train.llamafactory import export_run

    written = export_run(run, out, template=template)
    for path in written:
        console.print(f"wrote {path}", highlight=False)


@export_app.command("merge")
@friendly_errors
def export_merge(
    run: Path = typer.Option(..., "--run", help="Run folder with run.json and adapter/ (runs/<run-id>)."),
    out: Path = typer.Option(..., "--out", help="Export folder to write (replaced only when the gate passes)."),
    shard_size: str = typer.Option("5", "--shard-size", help="Shard size in GB (5) or with a unit (500MB)."),
    check_prompts: int = typer.Option(8, "--check-prompts", help="Prompts the reload gate compares."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 (max logit diff < 1e-4) or bfloat16 (same greedy)."),
) -> None:
    """Merge a LoRA run into its base, write shards + tokenizer + template + manifest, and verify the result.

    Example: tuneloop export merge --run runs/20250101-ab12 --out exports/ticket-v2 --shard-size 5
    """
    from tuneloop.export.merge import MergeGateError, merge_run

    try:
        report = merge_run(run, out, shard_size=shard_size, check_prompts=check_prompts, dtype=dtype)
    except MergeGateError as err:  # a check that said no, not bad input: exit 1, as a refused round does
        err_console.print(f"[bold red]failed:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    parity = report.parity
    console.print(f"[green]merged[/] {run} → {out}: max logit diff {report.max_logit_diff:.2e}, greedy identical "
                  f"{report.greedy_identical} on {report.prompts_checked} prompts; template parity "
                  f"{parity['checked']} samples {'pass' if parity['passed'] else 'FAIL'}; {len(report.files)} files "
                  "hashed in manifest.json")
